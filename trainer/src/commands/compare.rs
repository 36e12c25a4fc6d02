//! `fp8-trainer compare --config FILE --precisions fp32,fp8-amax`: the loss-parity experiment.
//! Runs the job once per precision into `{out_dir}/{name}-{precision}/` (same seed, data and
//! schedule) and draws every curve into `{out_dir}/{name}-compare/loss.png` / `loss.svg`.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use crate::job::load_job_config;
use crate::precision::Precision;
use crate::train::plot::{curves_of, draw_loss, Curve};
use crate::train::run_dir::read_metrics;
use crate::train::{run_training, Progress, TrainError, TrainOptions, TrainOutcome};

/// Arguments of `compare`.
#[derive(Clone, Debug)]
pub struct CompareArgs {
    pub config: PathBuf,
    pub overrides: Vec<String>,
    pub precisions: Vec<Precision>,
    /// Start each run over (deleting its checkpoints).
    pub overwrite: bool,
}

/// Runs `compare`; returns the folder of the combined plot, or `None` when interrupted.
pub fn run_compare(
    args: &CompareArgs,
    stop: Arc<AtomicBool>,
    progress: &mut dyn Progress,
) -> Result<Option<PathBuf>, TrainError> {
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
    let named: Vec<(String, Vec<(f64, f64)>)> = runs
        .iter()
        .flat_map(|(p, dir)| curves_of(&read_metrics(dir), &format!("{p} ")))
        .collect();
    let curves: Vec<Curve<'_>> = named
        .iter()
        .map(|(label, points)| Curve {
            label,
            points: points.clone(),
        })
        .collect();
    let out = base.out_dir.join(format!("{}-compare", base.name));
    std::fs::create_dir_all(&out).map_err(TrainError::io(&out))?;
    draw_loss(&out, &format!("{}: loss parity", base.name), &curves).map_err(TrainError::Plot)?;
    Ok(Some(out))
}
