//! What the decorator tells the caller about its casts: one record per quantized tensor (when
//! statistics are on) and every tensor whose amax was not finite (always).

use std::fmt;
use std::sync::Arc;

use crate::format::Role;
use crate::kernel::QuantStats;

/// Which of the three GEMMs of a linear layer a quantization fed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LinearOp {
    /// `y = x W + b`.
    Forward,
    /// `dX = dY W^T`.
    BackwardX,
    /// `dW = X^T dY`.
    BackwardWeight,
}

/// Which linear layer a cast belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum LayerId {
    /// A layer the model named through an [`crate::Fp8Site`] (for GPT-2 its Hugging Face module
    /// name, `h.1.mlp.c_fc`): a stable key, the same in the forward and in the backward.
    Named(Arc<str>),
    /// An anonymous `burn::nn::Linear` on the thread-local path ([`crate::install`]): the
    /// ordinal of its forward call within the micro-batch `pass`, matched to backward calls by
    /// the order in which Burn's autodiff replays them.
    Ordinal {
        /// Micro-batch (forward/backward pass) since the last [`crate::take_report`], from 0.
        pass: u32,
        /// The forward call's ordinal in the pass.
        index: u32,
    },
}

impl LayerId {
    /// The name of a named layer.
    pub fn name(&self) -> Option<&str> {
        match self {
            Self::Named(name) => Some(name),
            Self::Ordinal { .. } => None,
        }
    }
}

impl fmt::Display for LayerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Named(name) => f.write_str(name),
            Self::Ordinal { pass, index } => write!(f, "linear call {index} of pass {pass}"),
        }
    }
}

/// One quantized tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantRecord {
    /// The layer.
    pub layer: LayerId,
    /// The GEMM the tensor fed (a gradient cast once for both backward GEMMs is recorded as
    /// [`LinearOp::BackwardX`] when the layer's input needs a gradient).
    pub op: LinearOp,
    /// Weight, activation or gradient.
    pub role: Role,
    /// amax, bias, underflow and saturation.
    pub stats: QuantStats,
}

/// A tensor whose amax was infinite or NaN, so it was not quantized.
#[derive(Debug, Clone, PartialEq)]
pub struct NonFiniteEvent {
    /// The layer.
    pub layer: LayerId,
    /// The GEMM the tensor fed.
    pub op: LinearOp,
    /// Weight, activation or gradient.
    pub role: Role,
    /// The non-finite amax.
    pub amax: f32,
}

/// What the decorator saw since the report was last taken.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Fp8Report {
    /// One record per quantized tensor (empty unless the policy has `stats` on).
    pub records: Vec<QuantRecord>,
    /// Tensors that could not be quantized (always recorded).
    pub non_finite: Vec<NonFiniteEvent>,
}

impl Fp8Report {
    /// Adds the outcome of one cast.
    pub(crate) fn add(&mut self, layer: &LayerId, op: LinearOp, role: Role, cast: &CastOutcome) {
        match *cast {
            CastOutcome::Quantized(stats) => {
                if let Some(stats) = stats {
                    if !stats.amax.is_finite() {
                        self.add_non_finite(layer, op, role, stats.amax);
                    }
                    self.records.push(QuantRecord {
                        layer: layer.clone(),
                        op,
                        role,
                        stats,
                    });
                }
            }
            CastOutcome::NonFinite(amax) => self.add_non_finite(layer, op, role, amax),
            CastOutcome::Skipped => {}
        }
    }

    fn add_non_finite(&mut self, layer: &LayerId, op: LinearOp, role: Role, amax: f32) {
        log::warn!("FP8: non-finite amax {amax} in the {role} of {layer} ({op:?})");
        self.non_finite.push(NonFiniteEvent {
            layer: layer.clone(),
            op,
            role,
            amax,
        });
    }
}

/// What happened to one operand (see `crate::linear`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum CastOutcome {
    /// Cast, with statistics when they were asked for.
    Quantized(Option<QuantStats>),
    /// Passed on unchanged: its amax was not finite.
    NonFinite(f32),
    /// Not cast (FP8 is off), or cast again by a recomputed forward (recorded the first time).
    Skipped,
}
