//! The four FP8 formats and the scalar reference cast.
//!
//! Two families (docs/design.md, "FP8 numerics"):
//! - `graphcore`: the IPU formats of Perez et al. (arXiv 2309.17224), `float8_e4m3fnuz` and
//!   `float8_e5m2fnuz` (no negative zero, no infinities, NaN is the bit pattern 0x80);
//! - `ocp`: the OCP 8-bit floating point specification's `float8_e4m3fn` and `float8_e5m2`, as
//!   used by Transformer Engine and torchao.
//!
//! Casts saturate (values beyond +-max, and +-inf, become +-max, as Transformer Engine's and
//! torchao's casts do), round to nearest with ties to even, and keep subnormals. NaN stays NaN.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// An 8-bit floating point format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Fp8Format {
    /// OCP E4M3: bias 7, max 448, min normal 2^-6, min subnormal 2^-9.
    E4M3Fn,
    /// OCP E5M2: bias 15, max 57344, min normal 2^-14, min subnormal 2^-16.
    E5M2,
    /// Graphcore E4: bias 8, max 240, min normal 2^-7, min subnormal 2^-10.
    E4M3Fnuz,
    /// Graphcore E5: bias 16, max 57344, min normal 2^-15, min subnormal 2^-17.
    E5M2Fnuz,
}

/// A family of formats: one E4 (weights, activations) and one E5 (gradients).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Fp8Family {
    /// `float8_e4m3fnuz` / `float8_e5m2fnuz`, the paper's IPU formats (the default).
    #[default]
    Graphcore,
    /// `float8_e4m3fn` / `float8_e5m2`, the OCP formats.
    Ocp,
}

/// What a quantized tensor is, which fixes its format and margin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// A layer's weight matrix (E4).
    Weight,
    /// A layer's input activations (E4).
    Activation,
    /// The gradient flowing back into a layer's output (E5).
    Gradient,
}

/// A format, family or role name that is not one of ours.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} `{got}`: expected one of {expected}")]
pub struct UnknownName {
    /// What kind of name was parsed ("FP8 format", "FP8 family", ...).
    pub what: &'static str,
    /// The name that was given.
    pub got: String,
    /// The accepted names, comma separated.
    pub expected: &'static str,
}

impl Fp8Format {
    /// All four formats, in the column order of the golden fixture.
    pub const ALL: [Fp8Format; 4] = [Self::E4M3Fn, Self::E5M2, Self::E4M3Fnuz, Self::E5M2Fnuz];

    /// The `ml_dtypes` / PyTorch name of the format.
    pub fn name(self) -> &'static str {
        match self {
            Self::E4M3Fn => "float8_e4m3fn",
            Self::E5M2 => "float8_e5m2",
            Self::E4M3Fnuz => "float8_e4m3fnuz",
            Self::E5M2Fnuz => "float8_e5m2fnuz",
        }
    }

    /// Number of explicit mantissa bits.
    pub fn mantissa_bits(self) -> u32 {
        match self {
            Self::E4M3Fn | Self::E4M3Fnuz => 3,
            Self::E5M2 | Self::E5M2Fnuz => 2,
        }
    }

    /// Exponent of the smallest normal number: 1 - exponent bias.
    pub fn min_normal_exp(self) -> i32 {
        match self {
            Self::E4M3Fn => -6,
            Self::E5M2 => -14,
            Self::E4M3Fnuz => -7,
            Self::E5M2Fnuz => -15,
        }
    }

    /// Largest finite value.
    pub fn max(self) -> f32 {
        match self {
            Self::E4M3Fn => 448.0,
            Self::E4M3Fnuz => 240.0,
            Self::E5M2 | Self::E5M2Fnuz => 57344.0,
        }
    }

    /// Smallest positive normal value.
    pub fn min_normal(self) -> f32 {
        pow2(self.min_normal_exp())
    }

    /// Smallest positive subnormal value.
    pub fn min_subnormal(self) -> f32 {
        pow2(self.min_normal_exp() - self.mantissa_bits() as i32)
    }

    /// Cast to this format and back to f32 ("fake quantization"): saturating, round to nearest
    /// even, subnormals kept, NaN preserved. This is the scalar reference the kernels match.
    pub fn quantize(self, x: f32) -> f32 {
        if x.is_nan() {
            return x;
        }
        let a = x.abs();
        let max = self.max();
        if a >= max {
            // Saturation: +-inf and every finite value beyond max become +-max.
            return max.copysign(x);
        }
        // The spacing of representable values around `a`: 2^(e - m) with e the exponent of `a`,
        // but never finer than the subnormal spacing 2^(emin - m). `a < max` so `a` is finite;
        // f32 subnormals (exponent field 0) fall under emin like every other tiny value.
        let e = f32_exponent(a).max(self.min_normal_exp());
        let quantum = pow2(e - self.mantissa_bits() as i32);
        // a / quantum < 2^(m + 1) is exact (power-of-two division within range) and small, so
        // `round_ties_even` is the whole rounding step.
        let r = (a / quantum).round_ties_even() * quantum;
        r.copysign(x)
    }
}

impl Fp8Format {
    /// Whether the format has a negative zero (the OCP formats; the `fnuz` ones use its bit
    /// pattern 0x80 for NaN).
    pub fn has_negative_zero(self) -> bool {
        matches!(self, Self::E4M3Fn | Self::E5M2)
    }

    /// The value of the bit pattern `code` (sign, exponent, mantissa), as `ml_dtypes` reads it:
    /// NaN for the format's NaN patterns, +-inf for E5M2's infinities.
    pub fn decode(self, code: u8) -> f32 {
        let m = self.mantissa_bits();
        let exp_bits = 7 - m;
        let (exp_field, mant) = ((code >> m) & ((1 << exp_bits) - 1), code & ((1 << m) - 1));
        let negative = code & 0x80 != 0;
        let all_ones = exp_field == (1 << exp_bits) - 1;
        let nan = match self {
            Self::E4M3Fnuz | Self::E5M2Fnuz => code == 0x80,
            Self::E4M3Fn => code & 0x7f == 0x7f,
            Self::E5M2 => all_ones && mant != 0,
        };
        if nan {
            return f32::NAN;
        }
        let magnitude = if self == Self::E5M2 && all_ones {
            f32::INFINITY
        } else if exp_field == 0 {
            // Subnormal: mant x the smallest subnormal (exact: at most 3 significant bits).
            f32::from(mant) * self.min_subnormal()
        } else {
            let e = i32::from(exp_field) + self.min_normal_exp() - 1;
            pow2(e) * (1.0 + f32::from(mant) / f32::from(1u8 << m))
        };
        if negative {
            -magnitude
        } else {
            magnitude
        }
    }

    /// The bit pattern of `x`, when `x` is a finite value of the format (what [`Self::quantize`]
    /// returns for finite inputs); `None` otherwise. Zero of either sign is 0x00 in the `fnuz`
    /// formats, which have no negative zero.
    pub fn encode(self, x: f32) -> Option<u8> {
        if !x.is_finite() || x.abs() > self.max() {
            return None;
        }
        let sign = if x.is_sign_negative() && (x != 0.0 || self.has_negative_zero()) {
            0x80u8
        } else {
            0
        };
        let a = x.abs();
        if a == 0.0 {
            return Some(sign);
        }
        let m = self.mantissa_bits();
        let e = f32_exponent(a);
        let code = if e < self.min_normal_exp() {
            // Subnormal: an integer multiple of the smallest subnormal below 2^m.
            let steps = a / self.min_subnormal();
            if steps.fract() != 0.0 || steps < 1.0 {
                return None;
            }
            steps as u8
        } else {
            let bits = a.to_bits();
            if bits & ((1 << (23 - m)) - 1) != 0 {
                return None;
            }
            let mant = ((bits >> (23 - m)) & ((1 << m) - 1)) as u8;
            let exp_field = (e - self.min_normal_exp() + 1) as u8;
            (exp_field << m) | mant
        };
        let code = sign | code;
        // NaN and infinity patterns are not values: a magnitude there was not representable.
        (self.decode(code) == x).then_some(code)
    }
}

impl Fp8Family {
    /// The E4 format of the family (weights and activations).
    pub fn e4(self) -> Fp8Format {
        match self {
            Self::Graphcore => Fp8Format::E4M3Fnuz,
            Self::Ocp => Fp8Format::E4M3Fn,
        }
    }

    /// The E5 format of the family (gradients).
    pub fn e5(self) -> Fp8Format {
        match self {
            Self::Graphcore => Fp8Format::E5M2Fnuz,
            Self::Ocp => Fp8Format::E5M2,
        }
    }

    /// The format a tensor of `role` is cast to.
    pub fn format_for(self, role: Role) -> Fp8Format {
        match role {
            Role::Weight | Role::Activation => self.e4(),
            Role::Gradient => self.e5(),
        }
    }

    /// The config name of the family.
    pub fn name(self) -> &'static str {
        match self {
            Self::Graphcore => "graphcore",
            Self::Ocp => "ocp",
        }
    }
}

impl Role {
    /// The three roles, in the order of a layer's casts in `fp8_stats.csv`.
    pub const ALL: [Role; 3] = [Self::Weight, Self::Activation, Self::Gradient];

    /// The name used in `fp8_stats.csv`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Weight => "weight",
            Self::Activation => "activation",
            Self::Gradient => "gradient",
        }
    }
}

/// 2^e as an f32, built from its bits; `e` must lie in the normal range [-126, 127].
pub(crate) fn pow2(e: i32) -> f32 {
    debug_assert!((-126..=127).contains(&e), "2^{e} is not a normal f32");
    f32::from_bits(((e + 127) as u32) << 23)
}

/// floor(log2 |a|) for a normal f32, read from the exponent field (exact, unlike `log2`).
/// f32 subnormals and zero give -127, below every FP8 format's range.
fn f32_exponent(a: f32) -> i32 {
    ((a.to_bits() >> 23) & 0xff) as i32 - 127
}

impl FromStr for Fp8Format {
    type Err = UnknownName;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|f| f.name() == s)
            .ok_or_else(|| UnknownName {
                what: "FP8 format",
                got: s.to_string(),
                expected: "float8_e4m3fn, float8_e5m2, float8_e4m3fnuz, float8_e5m2fnuz",
            })
    }
}

impl FromStr for Fp8Family {
    type Err = UnknownName;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "graphcore" => Ok(Self::Graphcore),
            "ocp" => Ok(Self::Ocp),
            _ => Err(UnknownName {
                what: "FP8 family",
                got: s.to_string(),
                expected: "graphcore, ocp",
            }),
        }
    }
}

impl fmt::Display for Fp8Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl fmt::Display for Fp8Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constants_match_design_table() {
        let table = [
            (Fp8Format::E4M3Fnuz, 240.0, -7, -10),
            (Fp8Format::E5M2Fnuz, 57344.0, -15, -17),
            (Fp8Format::E4M3Fn, 448.0, -6, -9),
            (Fp8Format::E5M2, 57344.0, -14, -16),
        ];
        for (f, max, min_normal, min_sub) in table {
            assert_eq!(f.max(), max, "{f}");
            assert_eq!(f.min_normal(), 2f32.powi(min_normal), "{f}");
            assert_eq!(f.min_subnormal(), 2f32.powi(min_sub), "{f}");
        }
    }

    #[test]
    fn names_round_trip_and_unknown_is_an_error() {
        for f in Fp8Format::ALL {
            assert_eq!(f.name().parse::<Fp8Format>(), Ok(f));
        }
        let err = "float8_e3m4".parse::<Fp8Format>().unwrap_err();
        assert!(err.to_string().contains("float8_e3m4"), "{err}");
        assert!("IPU".parse::<Fp8Family>().is_err());
        for family in [Fp8Family::Graphcore, Fp8Family::Ocp] {
            assert_eq!(family.name().parse::<Fp8Family>(), Ok(family));
        }
    }

    #[test]
    fn names_are_the_config_and_csv_spellings() {
        // `precision.family` values and the `fp8_stats.csv` role column (docs/design.md); Display
        // writes the same names.
        let families = [(Fp8Family::Graphcore, "graphcore"), (Fp8Family::Ocp, "ocp")];
        for (family, name) in families {
            assert_eq!((family.name(), family.to_string().as_str()), (name, name));
        }
        let roles = [
            (Role::Weight, "weight"),
            (Role::Activation, "activation"),
            (Role::Gradient, "gradient"),
        ];
        for (role, name) in roles {
            assert_eq!((role.name(), role.to_string().as_str()), (name, name));
        }
        for f in Fp8Format::ALL {
            assert_eq!(f.to_string(), f.name());
        }
    }
}
