//! `fp8-trainer compare --config FILE --precisions fp32,fp8-amax [--cscale-biases -4,0,4]
//! [--seeds 1,2,3]`: the loss-parity experiment and its sweeps. Each recipe (a precision, or
//! FP8-CSCALE at one bias) trains once per seed into `{out_dir}/{name}-{recipe}-s{seed}/`
//! (without `--seeds`: once, into `{name}-{recipe}/`); a finished run of the same config is
//! reused, an unfinished one continued ([`reuse`]). `{out_dir}/{name}-compare/` gets
//! `summary.csv` (one line per run), `report.json` and `report.md` (per recipe over its seeds,
//! [`report`]) and `loss.png` / `loss.svg` (the mean curves and each recipe's difference to the
//! baseline, the first precision).

pub mod curves;
pub mod markdown;
pub mod plan;
pub mod report;
pub mod reuse;
pub mod stats;
pub mod summary;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use crate::error::Error;
use crate::train::plot::draw_compare;
use crate::train::run_dir::{read_metrics, MetricsRow};
use crate::train::{run_training, Progress, ResumeFrom, TrainOptions, TrainOutcome};
use plan::Plan;
use report::{RecipeRuns, Report, SweepRun};
pub use reuse::RunAction;
pub use summary::{summary_cells, CompareRow, SUMMARY_HEADER, SWEEP_COLUMNS};

/// Arguments of `compare`.
#[derive(Clone, Debug, clap::Args)]
pub struct CompareArgs {
    /// Job config (JSON).
    #[arg(long)]
    pub config: PathBuf,
    /// Config overrides: key.sub=value.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
    /// Comma-separated precisions, e.g. fp32,fp8-amax (the first is the baseline); an FP8
    /// precision may name its format family: fp8-amax-ocp, fp8-delayed-graphcore.
    #[arg(long, value_delimiter = ',', default_value = "fp32,fp8-amax")]
    pub precisions: Vec<plan::RecipeSpec>,
    /// Comma-separated FP8-CSCALE biases, e.g. -4,0,4: each adds the recipe fp8-cscale-b{BIAS}
    /// (`precision.cscale_bias`).
    #[arg(
        long,
        value_delimiter = ',',
        allow_hyphen_values = true,
        value_name = "BIAS,...",
        value_parser = crate::commands::cscale_bias_arg
    )]
    pub cscale_biases: Vec<i32>,
    /// Comma-separated seeds, e.g. 1,2,3: every recipe runs once per seed, with `seed`,
    /// `data.seed` and `model.init_seed` set to it, into {name}-{recipe}-s{SEED} (default:
    /// once, with the config's own seeds, into {name}-{recipe}).
    #[arg(long, value_delimiter = ',', value_name = "SEED,...")]
    pub seeds: Vec<u64>,
    /// Draw the loss panel of the plot on a logarithmic axis.
    #[arg(long)]
    pub log_y: bool,
    /// Train every run from the start, even a finished one or one of another config (deletes
    /// its checkpoints).
    #[arg(long)]
    pub overwrite: bool,
}

/// What `compare` produced.
#[derive(Clone, Debug)]
pub struct CompareOutcome {
    /// `{out_dir}/{name}-compare`: loss.png, loss.svg, summary.csv, report.json, report.md.
    pub dir: PathBuf,
    /// One row per run, the baseline's runs first.
    pub rows: Vec<CompareRow>,
    /// Each run's directory and what was done with it, in the order of `rows`.
    pub runs: Vec<(PathBuf, RunAction)>,
    pub report: Report,
}

/// Runs `compare`; returns the summary and report, or `None` when interrupted.
pub fn run_compare(
    args: &CompareArgs,
    stop: Arc<AtomicBool>,
    progress: &mut dyn Progress,
) -> Result<Option<CompareOutcome>, Error> {
    let plan = Plan::new(
        &args.config,
        &args.overrides,
        &args.precisions,
        &args.cscale_biases,
        &args.seeds,
    )?;
    // Every run directory is looked at before anything trains: a run of another config stops
    // the sweep now, not after the hours of the runs before it.
    let actions: Vec<RunAction> = (plan.runs.iter())
        .map(|run| RunAction::decide(&run.job, &args.config, args.overwrite))
        .collect::<Result<_, _>>()?;
    let mut runs = Vec::new();
    for (run, action) in plan.runs.iter().zip(actions) {
        let dir = run.job.out_dir.join(&run.job.name);
        let resume = match action {
            RunAction::Reuse { step } => {
                log::info!(
                    "{}: finished ({step} steps) with this config: reused, not trained again",
                    dir.display()
                );
                runs.push((dir, action));
                continue;
            }
            RunAction::Resume { step, total } => {
                log::info!(
                    "{}: unfinished (step {step} of {total}): resuming",
                    dir.display()
                );
                Some(ResumeFrom::Latest)
            }
            RunAction::Train => None,
        };
        let options = TrainOptions {
            job: run.job.clone(),
            config_path: args.config.clone(),
            resume,
            overwrite: args.overwrite,
            stop: stop.clone(),
        };
        match run_training(&options, progress)? {
            TrainOutcome::Finished { .. } => runs.push((dir, action)),
            TrainOutcome::Interrupted { .. } => return Ok(None),
        }
    }
    let metrics: Vec<Vec<MetricsRow>> = (runs.iter())
        .map(|(dir, _)| read_metrics(dir))
        .collect::<Result<_, _>>()?;
    let rows: Vec<CompareRow> = (plan.runs.iter().zip(&metrics))
        .map(|(run, m)| {
            let recipe = &plan.recipes[run.recipe];
            CompareRow::of(recipe.label(), recipe.precision, run.seed, m)
        })
        .collect();
    let recipes: Vec<RecipeRuns<'_>> = (plan.recipes.iter().enumerate())
        .map(|(i, recipe)| RecipeRuns {
            recipe,
            runs: (plan.runs_of(i))
                .map(|(k, _)| SweepRun {
                    summary: &rows[k],
                    metrics: &metrics[k],
                })
                .collect(),
        })
        .collect();
    let report = Report::of(&recipes);
    let out = plan.compare_dir();
    std::fs::create_dir_all(&out).map_err(Error::io(&out))?;
    let title = format!("{}: loss parity", plan.base.name);
    draw_compare(&out, &title, &curves::recipe_curves(&recipes), args.log_y)?;
    let sweep = plan.seeded || !args.cscale_biases.is_empty();
    write_csv(&out.join("summary.csv"), &summary_cells(&rows, sweep))?;
    let json = serde_json::to_string_pretty(&report).expect("the report serialises") + "\n";
    write_file(&out.join("report.json"), json.as_bytes())?;
    let md = markdown::render(&title, &report);
    write_file(&out.join("report.md"), md.as_bytes())?;
    Ok(Some(CompareOutcome {
        dir: out,
        rows,
        runs,
        report,
    }))
}

/// Writes `bytes` to `path` atomically (a temporary beside it, synced, renamed over it).
fn write_file(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    datasets::atomic::write_atomic(path, bytes).map_err(Error::io(path))
}

fn write_csv(path: &Path, records: &[Vec<String>]) -> Result<(), Error> {
    let mut csv = csv::Writer::from_writer(Vec::new());
    for record in records {
        csv.write_record(record).expect("writing to memory");
    }
    write_file(path, &csv.into_inner().expect("writing to memory"))
}

/// The table `compare` prints: one line per run (its gap against the baseline run of the
/// same seed), the recipes over their seeds, which runs were reused or resumed, the files.
pub fn summary_table(outcome: &CompareOutcome) -> String {
    let fmt = |v: Option<f32>| v.map(|v| format!("{v:.4}")).unwrap_or_else(|| "-".into());
    let report = &outcome.report;
    let mut out = format!(
        "{:<20} {:>6}  final val   best val   train (last 10%)   tokens/s   val gap to {}\n",
        "recipe", "seed", report.baseline
    );
    for r in &outcome.rows {
        let base = outcome.rows.iter().find(|b| b.seed == r.seed);
        let gap = match (r.final_val_loss, base.and_then(|b| b.final_val_loss)) {
            (Some(v), Some(b)) => format!("{:+.4} ({:+.2}%)", v - b, 100.0 * (v - b) / b),
            _ => "-".into(),
        };
        let speed = r.tokens_per_s.map(|s| format!("{s:.0}"));
        let _ = writeln!(
            out,
            "{:<20} {:>6}  {:>9}  {:>9}  {:>17}  {:>9}   {gap}",
            r.recipe,
            r.seed,
            fmt(r.final_val_loss),
            fmt(r.best_val_loss),
            fmt(r.final_train_loss),
            speed.unwrap_or_else(|| "-".into()),
        );
    }
    if report.seeds.len() > 1 {
        let _ = writeln!(
            out,
            "\nover {} seeds: final val loss mean ± std, mean gap to {}, curves separate",
            report.seeds.len(),
            report.baseline
        );
        for r in &report.recipes {
            let loss = r.final_val_loss.as_ref().map_or("-".into(), |s| {
                format!("{:.4} ± {:.4}", s.mean, s.std.unwrap_or(0.0))
            });
            let gap = match (r.val_gap, r.val_gap_relative) {
                (Some(g), Some(rel)) => format!("{g:+.4} ({:+.2}%)", 100.0 * rel),
                _ => "-".into(),
            };
            let _ = writeln!(
                out,
                "{:<20} {loss:>17}  {gap:>19}  {}",
                r.recipe, r.separation
            );
        }
    }
    for what in ["reused", "resumed"] {
        let named: Vec<String> = (outcome.runs.iter())
            .filter(|(_, action)| action.verb() == Some(what))
            .map(|(dir, _)| dir.display().to_string())
            .collect();
        if !named.is_empty() {
            let _ = writeln!(out, "{what} {} run(s): {}", named.len(), named.join(", "));
        }
    }
    let dir = outcome.dir.display();
    let _ = write!(
        out,
        "loss curves: {dir}/loss.png; summary: {dir}/summary.csv; report: {dir}/report.md, \
         {dir}/report.json"
    );
    out
}
