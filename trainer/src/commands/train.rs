//! `fp8-trainer train --config FILE [--set key=value ...] [--resume]`: loads the job config and
//! runs the job (see [`crate::train`]).

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use crate::job::load_job_config;
use crate::train::{run_training, Progress, TrainError, TrainOptions, TrainOutcome};

/// Arguments of `train`.
#[derive(Clone, Debug)]
pub struct TrainArgs {
    /// The job config (JSON).
    pub config: PathBuf,
    /// `key.sub=value` overrides, applied in order.
    pub overrides: Vec<String>,
    /// Continue from the newest checkpoint of the run.
    pub resume: bool,
    /// Start over, deleting the run's checkpoints.
    pub overwrite: bool,
}

/// Runs `train`; `stop` is set by the binary's Ctrl-C handler.
pub fn run_train(
    args: &TrainArgs,
    stop: Arc<AtomicBool>,
    progress: &mut dyn Progress,
) -> Result<TrainOutcome, TrainError> {
    let job = load_job_config(&args.config, &args.overrides)?;
    run_training(
        &TrainOptions {
            job,
            config_path: args.config.clone(),
            resume: args.resume,
            overwrite: args.overwrite,
            stop,
        },
        progress,
    )
}
