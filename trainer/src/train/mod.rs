//! `fp8-trainer train`: a config-driven fine-tuning job. [`run_on`] is the loop and reads like
//! nanoGPT's `train.py`: learning rate, forward/backward with accumulation, non-finite check,
//! clip, AdamW step, evaluate, log, checkpoint, stop. Each phase is a short method of [`Run`],
//! which holds everything a running job has.
//!
//! Starting a run is `open.rs` ([`Run::open`]).
//!
//! Every precision trains on `Autodiff<Fp8<B>>` (FP8 off for `fp32`), `B` the job's device
//! backend (flex on the CPU, ndarray; wgpu and cuda behind cargo features), with f32 master
//! weights and AdamW's moments on the device. A resumed run continues bit-exactly on the CPU:
//! model and moments are saved as f32, the data position and step are restored, and the
//! backend RNG (dropout) is reseeded with `seed + step` before every step.

pub mod checkpoints;
pub mod lock;
mod open;
pub mod optimizer;
pub mod parallel;
pub mod plot;
pub mod run_dir;
pub mod schedule;
pub mod step;
pub mod telemetry;

use std::cell::Cell;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use burn::module::AutodiffModule;
use burn::tensor::backend::Backend;
use datasets::{CheckpointFile, ClassificationSet, DataLoader};
use fp8_backend::{Fp8, Fp8Report};

use crate::device::{DeviceBackend, TrainBackend};
use crate::error::Error;
use crate::job::{check, BestMetric, JobConfig, NonFinitePolicy};
use crate::model::loss::{mean_loss, row_scores};
use crate::model::Model;
pub use checkpoints::ResumeFrom;
use checkpoints::{save_best_checkpoint, save_training_checkpoint, TrainerState};
use lock::RunLock;
use optimizer::{AdamW, AdamWStep};
use parallel::Peers;
use run_dir::{Fp8StatsRow, MetricsRow, RunDir};
use step::{StepGrads, StepOptions};
use telemetry::Fp8Warnings;

/// What the binary shows while a job runs (a progress bar, or nothing); log lines go through
/// the `log` crate (see [`crate::logging`]).
pub trait Progress {
    /// The job starts at `first_step` of `total_steps`.
    fn start(&mut self, _first_step: u64, _total_steps: u64) {}
    /// After every step.
    fn step(&mut self, _row: &MetricsRow) {}
    /// The job ended (also after an error).
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
    /// Continue the run from a checkpoint (`None`: start it).
    pub resume: Option<ResumeFrom>,
    /// Start over even if the run directory holds checkpoints (they are deleted).
    pub overwrite: bool,
    /// Set by the Ctrl-C handler: save a checkpoint after the current step and return.
    pub stop: Arc<AtomicBool>,
}

/// One evaluation: validation loss, and accuracy on classification data.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Evaluation {
    loss: f32,
    accuracy: Option<f64>,
}

impl Evaluation {
    /// `val loss 2.3456` (`| val accuracy 0.8125`).
    fn describe(&self) -> String {
        let mut text = format!("val loss {}", fmt_loss(self.loss));
        if let Some(a) = self.accuracy {
            text += &format!(" | val accuracy {a:.4}");
        }
        text
    }
}

/// How a job ended.
#[derive(Debug, Clone, PartialEq)]
pub enum TrainOutcome {
    /// All steps done (or early stopping ended the run at `step`).
    Finished { step: u64, run_dir: PathBuf },
    /// Stopped by Ctrl-C after a checkpoint.
    Interrupted { step: u64, run_dir: PathBuf },
}

/// True while a job is being prepared (`Run::open` up to the first change to its run
/// directory: the data read and tokenized, the model built or loaded; and again while its
/// data-parallel peers and nodes join, up to `nodes.timeout_s`): nothing is at stake yet, so the first Ctrl-C, SIGTERM or SIGHUP
/// ends the process at once instead of waiting for the phase to end (a tokenizer pass over a
/// large corpus, a slow chat template). Stopping there is what a kill would do, and the only
/// writes of that phase (token caches) are atomic renames; the run lock goes with the process.
static PREPARING: AtomicBool = AtomicBool::new(false);

/// Whether the running job is being prepared (see [`PREPARING`]); the signal handler asks.
pub fn preparing() -> bool {
    PREPARING.load(Ordering::SeqCst)
}

/// Clears [`PREPARING`] when the preparation ends (dropped), on every path.
pub(crate) struct Preparing;

impl Preparing {
    pub(crate) fn start() -> Self {
        PREPARING.store(true, Ordering::SeqCst);
        Preparing
    }
}

impl Drop for Preparing {
    fn drop(&mut self) {
        PREPARING.store(false, Ordering::SeqCst);
    }
}

/// Runs a job on the device its config names.
pub fn run_training(
    opts: &TrainOptions,
    progress: &mut dyn Progress,
) -> Result<TrainOutcome, Error> {
    check::device(&opts.job, &opts.config_path)?;
    let outcome = on_device!(opts.job.device, run_on(opts, progress));
    progress.finish();
    outcome
}

/// The training loop, on `device` of the inner backend `B` (or the job's `devices`).
fn run_on<B: DeviceBackend>(
    opts: &TrainOptions,
    progress: &mut dyn Progress,
    device: B::Device,
) -> Result<TrainOutcome, Error>
where
    B::Device: Send + Sync,
{
    let devices: Vec<B::Device> = match opts.job.devices.as_slice() {
        [] => vec![device],
        slots => slots.iter().map(|s| B::device_at(s.index)).collect(),
    };
    let mut run = Run::<B>::open(opts, devices)?;
    if !run.evaluate_before_training()? {
        return run.interrupt();
    }
    progress.start(run.state.step, run.total_steps);
    while run.state.step < run.total_steps && !run.state.stopped_early {
        if opts.stop.load(Ordering::SeqCst) {
            return run.interrupt();
        }
        // 1. learning rate
        let lr = run.learning_rate();
        // 2. forward/backward with gradient accumulation
        let started = Instant::now();
        let mut out = run.forward_backward();
        // 3. non-finite check; 4. clip and 5. AdamW step (the clipping factor is folded into
        // the update)
        let grad_norm = out.global_norm();
        match (run.non_finite_reason(&out, grad_norm), run.job.non_finite) {
            (Some(reason), NonFinitePolicy::Stop) => return Err(run.stop(reason)),
            (Some(reason), NonFinitePolicy::Skip) => run.skip(&reason),
            (None, _) => {
                let grads = std::mem::take(&mut out.grads);
                run.optimizer_step(grads, step::clip_factor(grad_norm, run.job.grad_clip), lr);
            }
        }
        let step_time = started.elapsed().as_secs_f64();
        run.step_seconds += step_time;
        // 6. evaluate and log
        run.record_fp8_stats(&out.report)?;
        let eval = run.evaluate_if_due();
        let row = run.log_step(&out, lr, grad_norm, step_time, eval)?;
        progress.step(&row);
        // 7. checkpoint (the best one after an improving evaluation); stop early
        run.track_best(eval)?;
        run.checkpoint_if_due()?;
        if run.state.stopped_early {
            break;
        }
    }
    run.finish()
}

/// Everything a running job holds.
struct Run<'a, B: DeviceBackend> {
    job: &'a JobConfig,
    /// Peer 0's device.
    device: B::Device,
    /// The other data-parallel peers (`devices` with more than one entry).
    peers: Option<Peers>,
    /// Time in training steps in this process (for the collective calls' share).
    step_seconds: f64,
    /// Always `Some` between phases (taken while AdamW updates the parameters in place).
    model: Option<Model<TrainBackend<B>>>,
    /// Moments on the device of the model (the inner backend of its autodiff backend).
    optimizer: AdamW<Fp8<B>>,
    loader: DataLoader,
    validation: Option<DataLoader>,
    /// Classification data: the validation examples scored for accuracy at evaluations.
    classification: Option<ClassificationSet>,
    /// Step, tokens, skipped steps: what a checkpoint restores.
    state: TrainerState,
    dir: RunDir,
    total_steps: u64,
    /// Wall time of the run before this process, and when this process started training.
    earlier_elapsed: f64,
    started: Instant,
    last_checkpoint: Option<u64>,
    /// What every checkpoint holds besides the model and the training state: the tokenizer's
    /// files and `generation_config.json`, so the folder is self-contained.
    checkpoint_files: Vec<CheckpointFile>,
    /// Tensors over an FP8 underflow or saturation threshold (statistics steps).
    fp8_warnings: Fp8Warnings,
    /// Test-only non-finite injection (see [`step::INJECT_NAN_ENV`]).
    inject_at: Option<(u64, f32)>,
    /// Set by the signal handler: evaluations stop between batches.
    stop: &'a AtomicBool,
    /// This job's hold on the run directory, for as long as the run lives.
    _lock: RunLock,
}

impl<B: DeviceBackend> Run<'_, B>
where
    B::Device: Send + Sync,
{
    /// A fresh run's step 0: the validation loss of the initial model. A run resumed from a
    /// checkpoint written while its step's evaluation was interrupted does that evaluation now,
    /// so its metrics read as if it had never stopped. False when interrupted.
    fn evaluate_before_training(&mut self) -> Result<bool, Error> {
        if self.state.eval_pending {
            let eval = self.evaluate();
            if self.stopping() {
                return Ok(false);
            }
            self.state.eval_pending = false;
            let Some(eval) = eval else {
                return Ok(true);
            };
            let step = self.state.step;
            self.dir.set_val_loss(step, eval.loss, eval.accuracy)?;
            log::info!(
                "step {step}: {} (the evaluation interrupted before)",
                eval.describe()
            );
            self.draw_plot()?;
            return Ok(true);
        }
        if self.state.step > 0 || self.validation.is_none() {
            return Ok(true);
        }
        let eval = self.evaluate();
        if self.stopping() {
            return Ok(false);
        }
        self.dir.metrics_row(MetricsRow {
            val_loss: eval.map(|e| e.loss),
            val_accuracy: eval.and_then(|e| e.accuracy),
            ..MetricsRow::default()
        })?;
        let said = eval.map_or("val loss -".to_string(), |e| e.describe());
        log::info!("step 0: {said}");
        Ok(true)
    }

    /// Whether Ctrl-C, SIGTERM or SIGHUP asked the job to stop.
    fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    fn learning_rate(&self) -> f64 {
        let (schedule, lr) = (&self.job.schedule, self.job.optimizer.lr);
        schedule::learning_rate(schedule, lr, self.state.step, self.total_steps)
    }

    /// The step's micro-batches (the backend RNG reseeded first, so a resumed step draws the
    /// same dropout masks); counts the step.
    fn forward_backward(&mut self) -> StepGrads<Fp8<B>> {
        let step = self.state.step + 1;
        let seed = self.job.seed.wrapping_add(self.state.step);
        TrainBackend::<B>::seed(&self.device, seed);
        let model = self
            .model
            .as_ref()
            .expect("the model is in place between phases");
        let options = StepOptions {
            grad_accum: self.job.grad_accum,
            stats: self.job.precision.samples_stats_at(step),
            loss_factor: self
                .inject_at
                .filter(|(at, _)| *at == step)
                .map(|(_, factor)| factor),
            activation_checkpointing: self.job.activation_checkpointing,
            seed,
        };
        let out = parallel::step_gradients::<B>(
            self.peers.as_ref(),
            model,
            &mut self.loader,
            &options,
            &self.device,
        );
        self.state.step = step;
        self.state.tokens += out.tokens;
        out
    }

    /// Why this step cannot be used, naming the layer where one is known.
    fn non_finite_reason(&self, out: &StepGrads<Fp8<B>>, grad_norm: f64) -> Option<String> {
        let mut reasons = Vec::new();
        if !out.loss.is_finite() {
            reasons.push(format!("non-finite loss ({})", out.loss));
        }
        if let Some(e) = out.report.non_finite.first() {
            reasons.push(format!(
                "non-finite FP8 amax ({}) in the {} of layer {} ({:?})",
                e.amax, e.role, e.layer, e.op
            ));
        }
        if !grad_norm.is_finite() {
            let first = out
                .first_non_finite()
                .and_then(|i| self.optimizer.param_name(i));
            let name = first.unwrap_or("?");
            reasons.push(format!("non-finite gradient (first in `{name}`)"));
        }
        (!reasons.is_empty()).then(|| reasons.join("; "))
    }

    /// Non-finite policy `stop`: the job ends with the last good checkpoint kept.
    fn stop(&mut self, reason: String) -> Error {
        log::info!("step {}: {reason}; stopping", self.state.step);
        Error::NonFinite {
            step: self.state.step,
            reason,
        }
    }

    /// Non-finite policy `skip`: weights and optimizer state stay as they are.
    fn skip(&mut self, reason: &str) {
        self.state.skipped_steps += 1;
        log::info!(
            "step {}: {reason}; step skipped ({} so far)",
            self.state.step,
            self.state.skipped_steps
        );
    }

    /// One AdamW update of the model's parameters, gradients scaled by `grad_scale` first.
    fn optimizer_step(
        &mut self,
        grads: Vec<Option<burn::Tensor<Fp8<B>, 1>>>,
        grad_scale: f32,
        lr: f64,
    ) {
        let o = &self.job.optimizer;
        let hyper = AdamWStep {
            lr: lr as f32,
            beta1: o.betas.0 as f32,
            beta2: o.betas.1 as f32,
            eps: o.eps as f32,
            weight_decay: o.weight_decay as f32,
        };
        if let Some(peers) = &self.peers {
            peers.send_update(hyper, grad_scale);
        }
        let coefficients = self.optimizer.begin_step(hyper, grad_scale);
        let model = self
            .model
            .take()
            .expect("the model is in place between phases");
        let model = step::apply_adamw(model, &mut self.optimizer, grads, &coefficients);
        self.model = Some(model);
    }

    fn model(&self) -> &Model<TrainBackend<B>> {
        self.model
            .as_ref()
            .expect("the model is in place between phases")
    }

    /// `fp8_stats.csv` rows of a sampled step: one per (layer, role), in the order of the casts.
    fn record_fp8_stats(&mut self, report: &Fp8Report) -> Result<(), Error> {
        if !self.job.precision.samples_stats_at(self.state.step) {
            return Ok(());
        }
        let step = self.state.step;
        self.fp8_warnings
            .check(step, &report.records, &self.job.precision);
        let rows: Vec<Fp8StatsRow> = report
            .records
            .iter()
            .map(|r| Fp8StatsRow::of(step, r))
            .collect();
        self.dir.fp8_rows(&rows)
    }

    /// The validation loss over `eval_batches` batches (statistics off), and on
    /// classification data the accuracy over as many batches of examples. `None` without
    /// validation data, or when a stop request cut the pass short (checked between batches,
    /// so Ctrl-C is honoured within one batch); a partial pass is not an evaluation.
    fn evaluate(&self) -> Option<Evaluation> {
        let validation = self.validation.as_ref()?;
        let limit = match self.job.eval_batches {
            0 => usize::MAX,
            n => n,
        };
        let cut = Cell::new(false);
        let go_on = || {
            cut.set(self.stopping());
            !cut.get()
        };
        // Evaluating must not move fp8-delayed's histories (training would then depend on
        // `eval_every`): they are used as they stand.
        let _frozen = self.model().fp8().freeze_amax_histories();
        let model = self.model().valid();
        let batches = validation.eval_pass().take(limit).take_while(|_| go_on());
        let pass = mean_loss(&model, batches, &self.device);
        let accuracy = self.classification.as_ref().map(|set| {
            let (mut correct, mut examples) = (0, 0);
            let batches = set.scoring_batches(self.job.batch_size, self.job.data.seq_len);
            for batch in batches.take(limit).take_while(|_| go_on()) {
                let scores = row_scores(&model, &batch.batch, &self.device);
                correct += batch.num_correct(&scores);
                examples += batch.gold.len();
            }
            correct as f64 / examples.max(1) as f64
        });
        if cut.get() {
            log::info!("evaluation interrupted; its partial result is not recorded");
            return None;
        }
        Some(Evaluation {
            loss: pass?.loss as f32,
            accuracy,
        })
    }

    /// The validation loss when an evaluation is due at this step. An evaluation cut short by
    /// a stop request is marked pending: the checkpoint saved on the way out records it, and
    /// the resumed run does it first.
    fn evaluate_if_due(&mut self) -> Option<Evaluation> {
        let every = self.job.eval_every;
        let due = self.state.step == self.total_steps
            || (every > 0 && self.state.step.is_multiple_of(every));
        if !due || self.validation.is_none() {
            return None;
        }
        let eval = self.evaluate();
        self.state.eval_pending = eval.is_none() && self.stopping();
        eval
    }

    /// Appends the step's metrics row, logs a line every `log_every` steps (and at evaluations
    /// and the end), and redraws the plot after an evaluation.
    fn log_step(
        &mut self,
        out: &StepGrads<Fp8<B>>,
        lr: f64,
        grad_norm: f64,
        step_time: f64,
        eval: Option<Evaluation>,
    ) -> Result<MetricsRow, Error> {
        let val_loss = eval.map(|e| e.loss);
        let row = MetricsRow {
            step: self.state.step,
            tokens: self.state.tokens,
            train_loss: Some(out.loss),
            val_loss,
            lr: Some(lr),
            grad_norm: Some(grad_norm),
            tokens_per_s: Some(out.tokens as f64 / step_time.max(1e-9)),
            elapsed_s: self.elapsed(),
            val_accuracy: eval.and_then(|e| e.accuracy),
        };
        self.dir.metrics_row(row.clone())?;
        let step = self.state.step;
        if step.is_multiple_of(self.job.log_every) || val_loss.is_some() || step == self.total_steps
        {
            let mut line = format!(
                "step {step}/{}: loss {} | lr {lr:.3e} | grad norm {grad_norm:.3} | {:.0} tok/s | {:.1} s",
                self.total_steps,
                fmt_loss(out.loss),
                row.tokens_per_s.unwrap_or(0.0),
                row.elapsed_s
            );
            if let Some(e) = eval {
                line += &format!(" | {}", e.describe());
            }
            log::info!("{line}");
        }
        if val_loss.is_some() {
            self.draw_plot()?;
        }
        Ok(row)
    }

    /// After an evaluation: a new best value of `best_metric` is remembered (and written to
    /// `checkpoints/best` with `keep_best_checkpoint`); with early stopping, `patience`
    /// evaluations in a row without one end the run.
    fn track_best(&mut self, eval: Option<Evaluation>) -> Result<(), Error> {
        let Some(eval) = eval else {
            return Ok(());
        };
        if !self.job.keep_best_checkpoint && self.job.early_stopping.is_none() {
            return Ok(());
        }
        let metric = self.job.best_metric;
        // Scores where lower is better: the loss, or minus the accuracy.
        let Some(score) = (match metric {
            BestMetric::ValLoss => Some(eval.loss as f64),
            BestMetric::ValAccuracy => eval.accuracy.map(|a| -a),
        }) else {
            return Ok(());
        };
        let min_delta = self
            .job
            .early_stopping
            .as_ref()
            .map_or(0.0, |e| e.min_delta);
        let improved = match self.state.best_score {
            None => true,
            Some(best) => score < best - min_delta,
        };
        let step = self.state.step;
        let shown = |score: f64| match metric {
            BestMetric::ValLoss => format!("val loss {score:.4}"),
            BestMetric::ValAccuracy => format!("val accuracy {:.4}", -score),
        };
        if improved {
            self.state.best_score = Some(score);
            self.state.evals_since_best = 0;
            if self.job.keep_best_checkpoint {
                let dir = save_best_checkpoint(
                    &self.dir.root.join("checkpoints"),
                    self.model(),
                    &self.optimizer,
                    &self.state_to_save(),
                    &self.checkpoint_files,
                )?;
                log::info!(
                    "step {step}: best {} so far: {}",
                    shown(score),
                    dir.display()
                );
            }
            return Ok(());
        }
        self.state.evals_since_best += 1;
        if let Some(stop) = &self.job.early_stopping {
            if self.state.evals_since_best >= stop.patience && step < self.total_steps {
                log::info!(
                    "step {step}: early stopping: no improvement on the best {} for {} \
                     evaluations",
                    self.state.best_score.map_or("-".into(), shown),
                    stop.patience
                );
                self.state.stopped_early = true;
            }
        }
        Ok(())
    }

    fn checkpoint_if_due(&mut self) -> Result<(), Error> {
        let every = self.job.checkpoint_every;
        let step = self.state.step;
        let last = step == self.total_steps || self.state.stopped_early;
        if last || (every > 0 && step.is_multiple_of(every)) {
            let dir = self.save()?;
            log::info!("step {step}: checkpoint {}", dir.display());
        }
        Ok(())
    }

    /// Ctrl-C: a checkpoint of the last completed step (unless there is one), then stop.
    fn interrupt(mut self) -> Result<TrainOutcome, Error> {
        let step = self.state.step;
        log::info!("interrupted at step {step}: saving a checkpoint");
        if self.last_checkpoint != Some(step) && step > 0 {
            self.save()?;
        }
        self.draw_plot()?;
        Ok(TrainOutcome::Interrupted {
            step,
            run_dir: self.dir.root.clone(),
        })
    }

    fn finish(self) -> Result<TrainOutcome, Error> {
        self.draw_plot()?;
        if self.state.stopped_early {
            log::info!(
                "stopped early at step {} of {} (early_stopping)",
                self.state.step,
                self.total_steps
            );
        }
        if let Some(peers) = &self.peers {
            let collective = peers.take_collective_seconds();
            log::info!(
                "data parallel: peer 0 spent {collective:.2} s of {:.2} s of steps ({:.1}%) in \
                 collective calls (gradients' all-reduce, FP8 amax reductions; waiting for the \
                 slowest peer included)",
                self.step_seconds,
                100.0 * collective / self.step_seconds.max(1e-9)
            );
        }
        log::info!(
            "done: {} steps ({} skipped), {:.1} s; run directory {}",
            self.state.step,
            self.state.skipped_steps,
            self.elapsed(),
            self.dir.root.display()
        );
        Ok(TrainOutcome::Finished {
            step: self.state.step,
            run_dir: self.dir.root.clone(),
        })
    }

    /// Writes the checkpoint of the current step: the model, AdamW, the data position and the
    /// wall time so far.
    fn save(&mut self) -> Result<PathBuf, Error> {
        let checkpoints = self.dir.root.join("checkpoints");
        let dir = save_training_checkpoint(
            &checkpoints,
            self.model(),
            &self.optimizer,
            &self.state_to_save(),
            &self.checkpoint_files,
            self.job.keep_checkpoints,
        )?;
        self.last_checkpoint = Some(self.state.step);
        Ok(dir)
    }

    /// The training state as a checkpoint of this step records it.
    fn state_to_save(&self) -> TrainerState {
        TrainerState {
            loader: self.loader.state(),
            adam_t: self.optimizer.t,
            elapsed_s: self.elapsed(),
            ..self.state.clone()
        }
    }

    fn draw_plot(&self) -> Result<(), Error> {
        let curves = plot::curves_of(&self.dir.rows, "");
        let curves: Vec<plot::Curve<'_>> = curves
            .iter()
            .map(|(label, points)| plot::Curve {
                label,
                points: points.clone(),
            })
            .collect();
        let title = format!("{} ({})", self.job.name, self.job.precision.mode);
        plot::draw_loss(&self.dir.root, &title, &curves)?;
        plot::draw_fp8_stats(&self.dir.root, &title, &self.dir.stats)
    }

    /// Wall time of the whole run so far, earlier processes included.
    fn elapsed(&self) -> f64 {
        self.earlier_elapsed + self.started.elapsed().as_secs_f64()
    }
}

/// A loss as the log shows it.
fn fmt_loss(loss: f32) -> String {
    format!("{loss:.4}")
}
