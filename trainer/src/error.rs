//! The one error type of the `fp8-trainer` commands, the one field error of every config the
//! trainer reads, and the process's exit codes, decided here (docs/design.md, "CLI"): 2 for
//! bad input (the message names the file and the field, line or tensor), 1 otherwise, 130
//! interrupted. Whether an error is bad input is decided where its type is defined
//! (`is_bad_input`); [`Error::exit`] only asks.

use std::path::{Path, PathBuf};

use crate::checkpoint::CheckpointError;
use crate::device::Device;
use crate::job::JobConfigError;

/// How the process ends.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Exit {
    #[default]
    Success,
    /// Anything that is not the input's fault: I/O while writing, a non-finite `stop`, a failed
    /// data-parallel peer or node.
    Failure,
    /// Bad input: config, data, checkpoint, arguments, training state.
    BadInput,
    /// Ctrl-C, SIGTERM or SIGHUP.
    Interrupted,
}

impl Exit {
    /// The process's exit code.
    pub fn code(self) -> u8 {
        match self {
            Self::Success => 0,
            Self::Failure => 1,
            Self::BadInput => 2,
            Self::Interrupted => 130,
        }
    }

    /// Ends the process at once with this exit code, after saying `message` (an error is
    /// logged, `error: ...` on stderr and in the run's log; an interruption is a note on
    /// stderr): for a thread that cannot hand an error back to the job's thread (a failed
    /// data-parallel peer, the node watchdog, a panic hook) and for a second Ctrl-C.
    pub fn now(self, message: &str) -> ! {
        match self {
            Self::Failure | Self::BadInput => log::error!("{message}"),
            Self::Success | Self::Interrupted => eprintln!("\n{message}"),
        }
        std::process::exit(i32::from(self.code()))
    }
}

/// A field of a config file (the job config, a checkpoint's `config.json`) that parsed but
/// cannot be used: the one field error every config error of the trainer uses.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{path}: field `{field}`: {message}")]
pub struct FieldError {
    pub path: PathBuf,
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(path: &Path, field: &str, message: impl Into<String>) -> Self {
        Self {
            path: path.to_path_buf(),
            field: field.to_string(),
            message: message.into(),
        }
    }
}

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] JobConfigError),
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
    /// A GGUF file to import.
    #[error(transparent)]
    Gguf(#[from] crate::gguf::GgufError),
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
    /// [`Exit::BadInput`] for bad input, [`Exit::Failure`] for anything else.
    pub fn exit(&self) -> Exit {
        let bad_input = match self {
            Self::Config(e) => e.is_bad_input(),
            Self::Data { source, .. } | Self::DataArgument { source, .. } => source.is_bad_input(),
            Self::Tokenizer { source, .. } => source.is_bad_input(),
            Self::Checkpoint(e) => e.is_bad_input(),
            Self::Gguf(e) => e.is_bad_input(),
            Self::RunDirInUse { .. }
            | Self::Argument { .. }
            | Self::BadFile { .. }
            | Self::DeviceUnavailable(_) => true,
            // A file refused before it was read (a FIFO, a device, over its size limit).
            Self::Io { source, .. } => datasets::input::is_refused(source),
            Self::NonFinite { .. } | Self::NonFiniteCheckpoint { .. } | Self::Plot { .. } => false,
        };
        if bad_input {
            Exit::BadInput
        } else {
            Exit::Failure
        }
    }

    /// The process's exit code for this error.
    pub fn exit_code(&self) -> u8 {
        self.exit().code()
    }

    /// Maps an I/O error on `path` (for `map_err`).
    pub(crate) fn io(path: impl AsRef<Path>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.as_ref().to_path_buf();
        move |source| Self::Io { path, source }
    }

    /// A field of the job config `file` that cannot be used.
    pub(crate) fn field(file: &Path, field: &str, message: impl Into<String>) -> Self {
        Self::Config(JobConfigError::Field(FieldError::new(file, field, message)))
    }
}

/// The holder of a run directory's lock, for its message.
fn holder(pid: &Option<u32>) -> String {
    match pid {
        Some(pid) => format!("PID {pid}"),
        None => "PID unknown: it has not written it yet".into(),
    }
}
