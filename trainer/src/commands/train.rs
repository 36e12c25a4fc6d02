//! `fp8-trainer train --config FILE [--set key=value ...] [--resume [DIR]] [--overwrite]`: loads the
//! job config and runs the job (see [`crate::train`]).

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use super::Done;
use crate::error::{Error, Exit};
use crate::job::load_job_config;
use crate::train::{run_training, Progress, ResumeFrom, TrainOptions, TrainOutcome};

/// Arguments of `train`.
#[derive(Clone, Debug, clap::Args)]
pub struct TrainArgs {
    /// Job config (JSON; see configs/).
    #[arg(long)]
    pub config: PathBuf,
    /// Override a config value: --set optimizer.lr=3e-4 (JSON value, else a string). Repeatable.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
    /// Continue the run from its newest checkpoint in runs/<name>/checkpoints, or from the
    /// one given (`--resume runs/<name>/checkpoints/step-150`; later ones are then in the way:
    /// add --overwrite to delete them).
    #[arg(long, value_name = "CHECKPOINT", num_args = 0..=1)]
    pub resume: Option<Option<PathBuf>>,
    /// Start over even if runs/<name> holds checkpoints (deletes them).
    #[arg(long)]
    pub overwrite: bool,
}

/// Runs `train`; `stop` is set by the binary's Ctrl-C handler; interrupted, it ends with
/// [`Exit::Interrupted`].
pub fn run_train(
    args: &TrainArgs,
    stop: Arc<AtomicBool>,
    progress: &mut dyn Progress,
) -> Result<Done, Error> {
    let resume = match &args.resume {
        None => None,
        Some(None) if args.overwrite => {
            return Err(Error::Argument {
                flag: "--overwrite",
                message: "--resume (the newest checkpoint) and --overwrite contradict each \
                          other; with a checkpoint (--resume DIR) --overwrite deletes the later \
                          ones"
                    .into(),
            })
        }
        Some(None) => Some(ResumeFrom::Latest),
        Some(Some(dir)) => Some(ResumeFrom::Checkpoint(dir.clone())),
    };
    let job = load_job_config(&args.config, &args.overrides)?;
    let options = TrainOptions {
        job,
        config_path: args.config.clone(),
        resume,
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
        exit: Exit::Interrupted,
        ..Done::default()
    })
}
