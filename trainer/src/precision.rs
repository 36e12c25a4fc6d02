//! The numeric precision a job or command runs in (config value / `--precision` flag).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// `fp32 | fp8-amax | fp8-cscale` (DESIGN.md "FP8 numerics").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Precision {
    /// Everything in f32.
    Fp32,
    /// FP8 projections with a per-tensor power-of-two scale recomputed from amax at every call.
    Fp8Amax,
    /// FP8 projections with one constant scaling bias for every tensor.
    Fp8Cscale,
}

impl Precision {
    /// The spelling used in configs and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Fp32 => "fp32",
            Self::Fp8Amax => "fp8-amax",
            Self::Fp8Cscale => "fp8-cscale",
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An unknown precision name.
#[derive(Debug, thiserror::Error)]
#[error("unknown precision `{0}` (expected fp32, fp8-amax or fp8-cscale)")]
pub struct UnknownPrecision(pub String);

impl FromStr for Precision {
    type Err = UnknownPrecision;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "fp32" => Ok(Self::Fp32),
            "fp8-amax" => Ok(Self::Fp8Amax),
            "fp8-cscale" => Ok(Self::Fp8Cscale),
            other => Err(UnknownPrecision(other.to_string())),
        }
    }
}
