//! `fp8-trainer logits`: the logits of one sequence as JSON, a parity-debugging tool.

use std::path::PathBuf;

use burn::tensor::{Int, Tensor, TensorData};
use serde_json::json;

use super::{check_tokens, install_precision, CommandError, CpuBackend};
use crate::checkpoint::load_checkpoint;
use crate::model::ModelOptions;
use crate::precision::Precision;

/// Arguments of `logits`.
#[derive(Clone, Debug)]
pub struct LogitsArgs {
    /// Checkpoint directory (config.json + model.safetensors).
    pub checkpoint: PathBuf,
    /// The sequence, at most `n_positions` tokens.
    pub tokens: Vec<u32>,
    /// Output file: `{"logits": [[...vocab...] per position]}`.
    pub out: PathBuf,
    /// Numeric precision of the forward pass.
    pub precision: Precision,
}

/// Runs `logits`.
pub fn run_logits(args: &LogitsArgs) -> Result<(), CommandError> {
    let _fp8 = install_precision(args.precision);
    let device = Default::default();
    let model = load_checkpoint::<CpuBackend>(&args.checkpoint, &ModelOptions::default(), &device)?;
    let config = model.config();
    check_tokens(
        "--tokens",
        &args.tokens,
        config.vocab_size,
        config.n_positions,
    )?;

    let ids: Vec<i64> = args.tokens.iter().map(|&t| t as i64).collect();
    let input = Tensor::<CpuBackend, 2, Int>::from_data(
        TensorData::new(ids, [1, args.tokens.len()]),
        &device,
    );
    let logits: Vec<f32> = model
        .forward(input)
        .into_data()
        .convert::<f32>()
        .into_vec()
        .expect("converted to f32");
    let rows: Vec<&[f32]> = logits.chunks(config.vocab_size).collect();

    let text = serde_json::to_string(&json!({ "logits": rows })).expect("floats serialise");
    std::fs::write(&args.out, text).map_err(|source| CommandError::Write {
        path: args.out.clone(),
        source,
    })
}
