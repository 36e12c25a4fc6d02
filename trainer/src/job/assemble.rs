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
    config: PathBuf,
}

impl JobData {
    /// Maps a data error to one naming the config's `data` field.
    pub fn err(&self) -> impl Fn(datasets::DataError) -> Error + '_ {
        |source| Error::Data {
            file: self.config.clone(),
            source,
        }
    }
}

/// Loads the tokenizer (config, else the checkpoint's own, else GPT-2) and opens the data.
pub fn open_data(job: &JobConfig, config: &Path) -> Result<JobData, Error> {
    let tok_err = |source| Error::Tokenizer {
        origin: format!("{}: field `tokenizer`", config.display()),
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
    let dataset = Dataset::open(&job.data, tokenizer.as_ref()).map_err(|source| Error::Data {
        file: config.to_path_buf(),
        source,
    })?;
    Ok(JobData {
        tokenizer,
        dataset,
        config: config.to_path_buf(),
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
    c.validate(config)
        .map_err(|e| Error::field(config, "model", e.to_string()))?;
    Ok(c)
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
