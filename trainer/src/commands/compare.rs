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
            resume: false,
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
