//! `fp8-trainer train --config FILE [--set key=value ...] [--resume | --overwrite]`: loads the
//! job config and runs the job (see [`crate::train`]).

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use super::Done;
use crate::error::Error;
use crate::job::load_job_config;
use crate::train::{run_training, Progress, TrainOptions, TrainOutcome};

/// Arguments of `train`.
#[derive(Clone, Debug, clap::Args)]
pub struct TrainArgs {
    /// Job config (JSON; see configs/).
    #[arg(long)]
    pub config: PathBuf,
    /// Override a config value: --set optimizer.lr=3e-4 (JSON value, else a string). Repeatable.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
    /// Continue from the newest checkpoint in runs/<name>/checkpoints.
    #[arg(long, conflicts_with = "overwrite")]
    pub resume: bool,
    /// Start over even if runs/<name> holds checkpoints (deletes them).
    #[arg(long)]
    pub overwrite: bool,
}

/// Runs `train`; `stop` is set by the binary's Ctrl-C handler. Exit code 130 when interrupted.
pub fn run_train(
    args: &TrainArgs,
    stop: Arc<AtomicBool>,
    progress: &mut dyn Progress,
) -> Result<Done, Error> {
    let job = load_job_config(&args.config, &args.overrides)?;
    let options = TrainOptions {
        job,
        config_path: args.config.clone(),
        resume: args.resume,
        overwrite: args.overwrite,
        stop,
    };
    let note = match run_training(&options, progress)? {
        TrainOutcome::Finished { .. } => return Ok(Done::default()),
        TrainOutcome::Interrupted { step: 0, .. } => {
            "interrupted before the first step; nothing saved".to_string()
        }
        TrainOutcome::Interrupted { step, run_dir } => format!(
            "interrupted at step {step}; checkpoint saved in {}/checkpoints (continue with --resume)",
            run_dir.display()
        ),
    };
    Ok(Done {
        note: Some(note),
        exit_code: 130,
        ..Done::default()
    })
}
