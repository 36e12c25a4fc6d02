//! FP8 telemetry warnings: a log line when a sampled tensor starts losing more of its values to
//! underflow (non-zero values cast to zero) or saturation (values clipped to the format's max)
//! than `precision.warn_underflow` / `precision.warn_saturation` allow, and one when it is back
//! under. Only statistics steps (`precision.stats_every`) are looked at: the fractions come from
//! the same records as `fp8_stats.csv`.

use std::collections::HashSet;

use fp8_backend::{Fp8Policy, QuantRecord};

/// Which loss a warning is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Loss {
    Underflow,
    Saturation,
}

impl Loss {
    fn name(self) -> &'static str {
        match self {
            Self::Underflow => "underflow",
            Self::Saturation => "saturation",
        }
    }
}

/// The tensors over a threshold at the last statistics step.
#[derive(Debug, Default)]
pub struct Fp8Warnings {
    over: HashSet<(String, fp8_backend::Role, Loss)>,
}

impl Fp8Warnings {
    /// Looks at a statistics step's records; returns the lines it logged (warnings first).
    pub fn check(&mut self, step: u64, records: &[QuantRecord], policy: &Fp8Policy) -> Vec<String> {
        let (mut warnings, mut recoveries) = (Vec::new(), Vec::new());
        for r in records {
            for (loss, frac, limit) in [
                (
                    Loss::Underflow,
                    r.stats.underflow_frac,
                    policy.warn_underflow,
                ),
                (
                    Loss::Saturation,
                    r.stats.saturated_frac,
                    policy.warn_saturation,
                ),
            ] {
                let key = (r.layer.to_string(), r.role, loss);
                let what = format!(
                    "FP8 {} in the {} of {}: {:.2}% of its {}values (bias {}, \
                     `precision.warn_{}` {:.2}%)",
                    loss.name(),
                    r.role,
                    r.layer,
                    100.0 * f64::from(frac),
                    if loss == Loss::Underflow {
                        "non-zero "
                    } else {
                        ""
                    },
                    r.stats.bias,
                    loss.name(),
                    100.0 * limit,
                );
                if f64::from(frac) > limit {
                    if self.over.insert(key) {
                        warnings.push(format!("step {step}: {what}"));
                    }
                } else if self.over.remove(&key) {
                    recoveries.push(format!("step {step}: back under the threshold: {what}"));
                }
            }
        }
        for line in &warnings {
            log::warn!("{line}");
        }
        for line in &recoveries {
            log::info!("{line}");
        }
        warnings.extend(recoveries);
        warnings
    }
}

#[cfg(test)]
mod tests {
    use fp8_backend::{LayerId, LinearOp, QuantStats, Role};

    use super::*;

    fn record(layer: &str, role: Role, underflow_frac: f32, saturated_frac: f32) -> QuantRecord {
        QuantRecord {
            layer: LayerId::Named(layer.into()),
            op: LinearOp::Forward,
            role,
            stats: QuantStats {
                amax: 1.0,
                bias: 4,
                underflow_frac,
                saturated_frac,
                numel: 100,
            },
        }
    }

    #[test]
    fn a_tensor_warns_once_when_it_crosses_and_again_after_it_recovered() {
        let policy = Fp8Policy {
            warn_underflow: 0.1,
            warn_saturation: 0.01,
            ..Fp8Policy::amax()
        };
        let mut w = Fp8Warnings::default();
        let quiet = [record("h.0.mlp.c_fc", Role::Gradient, 0.05, 0.005)];
        assert!(
            w.check(1, &quiet, &policy).is_empty(),
            "under both thresholds"
        );
        let over = [
            record("h.0.mlp.c_fc", Role::Gradient, 0.5, 0.0),
            record("h.1.mlp.c_fc", Role::Weight, 0.0, 0.02),
        ];
        let lines = w.check(2, &over, &policy);
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(
            lines[0].starts_with("step 2: FP8 underflow in the gradient of h.0.mlp.c_fc: 50.00%")
        );
        assert!(lines[1].contains("saturation in the weight of h.1.mlp.c_fc: 2.00%"));
        assert!(
            w.check(3, &over, &policy).is_empty(),
            "still over: said already"
        );
        let lines = w.check(4, &quiet, &policy);
        assert_eq!(
            lines.len(),
            1,
            "only the gradient was looked at again: {lines:?}"
        );
        assert!(lines[0].contains("back under the threshold: FP8 underflow"));
        assert_eq!(w.check(5, &over, &policy).len(), 1, "h.0 crosses again");
    }
}
