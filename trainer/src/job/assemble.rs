//! Assembling a job from its config: tokenizer and data, the model's architecture and the
//! model (preset or checkpoint), the number of steps. Shared by `train`, `eval`, `dump-step` and
//! `bench`; what is checked on the way is `check.rs`'s, and errors name the config file and the
//! field.

use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use datasets::{
    load_tokenizer, tokenizer_from_checkpoint_dir, DataLoader, Dataset, Tokenizer, TokenizerSpec,
};

use super::{check, JobConfig, JobConfigError};
use crate::checkpoint::load_checkpoint_storing;
use crate::device::{InitBackend, TrainBackend, INIT_DEVICE};
use crate::error::{Error, FieldError};
use crate::model::base_storage::BaseStorage;
use crate::model::{Model, ModelConfig, ModelConfigError, ModelOptions, PresetOverrides};

/// The job's tokenizer and dataset.
pub struct JobData {
    pub tokenizer: Box<dyn Tokenizer>,
    pub dataset: Dataset,
    origin: DataOrigin,
}

/// Where a job's data section came from, for error messages.
#[derive(Clone, Debug)]
pub enum DataOrigin {
    /// The `data` field of this job config.
    Config(PathBuf),
    /// Command-line flags (`eval --data`, `--tokenizer`).
    Flags,
}

impl DataOrigin {
    fn error(&self, source: datasets::DataError) -> Error {
        match self {
            Self::Config(file) => Error::Data {
                file: file.clone(),
                source,
            },
            Self::Flags => Error::DataArgument {
                flag: "--data",
                source,
            },
        }
    }
}

impl JobData {
    /// Maps a data error to one naming the config's `data` field (or the `--data` flag).
    pub fn err(&self) -> impl Fn(datasets::DataError) -> Error + '_ {
        |source| self.origin.error(source)
    }
}

/// Loads the tokenizer (config, else the checkpoint's own, else GPT-2) and opens the data.
pub fn open_data(job: &JobConfig, config: &Path) -> Result<JobData, Error> {
    open_data_from(job, DataOrigin::Config(config.to_path_buf()))
}

/// [`open_data`] for data that `origin` names.
pub fn open_data_from(job: &JobConfig, origin: DataOrigin) -> Result<JobData, Error> {
    let tok_origin = match &origin {
        DataOrigin::Config(config) => format!("{}: field `tokenizer`", config.display()),
        DataOrigin::Flags => "--tokenizer".to_string(),
    };
    let tok_err = |source| Error::Tokenizer {
        origin: tok_origin.clone(),
        source,
    };
    // (An adapter folder without tokenizer files has its base's.)
    let checkpoint = job
        .model
        .checkpoint
        .as_deref()
        .map(crate::model::lora::tokenizer_dir);
    let tokenizer = match (&job.tokenizer, &checkpoint) {
        (Some(spec), _) => load_tokenizer(spec).map_err(tok_err)?,
        (None, Some(dir)) => match tokenizer_from_checkpoint_dir(dir).map_err(tok_err)? {
            Some(t) => t,
            None => load_tokenizer(&TokenizerSpec::Gpt2).map_err(tok_err)?,
        },
        (None, None) => load_tokenizer(&TokenizerSpec::Gpt2).map_err(tok_err)?,
    };
    // Conversations take the checkpoint's chat template by default (tokenizer_config.json).
    let checkpoint = checkpoint.as_deref();
    let dataset = Dataset::open_with_checkpoint(&job.data, tokenizer.as_ref(), checkpoint)
        .map_err(|e| origin.error(e))?;
    Ok(JobData {
        tokenizer,
        dataset,
        origin,
    })
}

/// Dropout and the FP8 policy of the job.
pub fn model_options(job: &JobConfig) -> ModelOptions {
    ModelOptions {
        dropout: job.model.dropout,
        fp8: job.precision.clone(),
    }
}

/// The architecture of a checkpoint folder (an adapter folder's: its base's).
pub fn model_config_of_checkpoint(dir: &Path) -> Result<ModelConfig, Error> {
    if crate::model::lora::is_adapter_dir(dir) {
        let (_, base) = crate::checkpoint::adapter_and_base(dir)?;
        return model_config_of_checkpoint(&base);
    }
    let path = dir.join(crate::checkpoint::CONFIG_FILE);
    ModelConfig::from_file(&path).map_err(|e| Error::Checkpoint(e.into()))
}

/// A preset with the job's shape overrides.
fn preset_config(job: &JobConfig, config: &Path, name: &str) -> Result<ModelConfig, Error> {
    let preset = ModelConfig::preset(name)
        .map_err(|e| Error::field(config, "model.preset", e.to_string()))?;
    let m = &job.model;
    let c = preset.with_overrides(&PresetOverrides {
        vocab_size: m.vocab_size,
        n_positions: m.n_positions,
        n_embd: m.n_embd,
        n_layer: m.n_layer,
        n_head: m.n_head,
        n_inner: m.n_inner,
    });
    c.validate(config).map_err(|e| match e {
        // The field is the job's `model.<field>`, and the file is the job config (named once).
        ModelConfigError::Field(FieldError { field, message, .. }) => {
            Error::field(config, &format!("model.{field}"), message)
        }
        other => Error::field(config, "model", other.to_string()),
    })?;
    Ok(c)
}

/// The architecture of the job's model: its checkpoint's, or the preset's with overrides.
pub fn model_config(job: &JobConfig, config: &Path) -> Result<ModelConfig, Error> {
    match (&job.model.checkpoint, &job.model.preset) {
        (Some(dir), _) => model_config_of_checkpoint(dir),
        (None, Some(name)) => preset_config(job, config, name),
        (None, None) => unreachable!("checked: checkpoint or preset"),
    }
}

/// The job's model on `device` (after [`check::model`]): a checkpoint, or a preset initialised
/// with `model.init_seed`. A preset is always initialised on [`INIT_DEVICE`] and then copied
/// to the device, so a seed gives the same initial weights on every device.
pub fn build_model<B: fp8_backend::Fp8Kernels>(
    job: &JobConfig,
    config: &Path,
    vocab: usize,
    device: &B::Device,
) -> Result<Model<TrainBackend<B>>, Error> {
    let model = build_base::<B>(job, config, vocab, device)?;
    let mut model = with_adapters(job, config, model)?;
    if job.precision.base_storage == fp8_backend::BaseStorage::Fp8 {
        model.store_base_fp8().map_err(|e| {
            Error::from(JobConfigError::field(
                config,
                "precision.base_storage",
                format!("the base weight {e}: it has no FP8 cast"),
            ))
        })?;
    }
    Ok(model)
}

/// The job's model with its LoRA adapters (`lora`; [`crate::model::lora`]) and its base frozen:
/// fresh adapters (`A` drawn from `model.init_seed`, `B` zero), or those of `model.checkpoint`
/// when it is an adapter folder (whose settings must then be the job's). Without `lora`, the
/// model as it is (full fine-tuning), which an adapter folder cannot be.
pub fn with_adapters<BB: burn::tensor::backend::Backend>(
    job: &JobConfig,
    config: &Path,
    mut model: Model<BB>,
) -> Result<Model<BB>, Error> {
    let adapter_dir = job
        .model
        .checkpoint
        .as_ref()
        .filter(|d| crate::model::lora::is_adapter_dir(d));
    let field =
        |field: &str, message: String| Error::from(JobConfigError::field(config, field, message));
    match (&job.lora, adapter_dir) {
        (None, None) => Ok(model),
        (None, Some(dir)) => Err(field(
            "model.checkpoint",
            format!(
                "{} is a LoRA adapter folder: give the job a `lora` section with its settings \
                 to train the adapter further, or merge it into its base first (`fp8-trainer \
                 merge`) to fine-tune every weight",
                dir.display()
            ),
        )),
        (Some(ours), Some(dir)) => {
            let (theirs, _) = crate::checkpoint::adapter_and_base(dir)?;
            let c = model.config();
            let differs = ours.first_difference(
                &theirs.lora,
                &c.projection_names(),
                c.lora_default_targets(),
            );
            if let Some(key) = differs {
                return Err(field(
                    &format!("lora.{key}"),
                    format!(
                        "differs from the adapter's in {} ({}); an adapter is trained further \
                         with its own settings",
                        dir.display(),
                        crate::model::lora::ADAPTER_CONFIG_FILE
                    ),
                ));
            }
            Ok(model.freeze_base())
        }
        (Some(lora), None) => {
            let adapted = model.add_lora(lora, job.model.init_seed);
            log::info!(
                "LoRA: {adapted} projections adapted (r {}, scaling {}), base frozen",
                lora.r,
                lora.scaling()
            );
            Ok(model.freeze_base())
        }
    }
}

/// The job's base model (before [`with_adapters`]).
fn build_base<B: fp8_backend::Fp8Kernels>(
    job: &JobConfig,
    config: &Path,
    vocab: usize,
    device: &B::Device,
) -> Result<Model<TrainBackend<B>>, Error> {
    let options = model_options(job);
    let c = model_config(job, config)?;
    check::model(job, config, &c, vocab)?;
    check::training_memory(job, config, &c)?;
    // A LoRA job's FP8-stored base: each weight cast as it loads (the f32 base never whole).
    let mut storage = job
        .lora
        .as_ref()
        .and_then(|_| BaseStorage::new(&c, &options.fp8));
    let stored_err = |e: String| {
        Error::from(JobConfigError::field(
            config,
            "precision.base_storage",
            format!("the base weight {e}: it has no FP8 cast"),
        ))
    };
    if let Some(dir) = &job.model.checkpoint {
        return Ok(load_checkpoint_storing::<TrainBackend<B>>(
            dir, &options, device, storage,
        )?);
    }
    let filter_err = |e: fp8_backend::LayerFilterError| {
        Error::from(JobConfigError::field(
            config,
            "precision.layers",
            e.to_string(),
        ))
    };
    InitBackend::seed(&INIT_DEVICE, job.model.init_seed);
    let cpu = Model::<InitBackend>::new(&c, &options, &INIT_DEVICE).map_err(filter_err)?;
    // Parameters are initialised lazily: draw them now, in module order, so the values depend
    // only on the seed (not on which command touches them first).
    let mut initial: std::collections::HashMap<String, burn::tensor::TensorData> =
        crate::model::names::into_param_values_with(cpu, |name, data| match &mut storage {
            Some(storage) => storage.take(name, data),
            None => Ok(data),
        })
        .map_err(stored_err)?
        .into_iter()
        .collect();
    let model = Model::<TrainBackend<B>>::new(&c, &options, device).map_err(filter_err)?;
    let mut model = crate::model::names::replace_params(
        model,
        |name, _| initial.remove(name).ok_or(()),
        device,
    )
    .expect("a model of the same config has the same parameters");
    if let Some(storage) = storage {
        storage.attach(&mut model);
    }
    Ok(model)
}

/// Steps of the job: `steps`, or `epochs` worth of optimizer steps (rounded up).
pub fn total_steps(job: &JobConfig, loader: &DataLoader) -> u64 {
    match (job.steps, job.epochs) {
        (Some(steps), _) => steps,
        (None, Some(epochs)) => {
            let micro = (epochs * loader.batches_per_epoch() as f64).ceil() as u64;
            micro.div_ceil(job.grad_accum as u64).max(1)
        }
        (None, None) => unreachable!("validated: steps or epochs"),
    }
}
