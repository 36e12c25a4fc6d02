//! `fp8-trainer logits`: the logits of one sequence as JSON, a parity-debugging tool.

use std::path::PathBuf;

use burn::tensor::{Int, Tensor, TensorData};
use fp8_backend::Precision;
use serde_json::json;

use super::{check_tokens, parse_token_list, policy_of};
use crate::checkpoint::load_checkpoint;
use crate::device::CpuBackend;
use crate::error::Error;
use crate::model::ModelOptions;

/// Arguments of `logits`.
#[derive(Clone, Debug, clap::Args)]
pub struct LogitsArgs {
    /// Checkpoint directory (config.json + model.safetensors).
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Token ids, comma-separated: 1,2,3 (at most the context length).
    #[arg(long)]
    pub tokens: String,
    /// Output JSON file: {"logits": [[...vocab...] per position]}.
    #[arg(long)]
    pub out: PathBuf,
    /// fp32 | fp8-amax | fp8-cscale.
    #[arg(long, default_value = "fp32")]
    pub precision: Precision,
}

/// Runs `logits`.
pub fn run_logits(args: &LogitsArgs) -> Result<(), Error> {
    let tokens = parse_token_list("--tokens", &args.tokens)?;
    let device = Default::default();
    let options = ModelOptions {
        fp8: policy_of(args.precision),
        ..ModelOptions::default()
    };
    let model = load_checkpoint::<CpuBackend>(&args.checkpoint, &options, &device)?;
    let config = model.config();
    check_tokens("--tokens", &tokens, &config)?;

    let ids: Vec<i64> = tokens.iter().map(|&t| t as i64).collect();
    let input =
        Tensor::<CpuBackend, 2, Int>::from_data(TensorData::new(ids, [1, tokens.len()]), &device);
    let logits: Vec<f32> = model
        .forward(input)
        .into_data()
        .convert::<f32>()
        .into_vec()
        .expect("converted to f32");
    let rows: Vec<&[f32]> = logits.chunks(config.vocab_size()).collect();

    let text = serde_json::to_string(&json!({ "logits": rows })).expect("floats serialise");
    datasets::atomic::write_atomic(&args.out, text.as_bytes()).map_err(Error::io(&args.out))
}
