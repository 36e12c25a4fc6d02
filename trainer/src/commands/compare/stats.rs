//! Statistics over the seeds of a recipe: mean and spread of one number per run, and the
//! values of a metrics column at the steps where every run has one.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::train::run_dir::MetricsRow;

/// Mean and spread of one number over the runs (seeds) of a recipe.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Spread {
    pub mean: f64,
    /// Sample standard deviation (n - 1 in the denominator); `None` with one run.
    pub std: Option<f64>,
    pub min: f64,
    pub max: f64,
    /// Runs that had the number.
    pub n: usize,
}

impl Spread {
    /// The spread of `values` (`None` when there are none).
    pub fn of(values: &[f64]) -> Option<Self> {
        let n = values.len();
        let mean = mean(values)?;
        let std = (n > 1).then(|| {
            let squares: f64 = values.iter().map(|v| (v - mean).powi(2)).sum();
            (squares / (n - 1) as f64).sqrt()
        });
        Some(Self {
            mean,
            std,
            min: values.iter().copied().fold(f64::INFINITY, f64::min),
            max: values.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            n,
        })
    }

    /// max - min.
    pub fn range(&self) -> f64 {
        self.max - self.min
    }

    /// The standard error of the mean, std / sqrt(n) (`None` with one run).
    pub fn standard_error(&self) -> Option<f64> {
        Some(self.std? / (self.n as f64).sqrt())
    }
}

/// The arithmetic mean (`None` of nothing).
pub fn mean(values: &[f64]) -> Option<f64> {
    (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
}

/// A metrics column (`val_loss`, `train_loss`).
pub type Column = fn(&MetricsRow) -> Option<f32>;

/// Per step, the finite values of `column` of every run (in run order), at the steps where
/// every run has one: the steps at which seeds (or a run and its baseline) can be compared.
pub fn aligned(runs: &[&[MetricsRow]], column: Column) -> BTreeMap<u64, Vec<f64>> {
    let mut steps: BTreeMap<u64, Vec<f64>> = BTreeMap::new();
    for (i, rows) in runs.iter().enumerate() {
        for row in rows.iter() {
            let value = column(row).filter(|v| v.is_finite());
            let values = steps.entry(row.step).or_default();
            // A step seen by every run before this one, once: later duplicates do not count.
            if let Some(v) = value.filter(|_| values.len() == i) {
                values.push(v as f64);
            }
        }
    }
    steps.retain(|_, values| values.len() == runs.len());
    steps
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_of_numbers() {
        let s = Spread::of(&[1.0, 2.0, 4.0]).unwrap();
        assert_eq!((s.mean, s.min, s.max, s.n), (7.0 / 3.0, 1.0, 4.0, 3));
        // Deviations -4/3, -1/3, 5/3: squares sum to 42/9; / (n - 1) = 7/3.
        assert!((s.std.unwrap() - (7.0f64 / 3.0).sqrt()).abs() < 1e-15);
        assert_eq!(
            Spread::of(&[2.5]).unwrap().std,
            None,
            "one seed has no spread"
        );
        assert_eq!(Spread::of(&[]), None);
    }

    #[test]
    fn aligned_keeps_the_steps_every_run_has() {
        let row = |step, val: Option<f32>| MetricsRow {
            step,
            val_loss: val,
            ..MetricsRow::default()
        };
        let a = [row(0, Some(5.0)), row(4, Some(4.0)), row(8, Some(3.0))];
        let b = [row(0, Some(5.5)), row(4, Some(f32::NAN)), row(8, Some(3.5))];
        let c = [row(0, Some(6.0)), row(8, Some(2.0))];
        let got = aligned(&[&a[..], &b[..], &c[..]], |r| r.val_loss);
        let want = BTreeMap::from([(0, vec![5.0, 5.5, 6.0]), (8, vec![3.0, 3.5, 2.0])]);
        assert_eq!(got, want);
    }
}
