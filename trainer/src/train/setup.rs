//! Building a job's pieces from its config: tokenizer, dataset, model (preset or checkpoint),
//! and the number of steps. Errors name the config file and the field.

use std::path::{Path, PathBuf};

use burn::backend::ndarray::NdArrayDevice;
use burn::backend::{Autodiff, NdArray};
use burn::tensor::backend::Backend;
use datasets::{
    load_tokenizer, tokenizer_from_checkpoint_dir, DataLoader, Dataset, Tokenizer, TokenizerSpec,
};

use super::TrainError;
use crate::checkpoint::load_checkpoint;
use crate::config::Gpt2Config;
use crate::job::JobConfig;
use crate::model::{Gpt2, ModelOptions};

/// The backend every precision trains on: the FP8 decorator over a device backend `B` (ndarray
/// on the CPU by default), with FP8 switched by the installed policy.
pub type TrainBackend<B = NdArray<f32>> = Autodiff<fp8_backend::Fp8<B>>;
/// The CPU device.
pub const INNER_DEVICE: NdArrayDevice = NdArrayDevice::Cpu;

/// Fails, naming the config's `device` field, when this build lacks the job's device.
pub fn check_device(job: &JobConfig, config: &Path) -> Result<(), TrainError> {
    if job.device.available() {
        return Ok(());
    }
    Err(TrainError::Field {
        config: config.to_path_buf(),
        field: "device".into(),
        message: TrainError::DeviceUnavailable(job.device).to_string(),
    })
}

/// The job's tokenizer and dataset.
pub struct JobData {
    pub tokenizer: Box<dyn Tokenizer>,
    pub dataset: Dataset,
    config: PathBuf,
}

impl JobData {
    /// Maps a data error to one naming the config's `data` field.
    pub fn err(&self) -> impl Fn(datasets::DataError) -> TrainError + '_ {
        |source| TrainError::Data {
            config: self.config.clone(),
            source,
        }
    }
}

/// Loads the tokenizer (config, else the checkpoint's own, else GPT-2) and opens the data.
pub fn open_data(job: &JobConfig, config: &Path) -> Result<JobData, TrainError> {
    let tok_err = |source| TrainError::Tokenizer {
        config: config.to_path_buf(),
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
    let dataset =
        Dataset::open(&job.data, tokenizer.as_ref()).map_err(|source| TrainError::Data {
            config: config.to_path_buf(),
            source,
        })?;
    Ok(JobData {
        tokenizer,
        dataset,
        config: config.to_path_buf(),
    })
}

/// Dropout and the FP8 layer filter of the job.
pub fn model_options(job: &JobConfig) -> ModelOptions {
    ModelOptions {
        dropout: job.model.dropout,
        layer_filter: job.precision.model_filter(),
    }
}

/// The architecture of a checkpoint folder.
pub fn model_config_of_checkpoint(dir: &Path) -> Result<Gpt2Config, TrainError> {
    Ok(
        Gpt2Config::from_file(&dir.join(crate::checkpoint::CONFIG_FILE))
            .map_err(crate::checkpoint::CheckpointError::from)?,
    )
}

/// A preset with the job's overrides.
fn preset_config(job: &JobConfig, config: &Path, name: &str) -> Result<Gpt2Config, TrainError> {
    let field = |field: &str, message: String| TrainError::Field {
        config: config.to_path_buf(),
        field: field.into(),
        message,
    };
    let mut c = Gpt2Config::preset(name).map_err(|e| field("model.preset", e.to_string()))?;
    let m = &job.model;
    if let Some(v) = m.vocab_size {
        c.vocab_size = v;
    }
    if let Some(v) = m.n_positions {
        c.n_positions = v;
    }
    if let Some(v) = m.n_embd {
        c.n_embd = v;
    }
    if let Some(v) = m.n_layer {
        c.n_layer = v;
    }
    if let Some(v) = m.n_head {
        c.n_head = v;
    }
    if m.n_inner.is_some() {
        c.n_inner = m.n_inner;
    }
    if m.vocab_size.is_some() {
        c.bos_token_id = None;
        c.eos_token_id = None;
    }
    c.validate(config)
        .map_err(|e| field("model", e.to_string()))?;
    Ok(c)
}

/// Checks that the data fits the model (vocabulary, context length).
pub fn check_model_fits(
    job: &JobConfig,
    config: &Path,
    model: &Gpt2Config,
    vocab: usize,
) -> Result<(), TrainError> {
    let field = |field: &str, message: String| {
        Err(TrainError::Field {
            config: config.to_path_buf(),
            field: field.into(),
            message,
        })
    };
    if vocab > model.vocab_size {
        return field(
            "model.vocab_size",
            format!(
                "the tokenizer has {vocab} tokens but the model only {} embeddings",
                model.vocab_size
            ),
        );
    }
    if job.data.seq_len > model.n_positions {
        return field(
            "data.seq_len",
            format!(
                "{} exceeds the model's context length n_positions = {}",
                job.data.seq_len, model.n_positions
            ),
        );
    }
    Ok(())
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
) -> Result<Gpt2<TrainBackend<B>>, TrainError> {
    let options = model_options(job);
    let filter_err = |e: crate::LayerFilterError| TrainError::Field {
        config: config.to_path_buf(),
        field: "precision.layers".into(),
        message: e.to_string(),
    };
    if let Some(dir) = &job.model.checkpoint {
        let c = model_config_of_checkpoint(dir)?;
        check_model_fits(job, config, &c, vocab)?;
        options
            .layer_filter
            .resolve(c.n_layer)
            .map_err(filter_err)?;
        return Ok(load_checkpoint::<TrainBackend<B>>(dir, &options, device)?);
    }
    let name = job
        .model
        .preset
        .as_deref()
        .expect("validated: checkpoint or preset");
    let c = preset_config(job, config, name)?;
    check_model_fits(job, config, &c, vocab)?;
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
