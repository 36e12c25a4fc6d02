//! The one error type of the `fp8-trainer` commands, and its exit code (docs/design.md, "CLI"):
//! 2 for bad input (the message names the file and the field, line or tensor), 1 otherwise.

use std::path::{Path, PathBuf};

use crate::checkpoint::CheckpointError;
use crate::job::{Device, JobConfigError};

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] JobConfigError),
    /// A job config field that parsed but cannot be used.
    #[error("{file}: field `{field}`: {message}")]
    Field {
        file: PathBuf,
        field: String,
        message: String,
    },
    #[error("{file}: field `data`: {source}")]
    Data {
        file: PathBuf,
        source: datasets::DataError,
    },
    /// Data named by a command-line flag (`eval --data`); the error names the file itself.
    #[error("{flag}: {source}")]
    DataArgument {
        flag: &'static str,
        source: datasets::DataError,
    },
    /// Another job holds the run directory (its `.lock`).
    #[error(
        "{dir}: another job is running in this run directory ({holder}); wait for it to \
         finish, stop it, or give this job another `name`",
        holder = holder(.pid)
    )]
    RunDirInUse { dir: PathBuf, pid: Option<u32> },
    /// The tokenizer a job config (`file`) or a command-line flag names.
    #[error("{origin}: {source}")]
    Tokenizer {
        origin: String,
        source: datasets::TokenizerError,
    },
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// A bad command-line argument.
    #[error("{flag}: {message}")]
    Argument { flag: &'static str, message: String },
    /// An input file that cannot be used (training state, token list, run directory).
    #[error("{path}: {message}")]
    BadFile { path: PathBuf, message: String },
    #[error("device `{name}` is not available in this build: rebuild with `--features trainer/{name}` (or use \"cpu\")", name = .0.name())]
    DeviceUnavailable(Device),
    /// Reading or writing failed for a reason of the system's (disk full, permissions).
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("stopped at step {step}: {reason} (non_finite policy `stop`; the last good checkpoint is kept)")]
    NonFinite { step: u64, reason: String },
    #[error("refusing to write checkpoint {step}: parameter `{param}` is not finite")]
    NonFiniteCheckpoint { step: u64, param: String },
    #[error("cannot draw the loss plot in {dir}: {message}")]
    Plot { dir: PathBuf, message: String },
}

impl Error {
    /// 2 for bad input, 1 for anything else.
    pub fn exit_code(&self) -> u8 {
        use datasets::TokenizerError as T;
        let bad_input = match self {
            Self::Data { source, .. } | Self::DataArgument { source, .. } => source.is_bad_input(),
            Self::Config(_)
            | Self::Field { .. }
            | Self::RunDirInUse { .. }
            | Self::Argument { .. }
            | Self::BadFile { .. }
            | Self::DeviceUnavailable(_) => true,
            Self::Tokenizer { source, .. } => matches!(
                source,
                T::Io { .. } | T::Parse { .. } | T::NoEndOfText { .. } | T::NotATokenizer { .. }
            ),
            Self::Checkpoint(e) => e.is_bad_input(),
            Self::Io { .. }
            | Self::NonFinite { .. }
            | Self::NonFiniteCheckpoint { .. }
            | Self::Plot { .. } => false,
        };
        if bad_input {
            2
        } else {
            1
        }
    }

    /// Maps an I/O error on `path` (for `map_err`).
    pub(crate) fn io(path: impl AsRef<Path>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.as_ref().to_path_buf();
        move |source| Self::Io { path, source }
    }

    /// A field of the job config `file` that cannot be used.
    pub(crate) fn field(file: &Path, field: &str, message: impl Into<String>) -> Self {
        Self::Field {
            file: file.to_path_buf(),
            field: field.to_string(),
            message: message.into(),
        }
    }
}

/// The holder of a run directory's lock, for its message.
fn holder(pid: &Option<u32>) -> String {
    match pid {
        Some(pid) => format!("PID {pid}"),
        None => "PID unknown: it has not written it yet".into(),
    }
}
