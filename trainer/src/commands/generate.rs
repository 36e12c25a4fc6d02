//! `fp8-trainer generate`: continue a prompt with a checkpoint.

use std::path::{Path, PathBuf};

use datasets::{load_tokenizer, tokenizer_from_checkpoint_dir, Tokenizer, TokenizerSpec};

use super::{check_tokens, install_precision, CommandError, CpuBackend};
use crate::checkpoint::load_checkpoint;
use crate::config::Gpt2Config;
use crate::generate::{generate, SamplingOptions};
use crate::model::ModelOptions;
use crate::precision::Precision;

/// What to continue.
#[derive(Clone, Debug)]
pub enum Prompt {
    /// Text, encoded with the tokenizer (see [`GenerateArgs::tokenizer`]); the output is text.
    Text(String),
    /// Token ids, used as they are; the output is token ids too.
    Tokens(Vec<u32>),
}

/// Arguments of `generate`.
#[derive(Clone, Debug)]
pub struct GenerateArgs {
    /// Checkpoint directory (config.json + model.safetensors).
    pub checkpoint: PathBuf,
    /// The prompt.
    pub prompt: Prompt,
    /// Tokenizer for a text prompt; `None`: the checkpoint's own (`tokenizer.json` or
    /// `vocab.json` + `merges.txt`), else GPT-2 BPE when the model has GPT-2's 50257 tokens.
    pub tokenizer: Option<TokenizerSpec>,
    /// Greedy / sampling settings. `stop_token` defaults to the tokenizer's end-of-text
    /// (text prompts) or the config's `eos_token_id` (token prompts).
    pub sampling: SamplingOptions,
    /// Numeric precision of the forward passes.
    pub precision: Precision,
}

/// Runs `generate`; returns what to print: prompt and continuation as text, or the new token ids.
pub fn run_generate(args: &GenerateArgs) -> Result<String, CommandError> {
    let _fp8 = install_precision(args.precision);
    let device = Default::default();
    let model = load_checkpoint::<CpuBackend>(&args.checkpoint, &ModelOptions::default(), &device)?;
    let config = model.config();
    match &args.prompt {
        Prompt::Tokens(prompt) => {
            check_tokens("--tokens", prompt, config.vocab_size, config.n_positions)?;
            let sampling = SamplingOptions {
                stop_token: args.sampling.stop_token.or(config.eos_token_id),
                ..args.sampling.clone()
            };
            let new = generate(&model, prompt, &sampling, &device);
            Ok(new.iter().map(u32::to_string).collect::<Vec<_>>().join(","))
        }
        Prompt::Text(text) => {
            let tokenizer = choose_tokenizer(args.tokenizer.as_ref(), &args.checkpoint, config)?;
            let prompt = tokenizer.encode(text);
            if prompt.is_empty() {
                return Err(CommandError::BadArgument {
                    flag: "--prompt",
                    message: "the prompt encodes to no tokens".into(),
                });
            }
            check_tokens("--prompt", &prompt, config.vocab_size, config.n_positions)?;
            let sampling = SamplingOptions {
                stop_token: args.sampling.stop_token.or(Some(tokenizer.eot_token())),
                vocab_limit: Some(tokenizer.vocab_size()),
                ..args.sampling.clone()
            };
            let new = generate(&model, &prompt, &sampling, &device);
            Ok(format!(
                "{text}{}",
                decode_longest_prefix(tokenizer.as_ref(), &new)?
            ))
        }
    }
}

fn choose_tokenizer(
    spec: Option<&TokenizerSpec>,
    checkpoint: &Path,
    config: &Gpt2Config,
) -> Result<Box<dyn Tokenizer>, CommandError> {
    let tokenizer = match spec {
        Some(spec) => load_tokenizer(spec)?,
        None => match tokenizer_from_checkpoint_dir(checkpoint)? {
            Some(tokenizer) => tokenizer,
            None if config.vocab_size == 50257 => load_tokenizer(&TokenizerSpec::Gpt2)?,
            None => {
                return Err(CommandError::BadArgument {
                    flag: "--prompt",
                    message: format!(
                        "{} has no tokenizer.json or vocab.json + merges.txt, and its vocabulary ({}) is not \
                         GPT-2's; pass --tokenizer, or token ids with --tokens",
                        checkpoint.display(),
                        config.vocab_size
                    ),
                })
            }
        },
    };
    if tokenizer.vocab_size() > config.vocab_size {
        return Err(CommandError::BadArgument {
            flag: "--tokenizer",
            message: format!(
                "tokenizer {} has {} tokens, more than the model's vocab_size {}",
                tokenizer.id(),
                tokenizer.vocab_size(),
                config.vocab_size
            ),
        });
    }
    Ok(tokenizer)
}

/// Decodes as many of `tokens` as form valid UTF-8: generation can stop in the middle of a
/// multi-byte character split across tokens.
fn decode_longest_prefix(
    tokenizer: &dyn Tokenizer,
    tokens: &[u32],
) -> Result<String, CommandError> {
    let mut end = tokens.len();
    loop {
        match tokenizer.decode(&tokens[..end]) {
            Ok(text) => return Ok(text),
            Err(datasets::TokenizerError::InvalidUtf8 { .. }) if end > 0 => end -= 1,
            Err(e) => return Err(e.into()),
        }
    }
}
