//! The job config's one error type.

use std::path::{Path, PathBuf};

use crate::error::FieldError;

/// A job config that cannot be used; always bad input (exit code 2).
#[derive(Debug, thiserror::Error)]
pub enum JobConfigError {
    #[error("{path}: cannot read job config: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not valid JSON: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("{path}: unknown key `{key}`{suggestion} (valid keys here: {valid})")]
    UnknownKey {
        path: PathBuf,
        key: String,
        suggestion: String,
        valid: String,
    },
    #[error(transparent)]
    Field(#[from] FieldError),
    #[error("--set {arg}: {message}")]
    Override { arg: String, message: String },
}

impl JobConfigError {
    /// A field of the job config `path` that cannot be used.
    pub fn field(path: &Path, field: &str, message: impl Into<String>) -> Self {
        Self::Field(FieldError::new(path, field, message))
    }

    /// Always: a job config is the user's input.
    pub fn is_bad_input(&self) -> bool {
        true
    }
}
