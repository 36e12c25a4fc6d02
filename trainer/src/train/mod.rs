//! `fp8-trainer train`: a config-driven fine-tuning job (issue 5), read top to bottom like
//! nanoGPT's `train.py`: learning rate, forward/backward with accumulation, non-finite check,
//! clip, AdamW step, evaluate, log, checkpoint, stop.
//!
//! Every precision trains on `Autodiff<Fp8<B>>` (FP8 off for `fp32`), `B` the job's device
//! backend (ndarray; wgpu and cuda behind cargo features), with f32 master weights and optimizer
//! state on the host. A resumed run continues bit-exactly on the CPU: model and moments are
//! saved as f32, the data position and step are restored, and the backend RNG (dropout) is
//! reseeded with `seed + step` before every step.

pub mod checkpoints;
pub mod optimizer;
pub mod plot;
pub mod run_dir;
pub mod schedule;
pub mod setup;
pub mod step;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use burn::tensor::backend::Backend;

use crate::checkpoint::{load_checkpoint, CheckpointError};
use crate::job::{Device, JobConfig, JobConfigError, NonFinitePolicy};
use checkpoints::{latest_checkpoint, load_training_state, save_training_checkpoint, TrainerState};
use optimizer::{AdamW, AdamWStep};
use run_dir::{MetricsRow, RunDir};
pub use setup::{TrainBackend, INNER_DEVICE};

/// Why a job failed; [`TrainError::exit_code`]: 2 for bad input, 1 otherwise.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Config(#[from] JobConfigError),
    #[error("{config}: field `{field}`: {message}")]
    Field {
        config: PathBuf,
        field: String,
        message: String,
    },
    #[error("{config}: field `data`: {source}")]
    Data {
        config: PathBuf,
        source: datasets::DataError,
    },
    #[error("{config}: field `tokenizer`: {source}")]
    Tokenizer {
        config: PathBuf,
        source: datasets::TokenizerError,
    },
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: bad training state: {message}")]
    BadState { path: PathBuf, message: String },
    #[error("{0}")]
    RunDir(String),
    #[error("{path}: {message}")]
    BadFile { path: PathBuf, message: String },
    #[error("stopped at step {step}: {reason} (non_finite policy `stop`; the last good checkpoint is kept)")]
    NonFinite { step: u64, reason: String },
    #[error("refusing to write checkpoint {step}: parameter `{param}` is not finite")]
    NonFiniteCheckpoint { step: u64, param: String },
    #[error("device `{name}` is not available in this build: rebuild with `--features trainer/{name}` (or use \"cpu\")", name = .0.name())]
    DeviceUnavailable(Device),
    #[error("cannot draw the loss plot: {0}")]
    Plot(String),
}

impl TrainError {
    /// 2 for bad input (config, data, checkpoint, resume state), 1 for anything else.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Config(_) | Self::Field { .. } | Self::Data { .. } | Self::Tokenizer { .. } => 2,
            Self::BadState { .. }
            | Self::BadFile { .. }
            | Self::RunDir(_)
            | Self::DeviceUnavailable(_) => 2,
            Self::Checkpoint(e) if e.is_bad_input() => 2,
            _ => 1,
        }
    }

    pub(crate) fn io(path: impl AsRef<Path>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.as_ref().to_path_buf();
        move |source| Self::Io { path, source }
    }
}

/// What the binary shows while a job runs (a progress bar, or plain lines off a terminal).
pub trait Progress {
    /// The job starts at `first_step` of `total_steps`.
    fn start(&mut self, _first_step: u64, _total_steps: u64) {}
    /// After every step.
    fn step(&mut self, _row: &MetricsRow) {}
    /// A log line (also written to log.txt).
    fn message(&mut self, _line: &str) {}
    /// The job ended.
    fn finish(&mut self) {}
}

/// A `Progress` that shows nothing.
pub struct Silent;
impl Progress for Silent {}

/// How to run a job.
pub struct TrainOptions {
    pub job: JobConfig,
    /// The config file (for error messages).
    pub config_path: PathBuf,
    /// Continue from the newest checkpoint of the run.
    pub resume: bool,
    /// Start over even if the run directory holds checkpoints (they are deleted).
    pub overwrite: bool,
    /// Set by the Ctrl-C handler: save a checkpoint after the current step and return.
    pub stop: Arc<AtomicBool>,
}

/// How a job ended.
#[derive(Debug, Clone, PartialEq)]
pub enum TrainOutcome {
    /// All steps done.
    Finished { step: u64, run_dir: PathBuf },
    /// Stopped by Ctrl-C after a checkpoint.
    Interrupted { step: u64, run_dir: PathBuf },
}

/// Runs a job on the device its config names.
pub fn run_training(
    opts: &TrainOptions,
    progress: &mut dyn Progress,
) -> Result<TrainOutcome, TrainError> {
    setup::check_device(&opts.job, &opts.config_path)?;
    on_device!(opts.job.device, run_on(opts, progress))
}

/// Runs a job on `device` of the inner backend `B`.
fn run_on<B: fp8_backend::Fp8Kernels>(
    opts: &TrainOptions,
    progress: &mut dyn Progress,
    device: B::Device,
) -> Result<TrainOutcome, TrainError> {
    let job = &opts.job;
    let root = job.out_dir.join(&job.name);
    let ckpt_root = root.join("checkpoints");
    let data = setup::open_data(job, &opts.config_path)?;
    let resume_from = resume_point(&ckpt_root, opts)?;
    let mut model = match &resume_from {
        Some((_, dir)) => {
            let config = setup::model_config_of_checkpoint(dir)?;
            setup::check_model_fits(job, &opts.config_path, &config, data.tokenizer.vocab_size())?;
            load_checkpoint::<TrainBackend<B>>(dir, &setup::model_options(job), &device)?
        }
        None => {
            setup::build_model::<B>(job, &opts.config_path, data.tokenizer.vocab_size(), &device)?
        }
    };
    let mut optimizer = AdamW::new(step::host_params(&model));
    let mut loader = data
        .dataset
        .train_loader(job.batch_size)
        .map_err(data.err())?;
    let validation = data
        .dataset
        .validation_loader(job.batch_size)
        .map_err(data.err())?;
    let total_steps = setup::total_steps(job, &loader);

    let mut state = TrainerState {
        step: 0,
        tokens: 0,
        skipped_steps: 0,
        adam_t: 0,
        elapsed_s: 0.0,
        loader: loader.state(),
        seed: job.seed,
    };
    if let Some((_, dir)) = &resume_from {
        state = load_training_state(dir, &mut optimizer)?;
        loader.restore(&state.loader).map_err(data.err())?;
    }
    let mut run = RunDir::open(&root, resume_from.as_ref().map(|(s, _)| *s))?;
    let changed = run_dir::write_resolved_config(&root, job)?;

    let policy = job.precision.policy();
    let fp8_layers = model.fp8_layers();
    let say =
        |run: &mut RunDir, progress: &mut dyn Progress, line: String| -> Result<(), TrainError> {
            progress.message(&line);
            run.log(&line)
        };
    let tokens_per_step = (job.batch_size * job.grad_accum * job.data.seq_len) as u64;
    say(&mut run, progress, format!(
        "{} {}: {} parameters, precision {} on {}, {} FP8 layers, {total_steps} steps of {tokens_per_step} tokens ({} x {} x {}), {} training tokens",
        if resume_from.is_some() { "resuming" } else { "starting" },
        job.name,
        model.config().num_params(),
        job.precision.mode,
        job.device.name(),
        fp8_layers.len(),
        job.batch_size, job.grad_accum, job.data.seq_len,
        data.dataset.num_train_tokens(),
    ))?;
    if let Some((step, dir)) = &resume_from {
        say(
            &mut run,
            progress,
            format!("resumed from {} (step {step})", dir.display()),
        )?;
        for change in &changed {
            say(
                &mut run,
                progress,
                format!("config changed since the last run: {change}"),
            )?;
        }
    }

    let started = Instant::now();
    let inject_nan_at = std::env::var(step::INJECT_NAN_ENV)
        .ok()
        .and_then(|v| v.parse::<u64>().ok());

    if state.step == 0 {
        if let Some(val) = &validation {
            let val_loss = step::evaluate(&model, val, job.eval_batches, policy, &device);
            run.metrics_row(MetricsRow {
                val_loss,
                ..MetricsRow::default()
            })?;
            say(
                &mut run,
                progress,
                format!("step 0: val loss {}", fmt_loss(val_loss)),
            )?;
        }
    }
    progress.start(state.step, total_steps);
    let mut last_checkpoint = resume_from.as_ref().map(|(s, _)| *s);
    let base_elapsed = state.elapsed_s;

    while state.step < total_steps {
        if opts.stop.load(Ordering::SeqCst) {
            say(
                &mut run,
                progress,
                format!("interrupted at step {}: saving a checkpoint", state.step),
            )?;
            if last_checkpoint != Some(state.step) && state.step > 0 {
                let elapsed = base_elapsed + started.elapsed().as_secs_f64();
                save(
                    &ckpt_root, &model, &optimizer, &state, &loader, job, elapsed,
                )?;
            }
            draw_plot(&run, job)?;
            progress.finish();
            return Ok(TrainOutcome::Interrupted {
                step: state.step,
                run_dir: root,
            });
        }
        // 1. learning rate
        let lr = schedule::learning_rate(&job.schedule, job.optimizer.lr, state.step, total_steps);
        // 2. forward/backward with accumulation (RNG reseeded so a resumed step draws the same masks)
        TrainBackend::<B>::seed(&device, job.seed.wrapping_add(state.step));
        let sample_stats = job.precision.stats_every > 0
            && (state.step + 1).is_multiple_of(job.precision.stats_every);
        let step_start = Instant::now();
        let mut out = step::forward_backward(
            &model,
            &mut loader,
            job.grad_accum,
            policy.with_stats(sample_stats && policy.is_on()),
            inject_nan_at == Some(state.step + 1),
            &device,
        );
        state.step += 1;
        state.tokens += out.tokens;
        // 3. non-finite check, clip, step
        let grad_norm = step::global_norm(&out.grads);
        let reason = non_finite_reason(&out, grad_norm, &optimizer, &fp8_layers);
        match (reason, job.non_finite) {
            (Some(reason), NonFinitePolicy::Stop) => {
                run.log(&format!("step {}: {reason}; stopping", state.step))?;
                progress.finish();
                return Err(TrainError::NonFinite {
                    step: state.step,
                    reason,
                });
            }
            (Some(reason), NonFinitePolicy::Skip) => {
                state.skipped_steps += 1;
                say(
                    &mut run,
                    progress,
                    format!(
                        "step {}: {reason}; step skipped ({} so far)",
                        state.step, state.skipped_steps
                    ),
                )?;
            }
            (None, _) => {
                step::clip(&mut out.grads, grad_norm, job.grad_clip);
                let o = &job.optimizer;
                optimizer.step(
                    &out.grads,
                    AdamWStep {
                        lr: lr as f32,
                        beta1: o.betas.0 as f32,
                        beta2: o.betas.1 as f32,
                        eps: o.eps as f32,
                        weight_decay: o.weight_decay as f32,
                    },
                );
                model = step::load_params(model, &optimizer, &device);
            }
        }
        let step_time = step_start.elapsed().as_secs_f64();
        if sample_stats {
            run.fp8_rows(&fp8_stat_rows(state.step, &out.report, &fp8_layers))?;
        }
        // 4. evaluate, log
        let eval_now = state.step == total_steps
            || (job.eval_every > 0 && state.step.is_multiple_of(job.eval_every));
        let val_loss = match (&validation, eval_now) {
            (Some(val), true) => step::evaluate(&model, val, job.eval_batches, policy, &device),
            _ => None,
        };
        let row = MetricsRow {
            step: state.step,
            tokens: state.tokens,
            train_loss: Some(out.loss),
            val_loss,
            lr: Some(lr),
            grad_norm: Some(grad_norm),
            tokens_per_s: Some(out.tokens as f64 / step_time.max(1e-9)),
            elapsed_s: base_elapsed + started.elapsed().as_secs_f64(),
        };
        run.metrics_row(row.clone())?;
        progress.step(&row);
        if state.step.is_multiple_of(job.log_every)
            || val_loss.is_some()
            || state.step == total_steps
        {
            let mut line = format!(
                "step {}/{total_steps}: loss {} | lr {lr:.3e} | grad norm {grad_norm:.3} | {:.0} tok/s | {:.1} s",
                state.step, fmt_loss(Some(out.loss)), row.tokens_per_s.unwrap_or(0.0), row.elapsed_s
            );
            if let Some(v) = val_loss {
                line += &format!(" | val loss {}", fmt_loss(Some(v)));
            }
            say(&mut run, progress, line)?;
        }
        if val_loss.is_some() {
            draw_plot(&run, job)?;
        }
        // 5. checkpoint
        let checkpoint_now = state.step == total_steps
            || (job.checkpoint_every > 0 && state.step.is_multiple_of(job.checkpoint_every));
        if checkpoint_now {
            let elapsed = base_elapsed + started.elapsed().as_secs_f64();
            let dir = save(
                &ckpt_root, &model, &optimizer, &state, &loader, job, elapsed,
            )?;
            last_checkpoint = Some(state.step);
            run.log(&format!(
                "step {}: checkpoint {}",
                state.step,
                dir.display()
            ))?;
        }
    }
    draw_plot(&run, job)?;
    say(
        &mut run,
        progress,
        format!(
            "done: {} steps ({} skipped), {:.1} s; run directory {}",
            state.step,
            state.skipped_steps,
            base_elapsed + started.elapsed().as_secs_f64(),
            root.display()
        ),
    )?;
    progress.finish();
    Ok(TrainOutcome::Finished {
        step: state.step,
        run_dir: root,
    })
}

/// The checkpoint to resume from (with `--resume`), after checking the run directory.
fn resume_point(
    ckpt_root: &Path,
    opts: &TrainOptions,
) -> Result<Option<(u64, PathBuf)>, TrainError> {
    let latest = latest_checkpoint(ckpt_root);
    if opts.resume {
        checkpoints::remove_stale_temporaries(ckpt_root)?;
        return latest.map(Some).ok_or_else(|| {
            TrainError::RunDir(format!(
                "--resume: {} holds no complete checkpoint to resume from",
                ckpt_root.display()
            ))
        });
    }
    if latest.is_some() {
        if !opts.overwrite {
            return Err(TrainError::RunDir(format!(
                "{} already holds checkpoints: pass --resume to continue the run, or --overwrite to start over (deletes them)",
                ckpt_root.display()
            )));
        }
        std::fs::remove_dir_all(ckpt_root).map_err(TrainError::io(ckpt_root))?;
    }
    Ok(None)
}

/// Writes the checkpoint of the current step: the model, AdamW, the data position and the
/// wall time so far.
fn save<B: Backend>(
    ckpt_root: &Path,
    model: &crate::model::Gpt2<B>,
    optimizer: &AdamW,
    state: &TrainerState,
    loader: &datasets::DataLoader,
    job: &JobConfig,
    elapsed_s: f64,
) -> Result<PathBuf, TrainError> {
    let state = TrainerState {
        loader: loader.state(),
        adam_t: optimizer.t,
        elapsed_s,
        ..state.clone()
    };
    save_training_checkpoint(ckpt_root, model, optimizer, &state, job.keep_checkpoints)
}

fn draw_plot(run: &RunDir, job: &JobConfig) -> Result<(), TrainError> {
    let curves = plot::curves_of(&run.rows, "");
    let curves: Vec<plot::Curve<'_>> = curves
        .iter()
        .map(|(label, points)| plot::Curve {
            label,
            points: points.clone(),
        })
        .collect();
    let title = format!("{} ({})", job.name, job.precision.mode);
    plot::draw_loss(&run.root, &title, &curves).map_err(TrainError::Plot)
}

/// Why this step is not usable, naming the layer where one is known.
fn non_finite_reason(
    out: &step::StepGrads,
    grad_norm: f64,
    optimizer: &AdamW,
    fp8_layers: &[String],
) -> Option<String> {
    let mut reasons = Vec::new();
    if !out.loss.is_finite() {
        reasons.push(format!("non-finite loss ({})", out.loss));
    }
    if let Some(e) = out.report.non_finite.first() {
        let layer = fp8_layers
            .get(e.layer as usize)
            .map(String::as_str)
            .unwrap_or("?");
        reasons.push(format!(
            "non-finite FP8 amax ({}) in the {} of layer {layer} ({:?}, micro-batch {})",
            e.amax,
            e.role.name(),
            e.op,
            e.pass
        ));
    }
    if !grad_norm.is_finite() {
        let name = optimizer
            .params
            .iter()
            .zip(&out.grads)
            .find(|(_, g)| g.as_ref().is_some_and(|g| g.iter().any(|x| !x.is_finite())))
            .map(|(p, _)| p.name.as_str())
            .unwrap_or("?");
        reasons.push(format!("non-finite gradient (first in `{name}`)"));
    }
    (!reasons.is_empty()).then(|| reasons.join("; "))
}

/// `fp8_stats.csv` rows of one step: one per (layer, role), from the first micro-batch
/// (the weight and activation stats of a layer are the same in its forward and backward GEMMs).
fn fp8_stat_rows(step: u64, report: &fp8_backend::Fp8Report, fp8_layers: &[String]) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    let mut rows = Vec::new();
    for r in report.records.iter().filter(|r| r.pass == 0) {
        if !seen.insert((r.layer, r.role.name())) {
            continue;
        }
        let layer = fp8_layers
            .get(r.layer as usize)
            .map(String::as_str)
            .unwrap_or("?");
        rows.push(format!(
            "{step},{layer},{},{},{},{},{}",
            r.role.name(),
            r.stats.amax,
            r.stats.bias,
            r.stats.underflow_frac,
            r.stats.saturated_frac
        ));
    }
    rows
}

fn fmt_loss(loss: Option<f32>) -> String {
    loss.map(|l| format!("{l:.4}"))
        .unwrap_or_else(|| "-".into())
}
