//! Delayed scaling (`fp8-delayed`): Transformer Engine's recipe, with power-of-two scales.
//!
//! Each FP8 tensor of a named layer (the layer's name and the tensor's role: its weight, its
//! input activation, the gradient of its output) keeps the amaxes of its last `H` casts
//! (`amax_history_len`). A cast takes its bias from that history, not from the tensor itself:
//!
//! ```text
//! a    = max(history)                      (amax_compute_algo "max")
//!      | the newest non-zero amax            ("most_recent")
//! bias = amax_bias(a, format, margin)       (as FP8-AMAX; values above the scaled range saturate)
//! ```
//!
//! and then appends its own amax to the history. A history with no non-zero amax (a new
//! tensor, or one that has only been zeros) gives no bias: that cast is scaled from its own
//! amax, as in FP8-AMAX. (Transformer Engine starts from scale 1, which on a fine-tune's
//! first step flushes most E5 gradients to zero, and keeps the previous scale after an
//! all-zero tensor; here the bias is a function of the history alone, so the history is the
//! whole state.)
//!
//! Identity: a history belongs to a layer *name* and a role, never to a position, so it
//! survives model rebuilds and is restored by name from a checkpoint. A layer cast twice for
//! one use (its weight cast again for dX when `cache_weights` is off) takes the bias of the
//! forward's cast and records nothing. With gradient accumulation a history advances once per
//! micro-batch (the forward's weight and activation casts, the backward's gradient cast).
//! While histories are frozen ([`crate::Fp8Context::freeze_amax_histories`], held by the
//! trainer's evaluations) casts use them but add nothing, so evaluating cannot change training.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::format::{Fp8Format, Role, UnknownName};
use crate::report::LayerId;
use crate::scaling::amax_bias;

/// Default `amax_history_len` (Transformer Engine's `DelayedScaling` default).
pub const DEFAULT_AMAX_HISTORY_LEN: usize = 1024;

/// How a history becomes the amax a bias is computed from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AmaxCompute {
    /// The largest amax of the history (Transformer Engine's default).
    #[default]
    Max,
    /// The newest non-zero amax.
    MostRecent,
}

impl AmaxCompute {
    /// The spelling of configs (`max`, `most_recent`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Max => "max",
            Self::MostRecent => "most_recent",
        }
    }
}

impl fmt::Display for AmaxCompute {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for AmaxCompute {
    type Err = UnknownName;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "max" => Ok(Self::Max),
            "most_recent" => Ok(Self::MostRecent),
            _ => Err(UnknownName {
                what: "amax compute algorithm",
                got: s.to_string(),
                expected: "max, most_recent",
            }),
        }
    }
}

/// The amax a history (oldest first) gives under `compute`; `None` when it holds no non-zero
/// amax.
pub fn history_amax<'a>(
    history: impl DoubleEndedIterator<Item = &'a f32>,
    compute: AmaxCompute,
) -> Option<f32> {
    let a = match compute {
        AmaxCompute::Max => history.copied().fold(0.0f32, f32::max),
        AmaxCompute::MostRecent => history.rev().copied().find(|&a| a > 0.0)?,
    };
    (a > 0.0).then_some(a)
}

/// The bias a history (oldest first) gives a tensor of `format` with `margin`; `None`: scale
/// it from its own amax.
pub fn history_bias<'a>(
    history: impl DoubleEndedIterator<Item = &'a f32>,
    compute: AmaxCompute,
    format: Fp8Format,
    margin: i32,
) -> Option<i32> {
    let a = history_amax(history, compute)?;
    // Only finite amaxes are recorded (see `AmaxHistories::record`).
    Some(amax_bias(a, format, margin).expect("histories hold finite amaxes"))
}

/// One tensor's history, as saved in a checkpoint.
#[derive(Clone, Debug, PartialEq)]
pub struct AmaxHistory {
    /// The layer's name.
    pub layer: String,
    /// Which of its tensors.
    pub role: Role,
    /// Amaxes of its casts, oldest first (at most `amax_history_len`).
    pub amaxes: Vec<f32>,
}

/// Every tensor's history (inside an [`crate::Fp8Context`]).
#[derive(Debug, Default)]
pub(crate) struct AmaxHistories {
    by_tensor: HashMap<(LayerId, Role), VecDeque<f32>>,
    /// Casts use the histories but add nothing.
    pub(crate) frozen: bool,
}

impl AmaxHistories {
    /// The history of one tensor, oldest first (empty when it has none).
    pub(crate) fn of(&self, layer: &LayerId, role: Role) -> Vec<f32> {
        self.by_tensor
            .get(&(layer.clone(), role))
            .map(|h| h.iter().copied().collect())
            .unwrap_or_default()
    }

    /// The bias the history of one tensor gives (see [`history_bias`]).
    pub(crate) fn bias(
        &self,
        layer: &LayerId,
        role: Role,
        compute: AmaxCompute,
        format: Fp8Format,
        margin: i32,
    ) -> Option<i32> {
        let history = self.by_tensor.get(&(layer.clone(), role))?;
        history_bias(history.iter(), compute, format, margin)
    }

    /// Appends a finite amax, keeping the newest `len` (nothing while frozen).
    pub(crate) fn record(&mut self, layer: &LayerId, role: Role, amax: f32, len: usize) {
        if self.frozen || !amax.is_finite() {
            return;
        }
        let history = self.by_tensor.entry((layer.clone(), role)).or_default();
        history.push_back(amax.abs());
        while history.len() > len.max(1) {
            history.pop_front();
        }
    }

    /// Every history, sorted by layer name and role.
    pub(crate) fn export(&self) -> Vec<AmaxHistory> {
        let mut all: Vec<AmaxHistory> = self
            .by_tensor
            .iter()
            .filter_map(|((layer, role), h)| {
                Some(AmaxHistory {
                    layer: layer.name()?.to_string(),
                    role: *role,
                    amaxes: h.iter().copied().collect(),
                })
            })
            .collect();
        all.sort_by(|a, b| (&a.layer, role_order(a.role)).cmp(&(&b.layer, role_order(b.role))));
        all
    }

    /// Replaces every history with `histories` (non-finite amaxes are dropped).
    pub(crate) fn restore(&mut self, histories: Vec<AmaxHistory>) {
        self.by_tensor = histories
            .into_iter()
            .map(|h| {
                let amaxes = h.amaxes.into_iter().filter(|a| a.is_finite()).collect();
                ((LayerId::Named(h.layer.into()), h.role), amaxes)
            })
            .collect();
    }
}

fn role_order(role: Role) -> u8 {
    match role {
        Role::Weight => 0,
        Role::Activation => 1,
        Role::Gradient => 2,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_history_gives_the_bias_of_its_max_or_newest_non_zero_amax() {
        let f = Fp8Format::E4M3Fnuz; // max 240: amax 1 -> bias 7, 16 -> 3, 2 -> 6
        let h = [1.0, 16.0, 2.0, 0.0];
        let bias = |h: &[f32], c, margin| history_bias(h.iter(), c, f, margin);
        assert_eq!(bias(&h, AmaxCompute::Max, 0), Some(3));
        assert_eq!(bias(&h, AmaxCompute::MostRecent, 0), Some(6));
        assert_eq!(bias(&h, AmaxCompute::MostRecent, 2), Some(4));
        assert_eq!(bias(&[], AmaxCompute::Max, 0), None);
        assert_eq!(bias(&[0.0, 0.0], AmaxCompute::Max, 0), None);
        assert_eq!(bias(&[0.0], AmaxCompute::MostRecent, 0), None);
    }

    #[test]
    fn histories_keep_the_newest_len_finite_amaxes_per_name_and_role() {
        let (a, b) = (LayerId::Named("a".into()), LayerId::Named("b".into()));
        let mut hs = AmaxHistories::default();
        for x in [1.0, 2.0, f32::NAN, -3.0, 4.0] {
            hs.record(&a, Role::Weight, x, 3);
        }
        hs.record(&b, Role::Weight, 9.0, 3);
        hs.record(&a, Role::Gradient, 5.0, 3);
        assert_eq!(hs.of(&a, Role::Weight), [2.0, 3.0, 4.0]);
        assert_eq!(hs.of(&a, Role::Gradient), [5.0]);
        assert_eq!(hs.of(&a, Role::Activation), Vec::<f32>::new());
        hs.frozen = true;
        hs.record(&a, Role::Weight, 8.0, 3);
        assert_eq!(hs.of(&a, Role::Weight), [2.0, 3.0, 4.0]);

        let saved = hs.export();
        let names: Vec<(&str, Role)> = saved.iter().map(|h| (h.layer.as_str(), h.role)).collect();
        assert_eq!(
            names,
            [
                ("a", Role::Weight),
                ("a", Role::Gradient),
                ("b", Role::Weight)
            ]
        );
        let mut restored = AmaxHistories::default();
        restored.restore(saved.clone());
        assert_eq!(restored.export(), saved);
        assert_eq!(restored.of(&b, Role::Weight), [9.0]);
    }
}
