//! One run's summary (its line of `summary.csv`): final and best validation loss (and
//! accuracy), the mean training loss over the last tenth of the steps, the median throughput;
//! and the cells of `summary.csv`, with each run's gaps and speed ratio to the baseline run of
//! the same seed.

use fp8_backend::Precision;

use crate::train::run_dir::MetricsRow;

/// One run's line of `summary.csv`.
#[derive(Clone, Debug, PartialEq)]
pub struct CompareRow {
    /// The recipe's label (`fp8-amax`, `fp8-cscale-b4`).
    pub recipe: String,
    pub precision: Precision,
    /// The job's `seed`.
    pub seed: u64,
    /// Optimizer steps run.
    pub steps: u64,
    /// Validation loss at the last evaluation.
    pub final_val_loss: Option<f32>,
    /// Lowest finite validation loss of the run.
    pub best_val_loss: Option<f32>,
    /// Validation accuracy at the last evaluation (classification data).
    pub final_val_accuracy: Option<f64>,
    /// Highest validation accuracy of the run.
    pub best_val_accuracy: Option<f64>,
    /// Mean finite training loss over the last tenth of the steps (at least one step).
    pub final_train_loss: Option<f32>,
    /// Median training throughput (tokens per second of forward, backward and optimizer step).
    pub tokens_per_s: Option<f64>,
}

impl CompareRow {
    /// The summary of a run's metrics.
    pub fn of(recipe: String, precision: Precision, seed: u64, rows: &[MetricsRow]) -> Self {
        let vals: Vec<f32> = rows.iter().filter_map(|r| r.val_loss).collect();
        let accuracies: Vec<f64> = rows.iter().filter_map(|r| r.val_accuracy).collect();
        let train: Vec<f32> = rows
            .iter()
            .filter(|r| r.step > 0)
            .filter_map(|r| r.train_loss)
            .collect();
        let tail = &train[train.len() - (train.len() / 10).max(1).min(train.len())..];
        let finite: Vec<f64> = tail
            .iter()
            .filter(|l| l.is_finite())
            .map(|&l| l as f64)
            .collect();
        let mut speeds: Vec<f64> = rows
            .iter()
            .filter_map(|r| r.tokens_per_s)
            .filter(|s| s.is_finite())
            .collect();
        speeds.sort_by(f64::total_cmp);
        Self {
            recipe,
            precision,
            seed,
            tokens_per_s: speeds.get(speeds.len() / 2).copied(),
            steps: rows.iter().map(|r| r.step).max().unwrap_or(0),
            final_val_loss: vals.last().copied(),
            best_val_loss: vals
                .iter()
                .copied()
                .filter(|v| v.is_finite())
                .reduce(f32::min),
            final_val_accuracy: accuracies.last().copied(),
            best_val_accuracy: accuracies
                .iter()
                .copied()
                .filter(|a| a.is_finite())
                .reduce(f64::max),
            final_train_loss: (!finite.is_empty())
                .then(|| (finite.iter().sum::<f64>() / finite.len() as f64) as f32),
        }
    }
}

/// Columns of `summary.csv`; a sweep with `--seeds` or `--cscale-biases` adds
/// [`SWEEP_COLUMNS`].
pub const SUMMARY_HEADER: [&str; 9] = [
    "precision",
    "steps",
    "final_val_loss",
    "best_val_loss",
    "final_train_loss",
    "val_gap",
    "train_gap",
    "tokens_per_s",
    "speed_ratio",
];
/// The columns that tell the runs of a sweep apart.
pub const SWEEP_COLUMNS: [&str; 2] = ["recipe", "seed"];

/// The header and cells of `summary.csv` for `rows`, with the gaps and speed ratios to the
/// baseline run of the same seed (the first row of that seed; empty where a value is missing);
/// `sweep` adds the recipe and seed columns.
pub fn summary_cells(rows: &[CompareRow], sweep: bool) -> Vec<Vec<String>> {
    fn cell(v: Option<f32>) -> String {
        v.map(|v| v.to_string()).unwrap_or_default()
    }
    fn gap(v: Option<f32>, base: Option<f32>) -> String {
        match (v, base) {
            (Some(v), Some(b)) => (v - b).to_string(),
            _ => String::new(),
        }
    }
    let mut header: Vec<String> = SUMMARY_HEADER.map(String::from).into();
    if sweep {
        header.extend(SWEEP_COLUMNS.map(String::from));
    }
    let lines = rows.iter().map(|r| {
        let base = rows.iter().find(|b| b.seed == r.seed);
        let ratio = match (r.tokens_per_s, base.and_then(|b| b.tokens_per_s)) {
            (Some(s), Some(b)) if b > 0.0 => format!("{:.3}", s / b),
            _ => String::new(),
        };
        let mut line = vec![
            r.precision.to_string(),
            r.steps.to_string(),
            cell(r.final_val_loss),
            cell(r.best_val_loss),
            cell(r.final_train_loss),
            gap(r.final_val_loss, base.and_then(|b| b.final_val_loss)),
            gap(r.final_train_loss, base.and_then(|b| b.final_train_loss)),
            r.tokens_per_s
                .map(|s| format!("{s:.0}"))
                .unwrap_or_default(),
            ratio,
        ];
        if sweep {
            line.extend([r.recipe.clone(), r.seed.to_string()]);
        }
        line
    });
    std::iter::once(header).chain(lines).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A training row of step `step`: its loss and speed (the other columns do not enter).
    fn step_row(step: u64, train_loss: f32, tokens_per_s: f64) -> MetricsRow {
        MetricsRow {
            step,
            tokens: step * 100,
            train_loss: Some(train_loss),
            lr: Some(1e-3),
            grad_norm: Some(1.0),
            tokens_per_s: Some(tokens_per_s),
            elapsed_s: step as f64,
            ..MetricsRow::default()
        }
    }

    /// 30 steps: row 0 (val 5.0), validation at 10, 20, 30 (accuracy at 10 and 30), a
    /// non-finite training loss in the last tenth, and speeds whose median differs from their
    /// mean.
    fn thirty_steps() -> Vec<MetricsRow> {
        let mut rows = vec![MetricsRow {
            val_loss: Some(5.0),
            ..MetricsRow::default()
        }];
        for step in 1..=30u64 {
            // Losses 4.0, 3.9, ...; speeds 1000 + 10 * step, but a slow outlier at step 1.
            let loss = match step {
                29 => f32::INFINITY,
                _ => 4.0 - 0.1 * (step - 1) as f32,
            };
            let speed = if step == 1 {
                10.0
            } else {
                1000.0 + 10.0 * step as f64
            };
            let mut row = step_row(step, loss, speed);
            row.val_loss = match step {
                10 => Some(3.5),
                20 => Some(f32::NAN), // a non-finite evaluation is never the best
                30 => Some(3.75),
                _ => None,
            };
            row.val_accuracy = match step {
                10 => Some(0.75),
                30 => Some(0.5),
                _ => None,
            };
            rows.push(row);
        }
        rows
    }

    fn of(precision: Precision, rows: &[MetricsRow]) -> CompareRow {
        CompareRow::of(precision.to_string(), precision, 1, rows)
    }

    #[test]
    fn compare_row_of_a_run() {
        let row = of(Precision::Fp8Amax, &thirty_steps());
        assert_eq!(row.precision, Precision::Fp8Amax);
        assert_eq!(row.steps, 30);
        assert_eq!(row.final_val_loss, Some(3.75), "the last evaluation");
        assert_eq!(
            row.best_val_loss,
            Some(3.5),
            "lowest finite, row 0 included"
        );
        assert_eq!(row.final_val_accuracy, Some(0.5));
        assert_eq!(row.best_val_accuracy, Some(0.75));
        // Last tenth of 30 steps = steps 28, 29, 30; step 29 is infinite and left out:
        // mean of 4.0 - 2.7 and 4.0 - 2.9 (as the f32 values the rows hold).
        let (l28, l30) = ((4.0f32 - 0.1 * 27.0) as f64, (4.0f32 - 0.1 * 29.0) as f64);
        assert_eq!(row.final_train_loss, Some(((l28 + l30) / 2.0) as f32));
        assert!((row.final_train_loss.unwrap() - 1.2).abs() < 1e-6);
        // Speeds: 10 and 1020 ..= 1300 (30 values); sorted, index 15 is 1000 + 10 * 16.
        assert_eq!(row.tokens_per_s, Some(1160.0));
    }

    #[test]
    fn compare_row_edge_cases() {
        // Fewer than ten steps: the last step alone; no validation at all.
        let rows: Vec<MetricsRow> = (1..=3)
            .map(|s| step_row(s, s as f32, 100.0 * s as f64))
            .collect();
        let row = of(Precision::Fp32, &rows);
        assert_eq!(row.final_train_loss, Some(3.0));
        assert_eq!((row.final_val_loss, row.best_val_loss), (None, None));
        assert_eq!(row.final_val_accuracy, None);
        assert_eq!(row.tokens_per_s, Some(200.0), "median of three");
        // Every loss of the tail non-finite: no training loss; NaN speeds are not counted.
        let mut rows = rows;
        rows[2].train_loss = Some(f32::NAN);
        rows[2].tokens_per_s = Some(f64::NAN);
        let row = of(Precision::Fp32, &rows);
        assert_eq!(row.final_train_loss, None);
        assert_eq!(row.tokens_per_s, Some(200.0), "upper median of 100 and 200");
        assert_eq!(row.steps, 3);
        // No rows at all.
        let row = of(Precision::Fp32, &[]);
        assert_eq!(
            (row.steps, row.final_train_loss, row.tokens_per_s),
            (0, None, None)
        );
    }

    fn compare_row(
        precision: Precision,
        seed: u64,
        val: Option<f32>,
        train: Option<f32>,
        speed: Option<f64>,
    ) -> CompareRow {
        CompareRow {
            recipe: precision.to_string(),
            precision,
            seed,
            steps: 30,
            final_val_loss: val,
            best_val_loss: val.map(|v| v - 0.25),
            final_val_accuracy: None,
            best_val_accuracy: None,
            final_train_loss: train,
            tokens_per_s: speed,
        }
    }

    fn expect(cells: &[&str]) -> Vec<String> {
        cells.iter().map(|c| c.to_string()).collect()
    }

    #[test]
    fn summary_cells_gaps_and_speed_ratio_against_the_first_row() {
        let rows = [
            compare_row(Precision::Fp32, 1, Some(3.5), Some(3.25), Some(2000.0)),
            compare_row(Precision::Fp8Amax, 1, Some(3.75), Some(3.0), Some(1500.4)),
            compare_row(Precision::Fp8Cscale, 1, None, Some(4.5), None),
        ];
        let cells = summary_cells(&rows, false);
        assert_eq!(
            cells,
            vec![
                expect(&SUMMARY_HEADER),
                expect(&["fp32", "30", "3.5", "3.25", "3.25", "0", "0", "2000", "1.000"]),
                // val gap 3.75 - 3.5, train gap 3.0 - 3.25, 1500.4 / 2000 = 0.7502.
                expect(&["fp8-amax", "30", "3.75", "3.5", "3", "0.25", "-0.25", "1500", "0.750"]),
                expect(&["fp8-cscale", "30", "", "", "4.5", "", "1.25", "", ""]),
            ]
        );
        // A baseline without a speed gives no ratios; one without a loss, no gaps.
        let rows = [
            compare_row(Precision::Fp32, 1, None, None, None),
            compare_row(Precision::Fp8Amax, 1, Some(3.75), Some(3.0), Some(1500.0)),
        ];
        let cells = summary_cells(&rows, false);
        assert_eq!(&cells[2][5..], expect(&["", "", "1500", ""]));
        assert_eq!(summary_cells(&[], false), vec![expect(&SUMMARY_HEADER)]);
    }

    #[test]
    fn summary_cells_of_a_sweep_pair_each_run_with_the_baseline_of_its_seed() {
        let rows = [
            compare_row(Precision::Fp32, 1, Some(3.5), None, None),
            compare_row(Precision::Fp32, 2, Some(3.0), None, None),
            compare_row(Precision::Fp8Amax, 1, Some(3.75), None, None),
            compare_row(Precision::Fp8Amax, 2, Some(3.5), None, None),
        ];
        let cells = summary_cells(&rows, true);
        assert_eq!(&cells[0][9..], ["recipe", "seed"]);
        let gaps: Vec<(&str, &str, &str)> = cells[1..]
            .iter()
            .map(|c| (c[9].as_str(), c[10].as_str(), c[5].as_str()))
            .collect();
        assert_eq!(
            gaps,
            [
                ("fp32", "1", "0"),
                ("fp32", "2", "0"),
                ("fp8-amax", "1", "0.25"),
                ("fp8-amax", "2", "0.5"),
            ]
        );
    }
}
