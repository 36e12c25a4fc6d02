//! Assembling a job from its config: tokenizer, dataset, model (preset or checkpoint), and the
//! number of steps. Shared by `train`, `eval` and `dump-step`; errors name the config file and
//! the field.

use std::path::{Path, PathBuf};

use burn::backend::ndarray::NdArrayDevice;
use burn::backend::{Autodiff, NdArray};
use burn::tensor::backend::Backend;
use datasets::{
    load_tokenizer, tokenizer_from_checkpoint_dir, DataLoader, Dataset, Tokenizer, TokenizerSpec,
};

use super::JobConfig;
use crate::checkpoint::load_checkpoint;
use crate::error::Error;
use crate::model::projection::{projection_names, PROJECTION_NAMES_HINT};
use crate::model::{Gpt2, Gpt2Config, ModelOptions};

/// The backend every precision trains on: the FP8 decorator over a device backend `B` (ndarray
/// on the CPU by default); which projections are FP8 is the model's policy.
pub type TrainBackend<B = NdArray<f32>> = Autodiff<fp8_backend::Fp8<B>>;
/// The CPU device.
pub const INNER_DEVICE: NdArrayDevice = NdArrayDevice::Cpu;

/// Fails, naming the config's `device` field, when this build lacks the job's device.
pub fn check_device(job: &JobConfig, config: &Path) -> Result<(), Error> {
    if job.device.available() {
        return Ok(());
    }
    let why = Error::DeviceUnavailable(job.device).to_string();
    Err(Error::field(config, "device", why))
}

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
    let tokenizer = match (&job.tokenizer, &job.model.checkpoint) {
        (Some(spec), _) => load_tokenizer(spec).map_err(tok_err)?,
        (None, Some(dir)) => match tokenizer_from_checkpoint_dir(dir).map_err(tok_err)? {
            Some(t) => t,
            None => load_tokenizer(&TokenizerSpec::Gpt2).map_err(tok_err)?,
        },
        (None, None) => load_tokenizer(&TokenizerSpec::Gpt2).map_err(tok_err)?,
    };
    // Conversations take the checkpoint's chat template by default (tokenizer_config.json).
    let checkpoint = job.model.checkpoint.as_deref();
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

/// The architecture of a checkpoint folder.
pub fn model_config_of_checkpoint(dir: &Path) -> Result<Gpt2Config, Error> {
    let path = dir.join(crate::checkpoint::CONFIG_FILE);
    Gpt2Config::from_file(&path).map_err(|e| Error::Checkpoint(e.into()))
}

/// A preset with the job's overrides.
fn preset_config(job: &JobConfig, config: &Path, name: &str) -> Result<Gpt2Config, Error> {
    let mut c = Gpt2Config::preset(name)
        .map_err(|e| Error::field(config, "model.preset", e.to_string()))?;
    let m = &job.model;
    let overrides = [
        (&mut c.vocab_size, m.vocab_size),
        (&mut c.n_positions, m.n_positions),
        (&mut c.n_embd, m.n_embd),
        (&mut c.n_layer, m.n_layer),
        (&mut c.n_head, m.n_head),
    ];
    for (field, value) in overrides {
        if let Some(value) = value {
            *field = value;
        }
    }
    if m.n_inner.is_some() {
        c.n_inner = m.n_inner;
    }
    if m.vocab_size.is_some() {
        c.bos_token_id = None;
        c.eos_token_id = None;
    }
    c.validate(config).map_err(|e| match e {
        // The field is the job's `model.<field>`, and the file is the job config (named once).
        crate::model::ConfigError::BadField { field, message, .. } => {
            Error::field(config, &format!("model.{field}"), message)
        }
        other => Error::field(config, "model", other.to_string()),
    })?;
    check_model_size(&c, config)?;
    Ok(c)
}

/// Refuses a model whose weights alone (f32) exceed this machine's memory, naming the field
/// that makes it so large: allocating it would abort the process instead.
fn check_model_size(c: &Gpt2Config, config: &Path) -> Result<(), Error> {
    // In f64: an estimate, and sizes near usize::MAX must not overflow.
    let (embd, inner) = (c.n_embd as f64, c.inner_dim() as f64);
    let block = 4.0 * embd * embd + 2.0 * embd * inner + 9.0 * embd + inner;
    let parts = [
        ("model.vocab_size", c.vocab_size as f64 * embd),
        ("model.n_positions", c.n_positions as f64 * embd),
        ("model.n_layer", c.n_layer as f64 * block),
    ];
    let params: f64 = parts.iter().map(|p| p.1).sum::<f64>() + 2.0 * embd;
    let bytes = params * 4.0;
    let limit = physical_memory().unwrap_or(isize::MAX as u64) as f64;
    if bytes <= limit {
        return Ok(());
    }
    let (field, _) = parts
        .iter()
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .expect("three parts");
    let gib = |b: f64| b / (1u64 << 30) as f64;
    Err(Error::field(
        config,
        field,
        format!(
            "the model would have {params:.3e} parameters, {:.1} GiB as f32 before gradients \
             and optimizer state, more than this machine's {:.1} GiB of memory",
            gib(bytes),
            gib(limit)
        ),
    ))
}

/// Total physical memory (Linux: `MemTotal` of /proc/meminfo), if known.
fn physical_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// On `--resume`: the job's model must have the shape of the run's checkpoint (`dir`), since
/// resuming continues that model; names every field that differs.
pub fn check_same_shape(
    job: &JobConfig,
    config: &Path,
    checkpoint: &Gpt2Config,
    dir: &Path,
) -> Result<(), Error> {
    let wanted = model_config(job, config)?;
    let fields: [(&str, String, String); 7] = [
        (
            "vocab_size",
            wanted.vocab_size.to_string(),
            checkpoint.vocab_size.to_string(),
        ),
        (
            "n_positions",
            wanted.n_positions.to_string(),
            checkpoint.n_positions.to_string(),
        ),
        (
            "n_embd",
            wanted.n_embd.to_string(),
            checkpoint.n_embd.to_string(),
        ),
        (
            "n_layer",
            wanted.n_layer.to_string(),
            checkpoint.n_layer.to_string(),
        ),
        (
            "n_head",
            wanted.n_head.to_string(),
            checkpoint.n_head.to_string(),
        ),
        (
            "n_inner",
            wanted.inner_dim().to_string(),
            checkpoint.inner_dim().to_string(),
        ),
        (
            "activation_function",
            format!("{:?}", wanted.activation_function),
            format!("{:?}", checkpoint.activation_function),
        ),
    ];
    let prefix = if job.model.checkpoint.is_some() {
        "model.checkpoint's "
    } else {
        "model."
    };
    let changed: Vec<String> = fields
        .iter()
        .filter(|(_, a, b)| a != b)
        .map(|(name, a, b)| format!("`{prefix}{name}` is {a}, the run's checkpoint has {b}"))
        .collect();
    if changed.is_empty() {
        return Ok(());
    }
    let field = if job.model.checkpoint.is_some() {
        "model.checkpoint".to_string()
    } else {
        let first = fields.iter().find(|(_, a, b)| a != b).expect("one differs");
        format!("model.{}", first.0)
    };
    Err(Error::field(
        config,
        &field,
        format!(
            "{} ({}): --resume continues the run's model, whose shape cannot change; restore \
             the setting, or start a new run (--overwrite, or another `name`)",
            changed.join("; "),
            dir.display()
        ),
    ))
}

/// Checks that the data fits the model (vocabulary, context length) and that every pattern of
/// the FP8 layer filter names one of its projections.
pub fn check_model_fits(
    job: &JobConfig,
    config: &Path,
    model: &Gpt2Config,
    vocab: usize,
) -> Result<(), Error> {
    if vocab > model.vocab_size {
        let message = format!(
            "the tokenizer has {vocab} tokens but the model only {} embeddings",
            model.vocab_size
        );
        return Err(Error::field(config, "model.vocab_size", message));
    }
    if job.data.seq_len > model.n_positions {
        let message = format!(
            "{} exceeds the model's context length n_positions = {}",
            job.data.seq_len, model.n_positions
        );
        return Err(Error::field(config, "data.seq_len", message));
    }
    if job.precision.is_on() {
        let names = projection_names(model.n_layer);
        (job.precision.layers.check(&names, PROJECTION_NAMES_HINT))
            .map_err(|e| Error::field(config, "precision.layers", e.to_string()))?;
        if !names.iter().any(|n| job.precision.layers.matches(n)) {
            let message = format!(
                "{:?} makes no projection FP8 under mode `{}`; name some layers (`[\"*\"]` is \
                 every one), or set `precision.mode` to `fp32`",
                job.precision.layers.patterns(),
                job.precision.mode
            );
            return Err(Error::field(config, "precision.layers", message));
        }
    }
    Ok(())
}

/// The architecture of the job's model: its checkpoint's, or the preset's with overrides.
pub fn model_config(job: &JobConfig, config: &Path) -> Result<Gpt2Config, Error> {
    match (&job.model.checkpoint, &job.model.preset) {
        (Some(dir), _) => model_config_of_checkpoint(dir),
        (None, Some(name)) => preset_config(job, config, name),
        (None, None) => unreachable!("validated: checkpoint or preset"),
    }
}

/// The job's model on `device`: a checkpoint, or a preset initialised with `model.init_seed`.
///
/// A preset is always initialised on the CPU and then copied to the device, so a seed gives the
/// same initial weights on every device (each backend's RNG draws different numbers).
pub fn build_model<B: fp8_backend::Fp8Kernels>(
    job: &JobConfig,
    config: &Path,
    vocab: usize,
    device: &B::Device,
) -> Result<Gpt2<TrainBackend<B>>, Error> {
    let options = model_options(job);
    let c = model_config(job, config)?;
    check_model_fits(job, config, &c, vocab)?;
    if let Some(dir) = &job.model.checkpoint {
        return Ok(load_checkpoint::<TrainBackend<B>>(dir, &options, device)?);
    }
    let filter_err =
        |e: fp8_backend::LayerFilterError| Error::field(config, "precision.layers", e.to_string());
    TrainBackend::<NdArray<f32>>::seed(&INNER_DEVICE, job.model.init_seed);
    let cpu = Gpt2::<TrainBackend>::new(&c, &options, &INNER_DEVICE).map_err(filter_err)?;
    // Parameters are initialised lazily: draw them now, in module order, so the values depend
    // only on the seed (not on which command touches them first).
    let mut initial: std::collections::HashMap<String, burn::tensor::TensorData> =
        crate::model::names::param_values(&cpu)
            .into_iter()
            .collect();
    let model = Gpt2::<TrainBackend<B>>::new(&c, &options, device).map_err(filter_err)?;
    Ok(
        crate::model::names::replace_params(
            model,
            |name, _| initial.remove(name).ok_or(()),
            device,
        )
        .expect("a model of the same config has the same parameters"),
    )
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
