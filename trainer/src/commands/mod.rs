//! The `fp8-trainer` subcommands as library functions; `main.rs` only parses arguments.

pub mod compare;
pub mod dump_step;
pub mod eval;
pub mod generate;
pub mod logits;
pub mod train;

use std::path::PathBuf;

use crate::checkpoint::CheckpointError;
use crate::precision::Precision;

pub use generate::{run_generate, GenerateArgs};
pub use logits::{run_logits, LogitsArgs};

/// The CPU backend the inspection commands run on: the FP8 decorator over ndarray, which is
/// bit-identical to plain ndarray while no FP8 policy is installed (`--precision fp32`).
pub type CpuBackend = fp8_backend::Fp8<burn::backend::NdArray<f32>>;

/// Why a command failed; [`CommandError::exit_code`] follows DESIGN.md (2 bad input, 1 other).
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error("{flag}: {message}")]
    BadArgument { flag: &'static str, message: String },
    #[error(transparent)]
    Tokenizer(#[from] datasets::TokenizerError),
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl CommandError {
    /// 2 for bad input (checkpoint, arguments), 1 for anything else.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Checkpoint(e) if e.is_bad_input() => 2,
            Self::BadArgument { .. } => 2,
            Self::Tokenizer(
                datasets::TokenizerError::Io { .. }
                | datasets::TokenizerError::Parse { .. }
                | datasets::TokenizerError::NoEndOfText { .. }
                | datasets::TokenizerError::NotATokenizer { .. },
            ) => 2,
            _ => 1,
        }
    }
}

/// Parses `1,2,3` into token ids (`flag` names the argument in errors).
pub fn parse_token_list(flag: &'static str, list: &str) -> Result<Vec<u32>, CommandError> {
    let tokens = list
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<u32>().map_err(|_| CommandError::BadArgument {
                flag,
                message: format!("`{s}` is not a token id"),
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    if tokens.is_empty() {
        return Err(CommandError::BadArgument {
            flag,
            message: "no tokens given".into(),
        });
    }
    Ok(tokens)
}

/// Checks tokens against the model's vocabulary and context length.
pub fn check_tokens(
    flag: &'static str,
    tokens: &[u32],
    vocab_size: usize,
    n_positions: usize,
) -> Result<(), CommandError> {
    if let Some(bad) = tokens.iter().find(|&&t| t as usize >= vocab_size) {
        return Err(CommandError::BadArgument {
            flag,
            message: format!("token {bad} is outside the vocabulary (vocab_size = {vocab_size})"),
        });
    }
    if tokens.len() > n_positions {
        return Err(CommandError::BadArgument {
            flag,
            message: format!(
                "{} tokens exceed the context length (n_positions = {n_positions})",
                tokens.len()
            ),
        });
    }
    Ok(())
}

/// Installs the FP8 policy of `precision` (the job config's defaults: Graphcore formats, margins
/// 0/0/3, CSCALE bias 0) on this thread for as long as the guard lives.
fn install_precision(precision: Precision) -> fp8_backend::Fp8Guard {
    let config = crate::job::PrecisionConfig {
        mode: precision,
        ..Default::default()
    };
    fp8_backend::install(config.policy())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_lists_parse_and_fail_with_the_flag_named() {
        assert_eq!(
            parse_token_list("--tokens", "1, 2,3").unwrap(),
            vec![1, 2, 3]
        );
        let err = parse_token_list("--tokens", "1,x").unwrap_err();
        assert_eq!(err.exit_code(), 2);
        assert!(err.to_string().contains("--tokens") && err.to_string().contains("`x`"));
        assert!(parse_token_list("--tokens", "").is_err());
        assert!(check_tokens("--tokens", &[511, 512], 512, 64).is_err());
        assert!(check_tokens("--tokens", &[0; 65], 512, 64).is_err());
    }
}
