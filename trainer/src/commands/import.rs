//! `fp8-trainer import`: a GGUF file (llama.cpp, Ollama) as a Hugging Face folder that every
//! command, and `transformers`, loads (docs/design.md, "GGUF").

use std::path::PathBuf;

use clap::Args;

use crate::error::Error;
use crate::gguf::{import_gguf, ImportSummary};

/// `import`'s arguments.
#[derive(Args, Debug)]
pub struct ImportArgs {
    /// The `.gguf` file (F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K, Q5_K and Q6_K tensors are
    /// dequantized to f32).
    #[arg(long)]
    pub gguf: PathBuf,
    /// The folder to write: config.json, model.safetensors, tokenizer.json,
    /// tokenizer_config.json (with the chat template), generation_config.json.
    #[arg(long)]
    pub out: PathBuf,
    /// Replace `--out` if it exists.
    #[arg(long)]
    pub overwrite: bool,
}

/// Runs `import`.
pub fn run_import(args: &ImportArgs) -> Result<ImportSummary, Error> {
    import_gguf(&args.gguf, &args.out, args.overwrite)
}
