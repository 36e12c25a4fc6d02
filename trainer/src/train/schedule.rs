//! Learning-rate schedules: linear warmup, then a half cosine down to `min_lr_ratio * lr`
//! (nanoGPT's `get_lr`), or constant.

use std::f64::consts::PI;

use crate::job::{ScheduleConfig, ScheduleKind};

/// The learning rate of update `step` (0-based) of `total` updates.
pub fn learning_rate(s: &ScheduleConfig, lr: f64, step: u64, total: u64) -> f64 {
    if step < s.warmup_steps {
        return lr * (step + 1) as f64 / s.warmup_steps as f64;
    }
    match s.kind {
        ScheduleKind::Constant => lr,
        ScheduleKind::Cosine => {
            let min_lr = lr * s.min_lr_ratio;
            let span = total
                .saturating_sub(s.warmup_steps)
                .saturating_sub(1)
                .max(1) as f64;
            let progress = ((step - s.warmup_steps) as f64 / span).min(1.0);
            min_lr + 0.5 * (1.0 + (PI * progress).cos()) * (lr - min_lr)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_cosine_to_min() {
        let s = ScheduleConfig {
            kind: ScheduleKind::Cosine,
            warmup_steps: 10,
            min_lr_ratio: 0.1,
        };
        assert!((learning_rate(&s, 1.0, 0, 100) - 0.1).abs() < 1e-12);
        assert!((learning_rate(&s, 1.0, 9, 100) - 1.0).abs() < 1e-12);
        assert!((learning_rate(&s, 1.0, 10, 100) - 1.0).abs() < 1e-12);
        assert!((learning_rate(&s, 1.0, 99, 100) - 0.1).abs() < 1e-12);
        let c = ScheduleConfig {
            kind: ScheduleKind::Constant,
            ..s
        };
        assert_eq!(learning_rate(&c, 1.0, 50, 100), 1.0);
    }
}
