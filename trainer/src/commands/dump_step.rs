//! `fp8-trainer dump-step --config FILE --out FILE.safetensors`: one forward/backward on the
//! job's first batch (no optimizer step), written as `loss` (scalar), `logits` `[B, T, V]` and
//! the gradient of every parameter under its Hugging Face name in the Hugging Face layout
//! (Conv1D weights `[in, out]`) — llm.c's debug-state habit, for parity against PyTorch.
//!
//! `--tokens FILE` replaces the first batch with exactly `B*T + 1` token ids (a JSON list, or a JSON
//! object with a `tokens` list such as the fixture's `reference.json`), read as a data window.

use std::path::{Path, PathBuf};

use burn::module::AutodiffModule;
use datasets::{DataLoader, WindowOrder};

use crate::checkpoint::{write_safetensors, NamedTensor};
use crate::device::{DeviceBackend, InferenceBackend};
use crate::error::Error;
use crate::job::assemble::{build_model, open_data};
use crate::job::{check, load_job_config, JobConfig};
use crate::model::loss::batch_inputs;
use crate::train::run_dir::{write_fp8_stats, Fp8StatsRow};
use crate::train::step::{gradients, Share, StepOptions};

/// Arguments of `dump-step`.
#[derive(Clone, Debug, clap::Args)]
pub struct DumpStepArgs {
    /// Job config (JSON).
    #[arg(long)]
    pub config: PathBuf,
    /// Config overrides: key.sub=value.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
    /// Output safetensors file.
    #[arg(long)]
    pub out: PathBuf,
    /// Token ids for the batch instead of the data (JSON list, or an object with `tokens`).
    #[arg(long)]
    pub tokens: Option<PathBuf>,
    /// Also write the step's FP8 statistics (the columns of fp8_stats.csv, step 1).
    #[arg(long)]
    pub fp8_stats: Option<PathBuf>,
}

/// Runs `dump-step` on the job's device; returns the loss.
pub fn run_dump_step(args: &DumpStepArgs) -> Result<f32, Error> {
    let job = load_job_config(&args.config, &args.overrides)?;
    check::device(&job, &args.config)?;
    on_device!(job.device, dump_on(args, &job))
}

fn dump_on<B: DeviceBackend>(
    args: &DumpStepArgs,
    job: &JobConfig,
    device: B::Device,
) -> Result<f32, Error> {
    let data = open_data(job, &args.config)?;
    let model = build_model::<B>(job, &args.config, data.tokenizer.vocab_size(), &device)?;
    let mut loader = match &args.tokens {
        None => data
            .dataset
            .train_loader(job.batch_size)
            .map_err(data.err())?,
        Some(path) => {
            let tokens = read_tokens(path)?;
            let vocab_size = model.config().vocab_size();
            if let Some((i, bad)) = tokens
                .iter()
                .enumerate()
                .find(|(_, t)| **t as usize >= vocab_size)
            {
                return Err(Error::BadFile {
                    path: path.clone(),
                    message: format!(
                        "token {bad} (at index {i}) is outside the model's vocabulary \
                         (vocab_size = {vocab_size})"
                    ),
                });
            }
            let needed = job.batch_size * job.data.seq_len + 1;
            // Exactly: a longer list would be cut without a word (a list for another shape).
            if tokens.len() != needed {
                return Err(Error::BadFile {
                    path: path.clone(),
                    message: format!(
                        "{} tokens, but batch_size * seq_len + 1 = {needed} = {} * {} + 1 are \
                         needed (one batch, as a data window)",
                        tokens.len(),
                        job.batch_size,
                        job.data.seq_len
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
    // The logits of the same batch (a forward without autodiff; the casts are deterministic,
    // so they are the logits of the step's own forward).
    let batch = loader.clone().next_batch();
    let inputs = batch_inputs::<InferenceBackend<B>>(&batch, &device);
    let segments = crate::model::Segments::of(&batch);
    let logits = model.valid().forward_packed(inputs, segments.as_ref());
    let logits_shape = logits.dims().to_vec();
    let logits = logits
        .into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .expect("f32");
    let options = StepOptions {
        grad_accum: 1,
        stats: args.fp8_stats.is_some() && job.precision.is_fp8(),
        loss_factor: None,
        activation_checkpointing: job.activation_checkpointing,
        seed: job.seed,
    };
    let shares = vec![Share::whole(loader.next_batch())];
    let out = gradients(&model, shares, &options, &device, None);
    let mut tensors = vec![
        NamedTensor {
            name: "loss".into(),
            shape: vec![],
            values: vec![out.loss],
        },
        NamedTensor {
            name: "logits".into(),
            shape: logits_shape,
            values: logits,
        },
    ];
    let shapes = crate::model::names::param_shapes(&model);
    for ((name, shape), grad) in shapes.into_iter().zip(out.grads) {
        if let Some(grad) = grad {
            let values = grad
                .into_data()
                .convert::<f32>()
                .into_vec::<f32>()
                .expect("f32");
            tensors.push(NamedTensor {
                name,
                shape,
                values,
            });
        }
    }
    write_safetensors(&args.out, &tensors).map_err(Error::io(&args.out))?;
    if let Some(path) = &args.fp8_stats {
        let rows: Vec<Fp8StatsRow> = out
            .report
            .records
            .iter()
            .map(|r| Fp8StatsRow::of(1, r))
            .collect();
        write_fp8_stats(path, &rows)?;
    }
    Ok(out.loss)
}

fn read_tokens(path: &Path) -> Result<Vec<u32>, Error> {
    let bad = |message: String| Error::BadFile {
        path: path.to_path_buf(),
        message,
    };
    // An input file the user names: missing, unreadable or not text is bad input (exit 2).
    let bytes = datasets::input::read_limited(path, datasets::input::CONFIG_LIMIT, "token list")
        .map_err(|e| bad(format!("cannot read the token list: {e}")))?;
    let text = String::from_utf8(bytes).map_err(|e| {
        let at = e.utf8_error().valid_up_to();
        bad(format!(
            "not UTF-8 text (invalid byte at offset {at}); expected a JSON list of token ids"
        ))
    })?;
    let value: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    let list = value.get("tokens").unwrap_or(&value);
    serde_json::from_value(list.clone())
        .map_err(|e| bad(format!("expected a list of token ids: {e}")))
}
