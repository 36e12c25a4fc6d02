//! Fake quantization over f32 slices: the CPU kernels behind every host-side backend.
//!
//! Two passes over memory, each split into chunks across rayon's threads: one for the amax, one
//! for the cast. Both loops are branch-free integer and float arithmetic on each element, so the
//! compiler vectorizes them. They agree bit for bit with the scalar reference
//! [`crate::quantize_scaled`] (tested against the `ml_dtypes` golden data).

use rayon::prelude::*;

use crate::format::{pow2, Fp8Format};
use crate::kernel::QuantStats;
use crate::scaling::{bias_for, BiasRule};

/// Elements per rayon task: large enough to amortize scheduling, small enough to balance.
const CHUNK: usize = 1 << 16;

/// 2^23: adding and subtracting it rounds a non-negative f32 below 2^22 to an integer with the
/// FPU's round-to-nearest-even.
const ROUND_MAGIC: f32 = 8_388_608.0;

/// The largest |x| as f32 bits. On non-negative floats the bit order is the numeric order, and
/// NaNs (above 0x7f80_0000) sort above infinity, so a non-finite tensor cannot hide.
pub fn amax_bits(xs: &[f32]) -> u32 {
    xs.par_chunks(CHUNK).map(amax_chunk).max().unwrap_or(0)
}

/// The per-call constants of the cast loop.
#[derive(Clone, Copy)]
struct CastParams {
    scale: f32,
    unscale: f32,
    max: f32,
    /// f32 biased exponent of the format's smallest normal: below it the spacing stays fixed.
    emin_biased: u32,
    mantissa_bits: u32,
}

impl CastParams {
    fn new(format: Fp8Format, bias: i32) -> Self {
        Self {
            scale: pow2(bias),
            unscale: pow2(-bias),
            max: format.max(),
            emin_biased: (format.min_normal_exp() + 127) as u32,
            mantissa_bits: format.mantissa_bits(),
        }
    }

    /// `fake_quant(x * 2^bias) * 2^-bias` without branches.
    #[inline(always)]
    fn cast(&self, x: f32) -> f32 {
        let bits = x.to_bits();
        let sign = bits & 0x8000_0000;
        let a = f32::from_bits(bits & 0x7fff_ffff) * self.scale;
        // Spacing of the format around `a`: q = 2^(e - m), e = max(exponent(a), emin). Both q and
        // 1/q are built from bits; `a * (1/q)` is exact and below 2^(m+1).
        let e = (a.to_bits() >> 23).max(self.emin_biased);
        let q = f32::from_bits((e - self.mantissa_bits) << 23);
        let inv_q = f32::from_bits((254 + self.mantissa_bits - e) << 23);
        let r = ((a * inv_q + ROUND_MAGIC) - ROUND_MAGIC) * q;
        // Saturate (inf included). A NaN fails the comparison and stays NaN through `r`.
        let r = if a >= self.max { self.max } else { r };
        f32::from_bits(r.to_bits() | sign) * self.unscale
    }
}

/// Fake-quantizes `src` into `dst` with a known bias.
pub fn cast_into(src: &[f32], dst: &mut [f32], format: Fp8Format, bias: i32) {
    assert_eq!(
        src.len(),
        dst.len(),
        "cast_into: slices of different lengths"
    );
    let p = CastParams::new(format, bias);
    dst.par_chunks_mut(CHUNK)
        .zip(src.par_chunks(CHUNK))
        .for_each(|(d, s)| cast_chunk(p, s, d));
}

/// Unit tests force the baseline (SSE2) loops to check them too on an AVX2 machine.
#[cfg(test)]
static FORCE_BASELINE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

#[allow(dead_code)] // unused off x86_64
fn baseline_forced() -> bool {
    #[cfg(test)]
    return FORCE_BASELINE.load(std::sync::atomic::Ordering::Relaxed);
    #[cfg(not(test))]
    false
}

/// Runs `$body` (a loop over one chunk) compiled twice: with AVX2 enabled, chosen at run time
/// where the CPU has it (8 lanes instead of SSE2's 4), and for the baseline target.
macro_rules! multiversion {
    ($(#[$m:meta])* fn $name:ident($($arg:ident: $ty:ty),*) -> $ret:ty $body:block) => {
        $(#[$m])*
        fn $name($($arg: $ty),*) -> $ret {
            #[inline(always)]
            fn body($($arg: $ty),*) -> $ret $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2")]
                unsafe fn avx2($($arg: $ty),*) -> $ret {
                    body($($arg),*)
                }
                if !baseline_forced() && std::arch::is_x86_feature_detected!("avx2") {
                    // SAFETY: the CPU was just seen to support AVX2.
                    return unsafe { avx2($($arg),*) };
                }
            }
            body($($arg),*)
        }
    };
}

multiversion! {
    /// The cast loop over one chunk. `p` is passed by value: read through the closure's captured
    /// reference, LLVM cannot tell that writes to `d` leave it unchanged and the loop does not
    /// vectorize (measured: 6x slower).
    #[inline(never)]
    fn cast_chunk(p: CastParams, s: &[f32], d: &mut [f32]) -> () {
        for (o, &x) in d.iter_mut().zip(s) {
            *o = p.cast(x);
        }
    }
}

multiversion! {
    /// The cast loop, also counting (underflows, non-zero inputs, saturations).
    #[inline(never)]
    fn cast_chunk_counting(p: CastParams, s: &[f32], d: &mut [f32]) -> (u64, u64, u64) {
        // u32 counters per chunk (CHUNK < 2^32) vectorize better than u64.
        let (mut under, mut nonzero, mut sat) = (0u32, 0u32, 0u32);
        for (o, &x) in d.iter_mut().zip(s) {
            let y = p.cast(x);
            *o = y;
            let nz = x != 0.0;
            nonzero += nz as u32;
            under += (nz & (y == 0.0)) as u32;
            sat += (x.abs() * p.scale > p.max) as u32;
        }
        (under.into(), nonzero.into(), sat.into())
    }
}

multiversion! {
    /// max(|x| bits) over one chunk.
    #[inline(never)]
    fn amax_chunk(s: &[f32]) -> u32 {
        s.iter().fold(0u32, |m, x| m.max(x.to_bits() & 0x7fff_ffff))
    }
}

/// Like [`cast_into`], also counting underflows (non-zero in, zero out), non-zero inputs, and
/// saturations (|x * 2^bias| > max, infinities included).
fn cast_into_counting(src: &[f32], dst: &mut [f32], p: CastParams) -> (u64, u64, u64) {
    dst.par_chunks_mut(CHUNK)
        .zip(src.par_chunks(CHUNK))
        .map(|(d, s)| cast_chunk_counting(p, s, d))
        .reduce(|| (0, 0, 0), |a, b| (a.0 + b.0, a.1 + b.1, a.2 + b.2))
}

/// What the host kernels return: the cast values, or why there are none.
pub enum HostQuant {
    /// The quantized values and, if asked for, their statistics.
    Done(Option<QuantStats>),
    /// The amax was infinite or NaN: `dst` is untouched and no bias was derived.
    NonFinite(f32),
}

/// Amax, bias and cast of one tensor's values, the way the decorator wants them.
pub fn quantize_slice(
    src: &[f32],
    dst: &mut [f32],
    format: Fp8Format,
    rule: BiasRule,
    want_stats: bool,
) -> HostQuant {
    // CSCALE needs no amax unless statistics are wanted.
    let need_amax = want_stats || matches!(rule, BiasRule::Amax { .. });
    let amax = if need_amax {
        f32::from_bits(amax_bits(src))
    } else {
        0.0
    };
    let bias = match bias_for(rule, amax, format) {
        Ok(b) => b,
        Err(e) => return HostQuant::NonFinite(e.amax),
    };
    if !want_stats {
        cast_into(src, dst, format, bias);
        return HostQuant::Done(None);
    }
    let (under, nonzero, sat) = cast_into_counting(src, dst, CastParams::new(format, bias));
    let n = src.len().max(1) as f64;
    HostQuant::Done(Some(QuantStats {
        amax,
        bias,
        underflow_frac: if nonzero == 0 {
            0.0
        } else {
            (under as f64 / nonzero as f64) as f32
        },
        saturated_frac: (sat as f64 / n) as f32,
        numel: src.len(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scaling::quantize_scaled;

    #[test]
    fn kernel_matches_scalar_reference_on_a_sweep() {
        sweep();
    }

    #[test]
    fn baseline_loops_match_scalar_reference_on_a_sweep() {
        // The AVX2 build of the loops is what runs on this machine; check the SSE2 one as well.
        FORCE_BASELINE.store(true, std::sync::atomic::Ordering::Relaxed);
        sweep();
        FORCE_BASELINE.store(false, std::sync::atomic::Ordering::Relaxed);
    }

    fn sweep() {
        // Every 997th f32 bit pattern (both signs, all exponents, NaNs and infinities), at the
        // extreme and middle biases of each format.
        let xs: Vec<f32> = (0..u32::MAX / 997)
            .map(|i| f32::from_bits(i * 997))
            .collect();
        let mut out = vec![0.0; xs.len()];
        for f in Fp8Format::ALL {
            for bias in [-31, -3, 0, 5, 31] {
                cast_into(&xs, &mut out, f, bias);
                for (x, y) in xs.iter().zip(&out) {
                    let r = quantize_scaled(*x, f, bias);
                    assert!(
                        r.to_bits() == y.to_bits()
                            || (r.is_nan() && y.is_nan())
                            || (r == 0.0 && *y == 0.0),
                        "{f} bias {bias}: x={x:e} ({:08x}) kernel {y:e} reference {r:e}",
                        x.to_bits()
                    );
                }
            }
        }
    }

    #[test]
    fn amax_sees_nan_and_inf() {
        assert_eq!(f32::from_bits(amax_bits(&[1.0, -3.0, 2.0])), 3.0);
        assert!(f32::from_bits(amax_bits(&[1.0, f32::NEG_INFINITY])).is_infinite());
        assert!(f32::from_bits(amax_bits(&[f32::INFINITY, f32::NAN])).is_nan());
        assert_eq!(amax_bits(&[]), 0);
    }

    #[test]
    fn statistics_count_underflow_and_saturation() {
        // E4M3Fnuz with bias 0: 1e-4 underflows (below 2^-11, half the smallest subnormal),
        // 300 and -inf saturate, 0 is neither.
        let src = [1.0, 1e-4, 300.0, f32::NEG_INFINITY, 0.0];
        let mut dst = [0.0; 5];
        let HostQuant::Done(Some(s)) = quantize_slice(
            &src,
            &mut dst,
            Fp8Format::E4M3Fnuz,
            BiasRule::Constant(0),
            true,
        ) else {
            panic!("expected statistics")
        };
        assert_eq!(s.underflow_frac, 0.25); // 1 of 4 non-zero inputs
        assert_eq!(s.saturated_frac, 0.4); // 2 of 5 elements
        assert_eq!(dst, [1.0, 0.0, 240.0, -240.0, 0.0]);
    }
}
