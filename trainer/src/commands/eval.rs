//! `fp8-trainer eval --checkpoint DIR (--data PATH | --config JOB.json) [--precision P]`:
//! loss and perplexity of a checkpoint on language-model data, and accuracy on classification
//! data (each label word scored by its log-likelihood), in any precision.
//!
//! With `--config`, the job's `data` section is used (its validation split when it has one,
//! else the training split) and its FP8 options; with `--data`, a text/JSONL file or folder.

use std::path::PathBuf;

use burn::tensor::activation::log_softmax;
use burn::tensor::ElementConversion;
use datasets::{DataConfig, SplitName, TokenizerSpec};
use serde::Serialize;

use crate::checkpoint::load_checkpoint;
use crate::job::{load_job_config, ModelSource, PrecisionConfig};
use crate::job::{Device, JobConfig};
use crate::model::{Gpt2, ModelOptions};
use crate::precision::Precision;
use crate::train::setup::{check_device, JobData};
use crate::train::step::{batch_loss, batch_tensors};
use crate::train::TrainError;

/// The FP8 decorator over the device backend `B` (no autodiff).
type EvalBackend<B> = fp8_backend::Fp8<B>;

/// Arguments of `eval`.
#[derive(Clone, Debug)]
pub struct EvalArgs {
    pub checkpoint: PathBuf,
    /// A text/JSONL file or folder (language-model data).
    pub data: Option<PathBuf>,
    /// A job config whose data section (and FP8 options) to use.
    pub config: Option<PathBuf>,
    pub overrides: Vec<String>,
    /// Overrides the job's precision (default fp32 with `--data`).
    pub precision: Option<Precision>,
    /// With `--data`: tokenizer (default: the checkpoint's own, else gpt2).
    pub tokenizer: Option<TokenizerSpec>,
    /// With `--data`: tokens per sequence (default: min(256, n_positions)).
    pub seq_len: Option<usize>,
    pub batch_size: usize,
    /// Batches to evaluate (0 = all).
    pub max_batches: usize,
    /// Also write the result as JSON here.
    pub out: Option<PathBuf>,
    /// Where to run (default: the job's device with `--config`, else the CPU).
    pub device: Option<Device>,
}

/// What `eval` measured.
#[derive(Clone, Debug, Serialize)]
pub struct EvalResult {
    pub precision: Precision,
    /// Mean next-token cross-entropy (nats/token); absent for classification data.
    pub loss: Option<f64>,
    pub perplexity: Option<f64>,
    pub tokens: u64,
    /// Fraction of examples whose true label word scores highest.
    pub accuracy: Option<f64>,
    pub examples: usize,
}

/// Runs `eval`.
pub fn run_eval(args: &EvalArgs) -> Result<EvalResult, TrainError> {
    let model_config = crate::train::setup::model_config_of_checkpoint(&args.checkpoint)?;
    let (mut job, config_path) = match (&args.config, &args.data) {
        (Some(path), _) => (load_job_config(path, &args.overrides)?, path.clone()),
        (None, Some(data)) => {
            let seq = args.seq_len.unwrap_or(model_config.n_positions.min(256));
            let job = crate::job::JobConfig {
                tokenizer: args.tokenizer.clone(),
                data: DataConfig::new(data.clone(), seq),
                precision: PrecisionConfig {
                    mode: Precision::Fp32,
                    ..PrecisionConfig::default()
                },
                ..minimal_job(&args.checkpoint)
            };
            (job, data.clone())
        }
        (None, None) => {
            return Err(TrainError::RunDir(
                "eval: give --data PATH or --config JOB.json".into(),
            ))
        }
    };
    job.model = ModelSource {
        checkpoint: Some(args.checkpoint.clone()),
        preset: None,
        ..job.model
    };
    if let Some(p) = args.precision {
        job.precision.mode = p;
    }
    let data = crate::train::setup::open_data(&job, &config_path)?;
    crate::train::setup::check_model_fits(
        &job,
        &config_path,
        &model_config,
        data.tokenizer.vocab_size(),
    )?;
    match args.device {
        Some(device) if !device.available() => {
            let why = TrainError::DeviceUnavailable(device);
            return Err(TrainError::RunDir(format!("--device: {why}")));
        }
        Some(device) => job.device = device,
        None => check_device(&job, &config_path)?,
    }
    let result = on_device!(job.device, eval_on(args, &job, &data))?;
    if let Some(out) = &args.out {
        let text = serde_json::to_string_pretty(&result).expect("serialises");
        let staging = out.with_extension("json.tmp");
        std::fs::write(&staging, text).map_err(TrainError::io(&staging))?;
        std::fs::rename(&staging, out).map_err(TrainError::io(out))?;
    }
    Ok(result)
}

/// The evaluation itself, on `device` of the backend `B`.
fn eval_on<B: fp8_backend::Fp8Kernels>(
    args: &EvalArgs,
    job: &JobConfig,
    data: &JobData,
    device: B::Device,
) -> Result<EvalResult, TrainError> {
    let options = ModelOptions {
        dropout: 0.0,
        layer_filter: job.precision.model_filter(),
    };
    let model = load_checkpoint::<EvalBackend<B>>(&args.checkpoint, &options, &device)?;
    let _fp8 = fp8_backend::install(job.precision.policy());
    let limit = if args.max_batches == 0 {
        usize::MAX
    } else {
        args.max_batches
    };

    let split = if job.data.validation != datasets::Validation::None {
        SplitName::Validation
    } else {
        SplitName::Train
    };
    let mut result = EvalResult {
        precision: job.precision.mode,
        loss: None,
        perplexity: None,
        tokens: 0,
        accuracy: None,
        examples: 0,
    };
    if let Some(set) = data.dataset.classification(split) {
        let mut correct = 0;
        for batch in set
            .scoring_batches(args.batch_size, job.data.seq_len)
            .take(limit)
        {
            let scores = row_scores(&model, &batch.batch, &device);
            correct += batch.num_correct(&scores);
            result.examples += batch.gold.len();
        }
        result.accuracy = Some(correct as f64 / result.examples.max(1) as f64);
    } else {
        let loader = match split {
            SplitName::Validation => data
                .dataset
                .validation_loader(args.batch_size)
                .map_err(data.err())?,
            SplitName::Train => Some(
                data.dataset
                    .train_loader(args.batch_size)
                    .map_err(data.err())?,
            ),
        }
        .expect("the split exists");
        let (mut sum, mut n) = (0.0f64, 0u64);
        for batch in loader.eval_pass().take(limit) {
            let tokens = batch.num_loss_tokens() as u64;
            sum += batch_loss(&model, &batch, &device)
                .into_scalar()
                .elem::<f64>()
                * tokens as f64;
            n += tokens;
        }
        let loss = sum / n.max(1) as f64;
        result.loss = Some(loss);
        result.perplexity = Some(loss.exp());
        result.tokens = n;
    }
    Ok(result)
}

/// Log-likelihood of each row's masked-in tokens.
fn row_scores<B: fp8_backend::Fp8Kernels>(
    model: &Gpt2<EvalBackend<B>>,
    batch: &datasets::Batch,
    device: &B::Device,
) -> Vec<f32> {
    let (inputs, targets, mask) = batch_tensors::<EvalBackend<B>>(batch, device);
    let logits = model.forward(inputs);
    let [b, t, _] = logits.dims();
    let logp = log_softmax(logits, 2)
        .gather(2, targets.unsqueeze_dim(2))
        .reshape([b, t]);
    let logp = match mask {
        Some(mask) => logp * mask,
        None => logp,
    };
    logp.sum_dim(1)
        .into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .expect("f32")
}

fn minimal_job(checkpoint: &std::path::Path) -> crate::job::JobConfig {
    serde_json::from_value(serde_json::json!({
        "name": "eval",
        "model": {"checkpoint": checkpoint},
        "data": {"train": ".", "seq_len": 1},
        "steps": 1
    }))
    .expect("a valid minimal job")
}
