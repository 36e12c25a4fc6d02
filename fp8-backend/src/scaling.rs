//! Per-tensor scaling biases: FP8-AMAX and FP8-CSCALE.
//!
//! FP8-AMAX follows Graphcore's reference code (Perez et al., arXiv 2309.17224, section 3):
//!
//! ```text
//! bias = clip(floor(log2(fmt.max / amax)) - margin, -31, 31)     ; amax == 0 -> 31
//! q(x) = fake_quant_fmt(x * 2^bias) * 2^-bias
//! ```
//!
//! The bias is an integer, so scaling by `2^bias` is exact; the floor of the logarithm is found
//! from exponent fields, not from a rounded `log2`, so a tensor whose `max / amax` lies just
//! below a power of two cannot be given one bias too many (which would saturate its largest
//! element).

use crate::format::{pow2, Fp8Format};

/// Largest bias magnitude: scaling factors stay within 2^-31 ..= 2^31.
pub const MAX_BIAS: i32 = 31;

/// Default margin for gradients (the paper's FP8-AMAX setting for E5 gradients).
pub const DEFAULT_GRADIENT_MARGIN: i32 = 3;

/// How one tensor's bias is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BiasRule {
    /// From the tensor's amax, minus a margin (FP8-AMAX).
    Amax {
        /// Subtracted from the bias: headroom against values growing before the next call.
        margin: i32,
    },
    /// A fixed bias (FP8-CSCALE).
    Constant(i32),
}

/// The tensor held an infinity or a NaN, so no bias can be derived from its amax.
#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
#[error("non-finite amax ({amax}): the tensor holds an infinity or NaN")]
pub struct NonFiniteAmax {
    /// The offending amax (inf or NaN).
    pub amax: f32,
}

/// The FP8-AMAX bias of a tensor whose absolute maximum is `amax`.
pub fn amax_bias(amax: f32, format: Fp8Format, margin: i32) -> Result<i32, NonFiniteAmax> {
    let amax = amax.abs();
    if !amax.is_finite() {
        return Err(NonFiniteAmax { amax });
    }
    if amax == 0.0 {
        return Ok(MAX_BIAS);
    }
    // floor(log2(max / amax)) exactly: start from the difference of the binary exponents (in f64,
    // where every f32, subnormals included, is normal), then step down once if amax * 2^k
    // overshoots max (the mantissa of amax is larger than that of max).
    let max = f64::from(format.max());
    let amax = f64::from(amax);
    let mut k = f64_exponent(max) - f64_exponent(amax);
    if amax * 2f64.powi(k) > max {
        k -= 1;
    }
    Ok((k - margin).clamp(-MAX_BIAS, MAX_BIAS))
}

/// The bias a rule gives for a tensor with absolute maximum `amax`.
pub fn bias_for(rule: BiasRule, amax: f32, format: Fp8Format) -> Result<i32, NonFiniteAmax> {
    match rule {
        BiasRule::Amax { margin } => amax_bias(amax, format, margin),
        BiasRule::Constant(bias) => Ok(bias),
    }
}

/// Scalar reference of scaled fake quantization: `fake_quant(x * 2^bias) * 2^-bias`.
pub fn quantize_scaled(x: f32, format: Fp8Format, bias: i32) -> f32 {
    format.quantize(x * pow2(bias)) * pow2(-bias)
}

/// floor(log2 x) of a positive normal f64, from its exponent field.
fn f64_exponent(x: f64) -> i32 {
    ((x.to_bits() >> 52) & 0x7ff) as i32 - 1023
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bias_of_exact_powers_and_neighbours() {
        let f = Fp8Format::E4M3Fnuz; // max 240
        assert_eq!(amax_bias(240.0, f, 0), Ok(0));
        assert_eq!(amax_bias(120.0, f, 0), Ok(1));
        // Just above 120: 240 / amax is just below 2, floor(log2) = 0.
        assert_eq!(amax_bias(f32::from_bits(120f32.to_bits() + 1), f, 0), Ok(0));
        assert_eq!(amax_bias(1.0, f, 0), Ok(7)); // 2^7 = 128 <= 240 < 256
        assert_eq!(amax_bias(1.0, f, 3), Ok(4));
        assert_eq!(amax_bias(0.0, f, 3), Ok(MAX_BIAS));
        assert_eq!(amax_bias(1e-30, f, 0), Ok(MAX_BIAS));
        assert_eq!(amax_bias(1e30, f, 0), Ok(-MAX_BIAS));
        assert!(amax_bias(f32::INFINITY, f, 0).is_err());
        assert!(amax_bias(f32::NAN, f, 0).is_err());
    }
}
