//! GGUF checkpoints (llama.cpp's and Ollama's format) into Hugging Face folders: `fp8-trainer
//! import` reads a `.gguf` file ([`file`]), dequantizes its tensors to f32 ([`dequant`]),
//! renames them to the Hugging Face names and undoes llama.cpp's Q/K row order ([`import`]),
//! rebuilds `config.json` from its metadata and `tokenizer.json` / `tokenizer_config.json` /
//! `generation_config.json` from its tokenizer keys ([`tokenizer`]), and writes the folder
//! atomically. Every command then takes the folder as any checkpoint (docs/design.md, "GGUF").
//!
//! Why a hand-written reader, not a crate: `gguf-rs` turns on serde_json's
//! `arbitrary_precision` for the whole build (which changes how numbers deserialize in untagged
//! enums) and reads strings lossily; `ggus` reads enum discriminants straight from the file's
//! bytes and sizes allocations by the header's counts unchecked; `ggml-quants` leaves the
//! K-quants' dequantization unimplemented (`todo!()`); candle's reader comes with candle's
//! whole tensor library. The container is small (gguf.h), and a reader that checks every count
//! against the bytes present is what a file from the internet needs.

pub mod dequant;
pub mod file;
pub mod import;
pub mod tokenizer;

use std::path::{Path, PathBuf};

pub use dequant::GgmlType;
pub use file::{GgufFile, MetaValue, TensorInfo};
pub use import::{import_gguf, ImportSummary};

/// Why a GGUF file cannot be imported.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    /// The file is malformed or describes something the importer does not handle; `what` names
    /// the key, tensor or part of the file.
    #[error("{path}: {what}: {message}")]
    Bad {
        path: PathBuf,
        what: String,
        message: String,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl GgufError {
    pub(crate) fn bad(path: &Path, what: &str, message: impl Into<String>) -> Self {
        Self::Bad {
            path: path.to_path_buf(),
            what: what.to_string(),
            message: message.into(),
        }
    }

    /// A malformed or unsupported file is bad input; a failing read is not.
    pub fn is_bad_input(&self) -> bool {
        match self {
            Self::Bad { .. } => true,
            Self::Io { source, .. } => {
                source.kind() == std::io::ErrorKind::NotFound || datasets::input::is_refused(source)
            }
        }
    }
}
