//! `fp8-trainer eval --checkpoint DIR (--data PATH | --config JOB.json) [--precision P]`:
//! loss and perplexity of a checkpoint on language-model data, and accuracy on classification
//! data (each label word scored by its log-likelihood), in any precision.
//!
//! With `--config`, the job's `data` section is used (its validation split when it has one,
//! else the training split) and its FP8 options; with `--data`, a text/JSONL file or folder.

use std::path::PathBuf;

use datasets::{DataConfig, SplitName, TokenizerSpec};
use fp8_backend::{Fp8Kernels, Fp8Policy, Precision};
use serde::Serialize;

use crate::checkpoint::load_checkpoint;
use crate::error::Error;
use crate::job::assemble::{
    check_device, check_model_fits, model_config_of_checkpoint, open_data_from, DataOrigin, JobData,
};
use crate::job::{load_job_config, Device, JobConfig, ModelSource};
use crate::model::loss::{mean_loss, row_scores};
use crate::model::ModelOptions;
use crate::train::resume::inference_histories;

/// The FP8 decorator over the device backend `B` (no autodiff).
type EvalBackend<B> = fp8_backend::Fp8<B>;

/// Arguments of `eval`.
#[derive(Clone, Debug, clap::Args)]
pub struct EvalArgs {
    /// Checkpoint directory (config.json + model.safetensors).
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Text/JSONL file or folder to evaluate on (language-model data).
    #[arg(long, required_unless_present = "config")]
    pub data: Option<PathBuf>,
    /// Or: a job config whose data section (validation split if any) and FP8 options to use.
    #[arg(long, conflicts_with = "data")]
    pub config: Option<PathBuf>,
    /// Config overrides with --config: key.sub=value.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
    /// fp32 | fp8-amax | fp8-cscale (default: the job's, or fp32 with --data).
    #[arg(long)]
    pub precision: Option<Precision>,
    /// Tokenizer with --data: gpt2, bytes, or a tokenizer.json / folder (default: the checkpoint's).
    #[arg(long)]
    pub tokenizer: Option<TokenizerSpec>,
    /// Tokens per sequence with --data (default min(256, n_positions)).
    #[arg(long)]
    pub seq_len: Option<usize>,
    /// Sequences (or classification examples) per batch.
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    /// Batches to evaluate (0 = all).
    #[arg(long, default_value_t = 0)]
    pub max_batches: usize,
    /// Also write the result as JSON.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// cpu | wgpu | cuda (default: the job's with --config, else cpu; wgpu and cuda need the
    /// cargo feature of that name).
    #[arg(long)]
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

impl EvalResult {
    /// What `eval` prints.
    pub fn summary(&self) -> String {
        let mut lines = Vec::new();
        if let (Some(loss), Some(ppl)) = (self.loss, self.perplexity) {
            lines.push(format!(
                "precision {}: loss {loss:.4}, perplexity {ppl:.2} over {} tokens",
                self.precision, self.tokens
            ));
        }
        if let Some(acc) = self.accuracy {
            lines.push(format!(
                "precision {}: accuracy {acc:.4} over {} examples",
                self.precision, self.examples
            ));
        }
        lines.join("\n")
    }
}

/// Runs `eval`.
pub fn run_eval(args: &EvalArgs) -> Result<EvalResult, Error> {
    let model_config = model_config_of_checkpoint(&args.checkpoint)?;
    let (mut job, config_path) = match (&args.config, &args.data) {
        (Some(path), _) => (load_job_config(path, &args.overrides)?, path.clone()),
        (None, Some(data)) => {
            let seq = args.seq_len.unwrap_or(model_config.n_positions.min(256));
            let job = JobConfig {
                tokenizer: args.tokenizer.clone(),
                data: DataConfig::new(data.clone(), seq),
                precision: Fp8Policy::off(),
                ..minimal_job(&args.checkpoint)
            };
            (job, data.clone())
        }
        (None, None) => {
            return Err(Error::Argument {
                flag: "--data",
                message: "give --data PATH or --config JOB.json".into(),
            })
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
    let from_flags = args.config.is_none();
    let origin = match from_flags {
        true => DataOrigin::Flags,
        false => DataOrigin::Config(config_path.clone()),
    };
    let data = open_data_from(&job, origin)?;
    let vocab = data.tokenizer.vocab_size();
    check_model_fits(&job, &config_path, &model_config, vocab).map_err(|e| match e {
        // With --data there is no job config: name the flag the setting came from.
        Error::Field { field, message, .. } if from_flags => Error::Argument {
            flag: match field.as_str() {
                "data.seq_len" => "--seq-len",
                "model.vocab_size" => "--tokenizer",
                _ => "--precision",
            },
            message,
        },
        other => other,
    })?;
    match args.device {
        Some(device) if !device.available() => {
            let message = Error::DeviceUnavailable(device).to_string();
            return Err(Error::Argument {
                flag: "--device",
                message,
            });
        }
        Some(device) => job.device = device,
        None => check_device(&job, &config_path)?,
    }
    let result = on_device!(job.device, eval_on(args, &job, &data))?;
    if let Some(out) = &args.out {
        let text = serde_json::to_string_pretty(&result).expect("serialises");
        datasets::atomic::write_atomic(out, text.as_bytes()).map_err(Error::io(out))?;
    }
    Ok(result)
}

/// The evaluation itself, on `device` of the backend `B`.
fn eval_on<B: Fp8Kernels + crate::host::HostTensors>(
    args: &EvalArgs,
    job: &JobConfig,
    data: &JobData,
    device: B::Device,
) -> Result<EvalResult, Error> {
    let options = ModelOptions {
        dropout: 0.0,
        fp8: job.precision.clone(),
    };
    let model = load_checkpoint::<EvalBackend<B>>(&args.checkpoint, &options, &device)?;
    let _frozen = inference_histories(&args.checkpoint, &model)?;
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
        let pass = mean_loss(&model, loader.eval_pass().take(limit), &device);
        let loss = pass.map_or(0.0, |p| p.loss);
        result.loss = Some(loss);
        result.perplexity = Some(loss.exp());
        result.tokens = pass.map_or(0, |p| p.tokens);
    }
    Ok(result)
}

fn minimal_job(checkpoint: &std::path::Path) -> JobConfig {
    serde_json::from_value(serde_json::json!({
        "name": "eval",
        "model": {"checkpoint": checkpoint},
        "data": {"train": ".", "seq_len": 1},
        "steps": 1
    }))
    .expect("a valid minimal job")
}
