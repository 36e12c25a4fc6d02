//! Checkpoint errors: each names the file and, where there is one, the tensor.

use std::path::PathBuf;

use fp8_backend::LayerFilterError;

use crate::model::ModelConfigError;

/// Why a checkpoint could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error(transparent)]
    Config(#[from] ModelConfigError),
    #[error(transparent)]
    LayerFilter(#[from] LayerFilterError),
    #[error(
        "{dir}: no model.safetensors or model.safetensors.index.json (a checkpoint directory holds \
         config.json and model.safetensors, as downloaded from the Hugging Face hub)"
    )]
    NoWeights { dir: PathBuf },
    #[error(
        "{path}: PyTorch pickle checkpoints are not supported; convert it once with \
         `python -c \"from transformers import GPT2LMHeadModel as M; M.from_pretrained('{dir}').save_pretrained('{dir}')\"` \
         (writes model.safetensors)"
    )]
    PytorchUnsupported { path: PathBuf, dir: String },
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a safetensors file: {reason}")]
    NotSafetensors { path: PathBuf, reason: String },
    #[error(
        "{path} is truncated: tensor `{tensor}` needs bytes {start}..{end} of the data section, \
         which has only {available} bytes (re-download the file)"
    )]
    Truncated {
        path: PathBuf,
        tensor: String,
        start: usize,
        end: usize,
        available: usize,
    },
    #[error("{path}: bad shard index: {reason}")]
    BadIndex { path: PathBuf, reason: String },
    #[error("{path}: tensor `{tensor}` is missing (the model has it; the checkpoint does not)")]
    MissingTensor { path: PathBuf, tensor: String },
    #[error(
        "{path}: tensor `{tensor}` is not a parameter of this {family} model (wrong config.json, \
         or a checkpoint of another architecture?)"
    )]
    UnexpectedTensor {
        path: PathBuf,
        tensor: String,
        family: &'static str,
    },
    #[error("{path}: tensor `{tensor}` appears twice (as `{first}` and `{second}`)")]
    DuplicateTensor {
        path: PathBuf,
        tensor: String,
        first: String,
        second: String,
    },
    #[error("{path}: tensor `{tensor}` has shape {found:?}, but config.json implies {expected:?}")]
    ShapeMismatch {
        path: PathBuf,
        tensor: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    #[error("{path}: tensor `{tensor}` has dtype {dtype}; supported: F32, F16, BF16, F64")]
    UnsupportedDtype {
        path: PathBuf,
        tensor: String,
        dtype: String,
    },
    #[error(
        "{path}: `{head}` differs from `{embedding}` but config.json has \
         tie_word_embeddings = true (set it to false to load a separate head)"
    )]
    UntiedHead {
        path: PathBuf,
        head: String,
        embedding: String,
    },
    #[error(
        "{path}: tensor `{tensor}` holds a non-finite value ({value} at element {index}); the \
         checkpoint is corrupt or diverged (use an earlier one)"
    )]
    NonFinite {
        path: PathBuf,
        tensor: String,
        index: usize,
        value: f32,
    },
    #[error("{path}: {message}")]
    BadAdapter { path: PathBuf, message: String },
    #[error(
        "{path}: tensor `{tensor}` is not a LoRA factor of this model's adapted projections \
         (an adapter of another model, or of other target_modules?)"
    )]
    UnexpectedAdapterTensor { path: PathBuf, tensor: String },
    #[error("cannot write checkpoint {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl CheckpointError {
    /// True when the checkpoint on disk is at fault (exit code 2), false for failures of
    /// ours or the system's while writing (exit code 1).
    pub fn is_bad_input(&self) -> bool {
        !matches!(self, Self::Write { .. })
    }
}
