//! Starting a run ([`Run::open`]), in named steps: the job is assembled and checked first
//! (data, the checkpoint to resume from, the model, the training state: every check of
//! `job/check.rs` made), and only then may the run directory change; the startup banner says
//! what will run; the other data-parallel peers start last.

use std::path::Path;
use std::time::Instant;

use datasets::{DataLoader, SplitName};
use fp8_backend::{Fp8, Precision};

use super::checkpoints::{
    load_amax_histories, load_training_state, resume_point, self_contained_files, ResumePoint,
    TrainerState,
};
use super::lock::RunLock;
use super::optimizer::AdamW;
use super::parallel::{job_fingerprint, Group, Peers};
use super::run_dir::{self, RunDir};
use super::{step, Fp8Warnings, Run, TrainOptions};
use crate::checkpoint::load_checkpoint;
use crate::device::{DeviceBackend, TrainBackend};
use crate::error::Error;
use crate::job::assemble::{
    build_model, model_config, model_config_of_checkpoint, model_options, open_data, total_steps,
    JobData,
};
use crate::job::{check, InitOptimizer, JobConfig};
use crate::model::names::param_shapes;
use crate::model::Model;

impl<'a, B: DeviceBackend> Run<'a, B>
where
    B::Device: Send + Sync,
{
    /// Assembles the job (or restores it from a checkpoint with `--resume`), then prepares the
    /// run directory, says what will run and starts the other data-parallel peers.
    pub(super) fn open(opts: &'a TrainOptions, devices: Vec<B::Device>) -> Result<Self, Error> {
        let job = &opts.job;
        // (A signal that came before this only set `stop`: the job stops once prepared.)
        let preparing = super::Preparing::start();
        let device = devices[0].clone();
        let group = Group {
            devices,
            nodes: job.nodes.clone(),
            fingerprint: job_fingerprint(job),
        };
        let root = job.out_dir.join(&job.name);
        // A job running in this folder refuses this one before anything else is looked at.
        // (A folder that does not exist yet is locked once the job is built, below.)
        let early_lock = match root.is_dir() {
            true => Some(RunLock::acquire(&root)?),
            false => None,
        };

        // The job, checked and built: nothing in the run directory changes before it is.
        let data = open_data(job, &opts.config_path)?;
        let resume = resume_point(
            &root.join("checkpoints"),
            opts.resume.as_ref(),
            opts.overwrite,
        )?;
        let model = load_model::<B>(opts, resume.as_ref(), data.tokenizer.vocab_size(), &device)?;
        // LoRA: moments for the adapters only (the base is frozen).
        let lora = job.lora.is_some();
        let mut optimizer = AdamW::new_for(
            param_shapes(&model),
            |name| !lora || crate::model::lora::is_adapter_param(name),
            &device,
        );
        // Every batch holds `batch_size` rows per peer, on every node.
        let global_batch = job.batch_size * group.total();
        let mut loader = data
            .dataset
            .train_loader(global_batch)
            .map_err(data.err())?;
        let validation = data
            .dataset
            .validation_loader(global_batch)
            .map_err(data.err())?;
        check::data(job, &opts.config_path, &data.dataset, validation.is_some())?;
        let state = restore_state::<B>(
            job,
            resume.as_ref(),
            &model,
            &mut optimizer,
            &mut loader,
            &data,
            &device,
        )?;
        let mut checkpoint_files = self_contained_files(
            data.tokenizer.as_ref(),
            data.dataset.chat_template(),
            &model.config(),
        )
        .map_err(|source| Error::Tokenizer {
            origin: format!("{}: field `tokenizer`", opts.config_path.display()),
            source,
        })?;
        if let Some(lora) = &job.lora {
            checkpoint_files.push(adapter_config_file(job, lora, &model.config())?);
        }

        // The job's first step can run: only now may the run directory change, and from here a
        // signal is answered by the training loop (a checkpoint), not by ending the process.
        drop(preparing);
        let lock = match early_lock {
            Some(lock) => lock,
            None => {
                std::fs::create_dir_all(&root).map_err(Error::io(&root))?;
                RunLock::acquire(&root)?
            }
        };
        let (dir, changed) = prepare_run_dir(opts, &root, resume.as_ref())?;
        let total_steps = total_steps(job, &loader);
        let start = Start {
            job,
            group: &group,
            model: &model,
            total_steps,
            train_tokens: data.dataset.num_train_tokens(),
            padding: loader.padding(),
            resume: resume.as_ref(),
            changed: &changed,
        };
        start.log();

        // The peers wait for each other at registration: nothing else may fail after it. Until
        // every node has joined (up to `nodes.timeout_s`) there is nothing to save either: a
        // signal ends the process at once, as while preparing.
        let peers = match group.is_parallel() {
            false => None,
            true => {
                let joining = super::Preparing::start();
                let peers = Peers::start::<B>(&model, &optimizer, &group)
                    .map_err(|m| Error::field(&opts.config_path, "nodes", m.0))?;
                drop(joining);
                Some(peers)
            }
        };
        Ok(Self {
            job,
            device,
            peers,
            step_seconds: 0.0,
            model: Some(model),
            optimizer,
            loader,
            validation,
            classification: data.dataset.classification(SplitName::Validation),
            earlier_elapsed: state.elapsed_s,
            state,
            dir,
            total_steps,
            started: Instant::now(),
            last_checkpoint: resume.map(|r| r.step),
            checkpoint_files,
            fp8_warnings: Fp8Warnings::default(),
            inject_at: step::injection_from_env(),
            stop: &opts.stop,
            _lock: lock,
        })
    }
}

/// The model of the job: the checkpoint resumed from (which must have the job's shape), or the
/// job's own (`model.checkpoint` or a preset).
fn load_model<B: DeviceBackend>(
    opts: &TrainOptions,
    resume: Option<&ResumePoint>,
    vocab: usize,
    device: &B::Device,
) -> Result<Model<TrainBackend<B>>, Error> {
    let (job, config) = (&opts.job, opts.config_path.as_path());
    let Some(resume) = resume else {
        return build_model::<B>(job, config, vocab, device);
    };
    let adapter = crate::model::lora::is_adapter_dir(&resume.dir);
    match (job.lora.is_some(), adapter) {
        (true, true) => {
            // The job's base (its checkpoint or preset) with the adapters resumed from.
            check_same_adapter(job, config, &resume.dir)?;
            let model = build_model::<B>(job, config, vocab, device)?;
            return Ok(crate::checkpoint::load_adapter_weights(
                model,
                &resume.dir,
                device,
            )?);
        }
        (true, false) => {
            return Err(Error::field(
                config,
                "lora",
                format!(
                    "the run's checkpoint {} holds a whole model, not a LoRA adapter: it was \
                     trained without `lora`; resume it without, or start a new run",
                    resume.dir.display()
                ),
            ))
        }
        (false, true) => {
            return Err(Error::field(
                config,
                "lora",
                format!(
                    "is absent, but the run's checkpoint {} is a LoRA adapter: resume it with \
                     the `lora` section it was trained with",
                    resume.dir.display()
                ),
            ))
        }
        (false, false) => {}
    }
    let theirs = model_config_of_checkpoint(&resume.dir)?;
    check::same_shape(
        job,
        config,
        &model_config(job, config)?,
        &theirs,
        &resume.dir,
    )?;
    check::model(job, config, &theirs, vocab)?;
    check::training_memory(job, config, &theirs)?;
    Ok(load_checkpoint::<TrainBackend<B>>(
        &resume.dir,
        &model_options(job),
        device,
    )?)
}

/// `adapter_config.json` of the job's checkpoints: its LoRA settings (the targets spelled out
/// when the family's default was taken) and the base: `model.checkpoint`'s folder as an
/// absolute path (an adapter folder's own base), none for a preset.
fn adapter_config_file(
    job: &JobConfig,
    lora: &crate::model::lora::LoraConfig,
    model: &crate::model::ModelConfig,
) -> Result<datasets::CheckpointFile, Error> {
    let base = match &job.model.checkpoint {
        None => None,
        Some(dir) => {
            let base = match crate::model::lora::is_adapter_dir(dir) {
                true => crate::checkpoint::adapter_and_base(dir)?.1,
                false => dir.clone(),
            };
            Some(std::fs::canonicalize(&base).map_err(Error::io(&base))?)
        }
    };
    let value = crate::model::lora::adapter_config_json(
        lora,
        &lora.targets(model.lora_default_targets()),
        base.as_deref().and_then(Path::to_str),
        model.lora_fan_in_fan_out(),
    );
    let mut contents = serde_json::to_vec_pretty(&value).expect("JSON serialises");
    contents.push(b'\n');
    Ok(datasets::CheckpointFile {
        name: crate::model::lora::ADAPTER_CONFIG_FILE.into(),
        contents,
    })
}

/// The adapter checkpoint resumed from has the job's LoRA settings (`adapter_config.json`).
fn check_same_adapter(job: &JobConfig, config: &Path, dir: &Path) -> Result<(), Error> {
    let ours = job.lora.as_ref().expect("a LoRA job");
    let theirs = crate::model::lora::read_adapter_config(dir)
        .map_err(|(path, message)| Error::BadFile { path, message })?
        .lora;
    let c = model_config(job, config)?;
    match ours.first_difference(&theirs, &c.projection_names(), c.lora_default_targets()) {
        Some(key) => Err(Error::field(
            config,
            &format!("lora.{key}"),
            format!(
                "differs from the run's checkpoint {} (its {}); resuming continues that run",
                dir.display(),
                crate::model::lora::ADAPTER_CONFIG_FILE
            ),
        )),
        None => Ok(()),
    }
}

/// The training state to start from: the checkpoint's on `--resume` (AdamW's moments, the
/// data position, under `fp8-delayed` the amax histories); a fresh one otherwise, AdamW's
/// moments taken from `model.checkpoint` with `optimizer_state: from_checkpoint`.
fn restore_state<B: DeviceBackend>(
    job: &JobConfig,
    resume: Option<&ResumePoint>,
    model: &Model<TrainBackend<B>>,
    optimizer: &mut AdamW<Fp8<B>>,
    loader: &mut DataLoader,
    data: &JobData,
    device: &B::Device,
) -> Result<TrainerState, Error> {
    let delayed = job.precision.mode == Precision::Fp8Delayed;
    if let Some(resume) = resume {
        let state = load_training_state(&resume.dir, optimizer, device)?;
        loader.restore(&state.loader).map_err(data.err())?;
        if delayed {
            load_amax_histories(&resume.dir, model)?;
        }
        return Ok(state);
    }
    if let Some(dir) = &job.model.checkpoint {
        if job.model.optimizer_state == InitOptimizer::FromCheckpoint {
            // AdamW carries on (`load_training_state` sets its step count, which checkpoints
            // record); step, data position and schedule start over.
            let earlier = load_training_state(dir, optimizer, device)?;
            log::info!(
                "AdamW's moments and step count ({}) from {}",
                earlier.adam_t,
                dir.display()
            );
        }
        if delayed {
            // Another run's scales are stale for this one's data and learning rate
            // (Transformer Engine's issue #982): a new job's histories start empty.
            log::info!(
                "fp8-delayed: amax histories start empty (none are taken from {})",
                dir.display()
            );
        }
    }
    Ok(TrainerState::start(job.seed, loader.state()))
}

/// Makes the run directory ready (its lock held): the old checkpoints gone with `--overwrite`,
/// the ones after the checkpoint resumed from with `--resume DIR --overwrite`, leftovers of
/// killed writes removed, the CSV files opened (cut back to the checkpoint's step on resume),
/// the resolved config written. Returns the directory and the config's changes since the
/// last run.
fn prepare_run_dir(
    opts: &TrainOptions,
    root: &Path,
    resume: Option<&ResumePoint>,
) -> Result<(RunDir, Vec<String>), Error> {
    let checkpoints = root.join("checkpoints");
    if opts.overwrite && resume.is_none() && checkpoints.exists() {
        std::fs::remove_dir_all(&checkpoints).map_err(Error::io(&checkpoints))?;
    }
    for dir in resume.map_or(&[][..], |r| &r.later) {
        log::info!(
            "removing {} (newer than the checkpoint resumed from)",
            dir.display()
        );
        std::fs::remove_dir_all(dir).map_err(Error::io(dir))?;
    }
    run_dir::remove_leftovers(root)?;
    let dir = RunDir::open(root, resume.map(|r| r.step))?;
    let changed = run_dir::write_resolved_config(root, &opts.job)?;
    Ok((dir, changed))
}

/// What the startup banner says.
/// The start's data line for example data: its rows per epoch and their padding, packed and
/// one example a row (the figure the other choice of `data.packing` would give in brackets).
fn describe_padding(p: &datasets::Padding) -> String {
    let percent = |share: f64| format!("{:.1}%", 100.0 * share);
    if p.packed {
        format!(
            "data: {} examples packed into {} windows of {} per epoch, padding {} of the \
             positions (one example a row: {} rows, padding {})",
            p.rows,
            p.windows,
            p.seq,
            percent(p.packed()),
            p.rows,
            percent(p.unpacked()),
        )
    } else {
        format!(
            "data: {} examples, one a row of {}, padding {} of the positions (data.packing \
             would take {} windows, padding {})",
            p.rows,
            p.seq,
            percent(p.unpacked()),
            p.windows,
            percent(p.packed()),
        )
    }
}

struct Start<'a, B: DeviceBackend> {
    job: &'a JobConfig,
    group: &'a Group<B::Device>,
    model: &'a Model<TrainBackend<B>>,
    total_steps: u64,
    train_tokens: usize,
    /// Example data: the padding of an epoch's batches.
    padding: Option<datasets::Padding>,
    resume: Option<&'a ResumePoint>,
    changed: &'a [String],
}

impl<B: DeviceBackend> Start<'_, B> {
    /// Logs what will run: the model, precision, devices, steps and tokens; what the FP8 casts
    /// run on and describe; where a resumed run continues and what changed in its config.
    fn log(&self) {
        let (job, group) = (self.job, self.group);
        let global_batch = job.batch_size * group.total();
        let tokens_per_step = global_batch * job.grad_accum * job.data.seq_len;
        log::info!(
            "{} {}: {} parameters, precision {}{} on {}, {} {} layers, {} steps of \
             {tokens_per_step} tokens ({} x {} x {}), {} training tokens",
            if self.resume.is_some() {
                "resuming"
            } else {
                "starting"
            },
            job.name,
            self.model.config().num_params(),
            job.precision.mode,
            match job.precision.head {
                fp8_backend::HeadPrecision::F32 => "",
                fp8_backend::HeadPrecision::Bf16 => " (LM head bf16)",
            },
            self.devices(),
            self.model.fp8_layers().len(),
            if job.precision.mode == Precision::Bf16 {
                "bf16"
            } else {
                "FP8"
            },
            self.total_steps,
            global_batch,
            job.grad_accum,
            job.data.seq_len,
            self.train_tokens,
        );
        let (stored, bytes) = self.model.stored_base();
        if stored > 0 {
            log::info!(
                "base storage: {stored} frozen projection weights as their FP8 cast, {:.1} MB \
                 (f32: {:.1} MB)",
                bytes as f64 / 1e6,
                4.0 * bytes as f64 / 1e6
            );
        }
        if let Some(p) = &self.padding {
            log::info!("{}", describe_padding(p));
        }
        #[cfg(feature = "cuda")]
        if job.device == crate::device::Device::Cuda && job.precision.mode != Precision::Fp32 {
            let device_kernel =
                std::env::var(fp8_backend::kernel::CUDA_KERNEL_ENV).is_ok_and(|v| v == "device");
            log::info!(
                "FP8 casts on cuda: {}",
                if device_kernel {
                    "the device kernel (FP8_CUDA_KERNEL=device; not yet validated on a GPU)"
                } else {
                    "the exact host path (FP8_CUDA_KERNEL=device selects the device kernel)"
                }
            );
        }
        #[cfg(feature = "cuda")]
        if job.device == crate::device::Device::Cuda && job.precision.is_fp8() {
            log::info!("FP8 GEMMs on cuda: {}", cuda_fp8_gemm(job.precision.family));
        }
        if job.device == crate::device::Device::Cpu && job.precision.is_on() {
            use fp8_backend::kernel::bf16_gemm::{CpuGemm, CPU_GEMM_ENV};
            log::info!(
                "{} GEMMs on the CPU: {}",
                if job.precision.is_fp8() {
                    "FP8"
                } else {
                    "bf16"
                },
                match CpuGemm::selected() {
                    CpuGemm::Bf16 => "bf16 products, f32 accumulation (AVX512_BF16)".to_string(),
                    CpuGemm::F32 => format!(
                        "f32 ({})",
                        if std::env::var(CPU_GEMM_ENV).is_ok_and(|v| v == "f32") {
                            "FP8_CPU_GEMM=f32"
                        } else {
                            "this CPU has no AVX512_BF16"
                        }
                    ),
                }
            );
        }
        if job.activation_checkpointing {
            log::info!(
                "activation checkpointing: each block's input kept, the block recomputed in the \
                 backward"
            );
        }
        if group.is_parallel() && job.precision.stats_every > 0 && job.precision.is_fp8() {
            log::info!(
                "fp8_stats.csv describes peer 0's casts (its rows of each batch; the scales are \
                 the peers' common ones)"
            );
        }
        if let Some(resume) = self.resume {
            log::info!(
                "resumed from {} (step {})",
                resume.dir.display(),
                resume.step
            );
            for change in self.changed {
                log::info!("config changed since the last run: {change}");
            }
        }
    }

    /// Where the job runs, in words.
    fn devices(&self) -> String {
        let (job, group) = (self.job, self.group);
        match (group.total(), &job.nodes) {
            (1, _) => job.device.name().to_string(),
            (n, None) => format!(
                "{n} data-parallel peers ({}) of {} rows each",
                job.devices
                    .iter()
                    .map(|d| d.to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
                job.batch_size
            ),
            (n, Some(nodes)) => format!(
                "{n} data-parallel peers of {} rows each on {} nodes (this is node {}, with {} \
                 peers)",
                job.batch_size,
                nodes.count,
                nodes.rank,
                group.devices.len()
            ),
        }
    }
}

/// Which GEMM multiplies the FP8 layers' operands on CUDA, for the start-up log: FP8 tensor cores
/// (feature `fp8-mma`, OCP formats; fp8-backend's `kernel/mma.rs`) or f32 products of the FP8
/// values, and why.
#[cfg(feature = "cuda")]
fn cuda_fp8_gemm(family: fp8_backend::Fp8Family) -> &'static str {
    if !cfg!(feature = "fp8-mma") {
        return "f32 products of the FP8 values (a build with --features fp8-mma uses FP8 tensor \
                cores for the ocp formats)";
    }
    if family == fp8_backend::Fp8Family::Graphcore {
        return "f32 products of the FP8 values (the graphcore formats have no tensor-core \
                equivalent; \"family\": \"ocp\" has)";
    }
    if fp8_backend::kernel::mma::gpu_gemm_f32() {
        return "f32 products of the FP8 values (FP8_GPU_GEMM=f32)";
    }
    "FP8 tensor cores (mma.sync E4M3/E5M2, f32 accumulation) where the GPU has them (sm_89 and \
     later; f32 products elsewhere); not yet run on a GPU"
}
