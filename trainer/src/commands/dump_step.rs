//! `fp8-trainer dump-step --config FILE --out FILE.safetensors`: one forward/backward on the
//! job's first batch (no optimizer step), written as `loss` (scalar) and the gradient of every
//! parameter under its Hugging Face name in the Hugging Face layout (Conv1D weights
//! `[in, out]`) — llm.c's debug-state habit, for parity against PyTorch.
//!
//! `--tokens FILE` replaces the first batch with `B*T + 1` token ids (a JSON list, or a JSON
//! object with a `tokens` list such as the fixture's `reference.json`), read as a data window.

use std::path::PathBuf;

use datasets::{DataLoader, WindowOrder};

use crate::checkpoint::{write_safetensors, NamedTensor};
use crate::job::load_job_config;
use crate::train::setup::{build_model, check_device, open_data};
use crate::train::step::forward_backward;
use crate::train::TrainError;

/// Arguments of `dump-step`.
#[derive(Clone, Debug)]
pub struct DumpStepArgs {
    pub config: PathBuf,
    pub overrides: Vec<String>,
    pub out: PathBuf,
    /// Token ids replacing the first batch.
    pub tokens: Option<PathBuf>,
}

/// Runs `dump-step` on the job's device; returns the loss.
pub fn run_dump_step(args: &DumpStepArgs) -> Result<f32, TrainError> {
    let job = load_job_config(&args.config, &args.overrides)?;
    check_device(&job, &args.config)?;
    on_device!(job.device, dump_on(args, &job))
}

fn dump_on<B: fp8_backend::Fp8Kernels>(
    args: &DumpStepArgs,
    job: &crate::job::JobConfig,
    device: B::Device,
) -> Result<f32, TrainError> {
    let data = open_data(job, &args.config)?;
    let model = build_model::<B>(job, &args.config, data.tokenizer.vocab_size(), &device)?;
    let mut loader = match &args.tokens {
        None => data
            .dataset
            .train_loader(job.batch_size)
            .map_err(data.err())?,
        Some(path) => {
            let tokens = read_tokens(path)?;
            let needed = job.batch_size * job.data.seq_len + 1;
            if tokens.len() < needed {
                return Err(TrainError::BadFile {
                    path: path.clone(),
                    message: format!(
                        "{} tokens, but batch_size * seq_len + 1 = {needed} are needed",
                        tokens.len()
                    ),
                });
            }
            DataLoader::from_tokens(
                tokens[..needed].to_vec(),
                job.batch_size,
                job.data.seq_len,
                WindowOrder::Sequential,
            )
            .map_err(data.err())?
        }
    };
    let out = forward_backward(
        &model,
        &mut loader,
        1,
        job.precision.policy(),
        false,
        &device,
    );
    let mut tensors = vec![NamedTensor {
        name: "loss".into(),
        shape: vec![],
        values: vec![out.loss],
    }];
    let shapes = crate::model::names::param_shapes(&model);
    for ((name, shape), grad) in shapes.into_iter().zip(out.grads) {
        if let Some(values) = grad {
            tensors.push(NamedTensor {
                name,
                shape,
                values,
            });
        }
    }
    write_safetensors(&args.out, &tensors).map_err(TrainError::io(&args.out))?;
    Ok(out.loss)
}

fn read_tokens(path: &PathBuf) -> Result<Vec<u32>, TrainError> {
    let bad = |message: String| TrainError::BadFile {
        path: path.clone(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(TrainError::io(path))?;
    let value: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    let list = value.get("tokens").unwrap_or(&value);
    serde_json::from_value(list.clone())
        .map_err(|e| bad(format!("expected a list of token ids: {e}")))
}
