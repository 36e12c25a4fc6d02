//! `fp8-trainer compare --config FILE --precisions fp32,fp8-amax`: the loss-parity experiment.
//! Runs the job once per precision into `{out_dir}/{name}-{precision}/` (same seed, data and
//! schedule) and draws every curve into `{out_dir}/{name}-compare/loss.png` / `loss.svg`, with
//! `summary.csv`: per precision, the final and best validation loss, the mean training loss over
//! the last tenth of the steps, each one's gap to the first precision (the baseline), and the
//! median training throughput with its ratio to the baseline's.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use fp8_backend::Precision;

use crate::error::Error;
use crate::job::load_job_config;
use crate::train::plot::{curves_of, draw_loss, Curve};
use crate::train::run_dir::{read_metrics, MetricsRow};
use crate::train::{run_training, Progress, TrainOptions, TrainOutcome};

/// Arguments of `compare`.
#[derive(Clone, Debug, clap::Args)]
pub struct CompareArgs {
    /// Job config (JSON).
    #[arg(long)]
    pub config: PathBuf,
    /// Config overrides: key.sub=value.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
    /// Comma-separated precisions, e.g. fp32,fp8-amax (the first is the baseline).
    #[arg(long, value_delimiter = ',', default_value = "fp32,fp8-amax")]
    pub precisions: Vec<Precision>,
    /// Start each run over (deletes its checkpoints).
    #[arg(long)]
    pub overwrite: bool,
}

/// One precision's line of `summary.csv`.
#[derive(Clone, Debug, PartialEq)]
pub struct CompareRow {
    pub precision: Precision,
    /// Optimizer steps run.
    pub steps: u64,
    /// Validation loss at the last evaluation.
    pub final_val_loss: Option<f32>,
    /// Lowest validation loss of the run.
    pub best_val_loss: Option<f32>,
    /// Mean finite training loss over the last tenth of the steps (at least one step).
    pub final_train_loss: Option<f32>,
    /// Median training throughput (tokens per second of forward, backward and optimizer step).
    pub tokens_per_s: Option<f64>,
}

impl CompareRow {
    /// The summary of a run's metrics.
    pub fn of(precision: Precision, rows: &[MetricsRow]) -> Self {
        let vals: Vec<f32> = rows.iter().filter_map(|r| r.val_loss).collect();
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
            precision,
            tokens_per_s: speeds.get(speeds.len() / 2).copied(),
            steps: rows.iter().map(|r| r.step).max().unwrap_or(0),
            final_val_loss: vals.last().copied(),
            best_val_loss: vals
                .iter()
                .copied()
                .filter(|v| v.is_finite())
                .reduce(f32::min),
            final_train_loss: (!finite.is_empty())
                .then(|| (finite.iter().sum::<f64>() / finite.len() as f64) as f32),
        }
    }
}

/// What `compare` produced.
#[derive(Clone, Debug)]
pub struct CompareOutcome {
    /// `{out_dir}/{name}-compare`: loss.png, loss.svg, summary.csv.
    pub dir: PathBuf,
    /// One row per precision, the baseline (first) first.
    pub rows: Vec<CompareRow>,
}

/// Columns of `summary.csv`.
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

/// The cells of `summary.csv` for `rows`, with the gaps and speed ratios to the first row
/// (empty where a value is missing).
pub fn summary_cells(rows: &[CompareRow]) -> Vec<[String; 9]> {
    fn cell(v: Option<f32>) -> String {
        v.map(|v| v.to_string()).unwrap_or_default()
    }
    fn gap(v: Option<f32>, base: Option<f32>) -> String {
        match (v, base) {
            (Some(v), Some(b)) => (v - b).to_string(),
            _ => String::new(),
        }
    }
    let base = rows.first();
    rows.iter()
        .map(|r| {
            let ratio = match (r.tokens_per_s, base.and_then(|b| b.tokens_per_s)) {
                (Some(s), Some(b)) if b > 0.0 => format!("{:.3}", s / b),
                _ => String::new(),
            };
            [
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
            ]
        })
        .collect()
}

/// The table `compare` prints.
pub fn summary_table(outcome: &CompareOutcome) -> String {
    let fmt = |v: Option<f32>| v.map(|v| format!("{v:.4}")).unwrap_or_else(|| "-".into());
    let base = outcome.rows.first();
    let mut out = format!(
        "precision    final val   best val   train (last 10%)   tokens/s   val gap to {}\n",
        base.map(|b| b.precision.as_str()).unwrap_or("-")
    );
    for r in &outcome.rows {
        let gap = match (r.final_val_loss, base.and_then(|b| b.final_val_loss)) {
            (Some(v), Some(b)) => format!("{:+.4} ({:+.2}%)", v - b, 100.0 * (v - b) / b),
            _ => "-".into(),
        };
        let speed = r.tokens_per_s.map(|s| format!("{s:.0}"));
        let _ = writeln!(
            out,
            "{:<12} {:>9}  {:>9}  {:>17}  {:>9}   {gap}",
            r.precision.as_str(),
            fmt(r.final_val_loss),
            fmt(r.best_val_loss),
            fmt(r.final_train_loss),
            speed.unwrap_or_else(|| "-".into()),
        );
    }
    let _ = write!(
        out,
        "loss curves: {}/loss.png; summary: {}/summary.csv",
        outcome.dir.display(),
        outcome.dir.display()
    );
    out
}

/// Runs `compare`; returns the combined plot's folder and the summary, or `None` when
/// interrupted.
pub fn run_compare(
    args: &CompareArgs,
    stop: Arc<AtomicBool>,
    progress: &mut dyn Progress,
) -> Result<Option<CompareOutcome>, Error> {
    let base = load_job_config(&args.config, &args.overrides)?;
    let mut runs = Vec::new();
    for &precision in &args.precisions {
        let mut job = base.clone();
        job.name = format!("{}-{precision}", base.name);
        job.precision.mode = precision;
        let options = TrainOptions {
            job,
            config_path: args.config.clone(),
            resume: None,
            overwrite: args.overwrite,
            stop: stop.clone(),
        };
        match run_training(&options, progress)? {
            TrainOutcome::Finished { run_dir, .. } => runs.push((precision, run_dir)),
            TrainOutcome::Interrupted { .. } => return Ok(None),
        }
    }
    let metrics: Vec<(Precision, Vec<MetricsRow>)> = runs
        .iter()
        .map(|(p, dir)| Ok((*p, read_metrics(dir)?)))
        .collect::<Result<_, Error>>()?;
    let named: Vec<(String, Vec<(f64, f64)>)> = metrics
        .iter()
        .flat_map(|(p, rows)| curves_of(rows, &format!("{p} ")))
        .collect();
    let curves: Vec<Curve<'_>> = named
        .iter()
        .map(|(label, points)| Curve {
            label,
            points: points.clone(),
        })
        .collect();
    let out = base.out_dir.join(format!("{}-compare", base.name));
    std::fs::create_dir_all(&out).map_err(Error::io(&out))?;
    draw_loss(&out, &format!("{}: loss parity", base.name), &curves)?;
    let rows: Vec<CompareRow> = metrics.iter().map(|(p, m)| CompareRow::of(*p, m)).collect();
    let summary = out.join("summary.csv");
    let mut csv = csv::Writer::from_writer(Vec::new());
    let cells = std::iter::once(SUMMARY_HEADER.map(String::from)).chain(summary_cells(&rows));
    for record in cells {
        csv.write_record(&record).expect("writing to memory");
    }
    let bytes = csv.into_inner().expect("writing to memory");
    datasets::atomic::write_atomic(&summary, &bytes).map_err(Error::io(&summary))?;
    Ok(Some(CompareOutcome { dir: out, rows }))
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

    /// 30 steps: row 0 (val 5.0), validation at 10, 20, 30, a non-finite training loss in the
    /// last tenth, and speeds whose median differs from their mean.
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
            rows.push(row);
        }
        rows
    }

    #[test]
    fn compare_row_of_a_run() {
        let row = CompareRow::of(Precision::Fp8Amax, &thirty_steps());
        assert_eq!(row.precision, Precision::Fp8Amax);
        assert_eq!(row.steps, 30);
        assert_eq!(row.final_val_loss, Some(3.75), "the last evaluation");
        assert_eq!(
            row.best_val_loss,
            Some(3.5),
            "lowest finite, row 0 included"
        );
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
        let row = CompareRow::of(Precision::Fp32, &rows);
        assert_eq!(row.final_train_loss, Some(3.0));
        assert_eq!((row.final_val_loss, row.best_val_loss), (None, None));
        assert_eq!(row.tokens_per_s, Some(200.0), "median of three");
        // Every loss of the tail non-finite: no training loss; NaN speeds are not counted.
        let mut rows = rows;
        rows[2].train_loss = Some(f32::NAN);
        rows[2].tokens_per_s = Some(f64::NAN);
        let row = CompareRow::of(Precision::Fp32, &rows);
        assert_eq!(row.final_train_loss, None);
        assert_eq!(row.tokens_per_s, Some(200.0), "upper median of 100 and 200");
        assert_eq!(row.steps, 3);
        // No rows at all.
        let row = CompareRow::of(Precision::Fp32, &[]);
        assert_eq!(
            (row.steps, row.final_train_loss, row.tokens_per_s),
            (0, None, None)
        );
    }

    fn compare_row(
        precision: Precision,
        val: Option<f32>,
        train: Option<f32>,
        speed: Option<f64>,
    ) -> CompareRow {
        CompareRow {
            precision,
            steps: 30,
            final_val_loss: val,
            best_val_loss: val.map(|v| v - 0.25),
            final_train_loss: train,
            tokens_per_s: speed,
        }
    }

    #[test]
    fn summary_cells_gaps_and_speed_ratio_against_the_first_row() {
        let rows = [
            compare_row(Precision::Fp32, Some(3.5), Some(3.25), Some(2000.0)),
            compare_row(Precision::Fp8Amax, Some(3.75), Some(3.0), Some(1500.4)),
            compare_row(Precision::Fp8Cscale, None, Some(4.5), None),
        ];
        let cells = summary_cells(&rows);
        let expect = |cells: [&str; 9]| cells.map(String::from);
        assert_eq!(
            cells,
            vec![
                expect(["fp32", "30", "3.5", "3.25", "3.25", "0", "0", "2000", "1.000"]),
                // val gap 3.75 - 3.5, train gap 3.0 - 3.25, 1500.4 / 2000 = 0.7502.
                expect(["fp8-amax", "30", "3.75", "3.5", "3", "0.25", "-0.25", "1500", "0.750"]),
                expect(["fp8-cscale", "30", "", "", "4.5", "", "1.25", "", ""]),
            ]
        );
        // A baseline without a speed gives no ratios; one without a loss, no gaps.
        let rows = [
            compare_row(Precision::Fp32, None, None, None),
            compare_row(Precision::Fp8Amax, Some(3.75), Some(3.0), Some(1500.0)),
        ];
        let cells = summary_cells(&rows);
        assert_eq!(&cells[1][5..], ["", "", "1500", ""].map(String::from));
        assert!(summary_cells(&[]).is_empty());
    }
}
