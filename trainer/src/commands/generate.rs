//! `fp8-trainer generate`: continue a prompt with a checkpoint.

use std::path::{Path, PathBuf};

use datasets::{load_tokenizer, tokenizer_from_checkpoint_dir, Tokenizer, TokenizerSpec};
use fp8_backend::Precision;

use super::{check_tokens, parse_token_list, policy_of, CpuBackend};
use crate::checkpoint::load_checkpoint;
use crate::error::Error;
use crate::model::sampling::{generate, SamplingOptions};
use crate::model::{Gpt2Config, ModelOptions};

/// Arguments of `generate`.
#[derive(Clone, Debug, clap::Args)]
pub struct GenerateArgs {
    /// Checkpoint directory (config.json + model.safetensors).
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Text to continue; prints the prompt and its continuation.
    #[arg(long, conflicts_with = "tokens", required_unless_present = "tokens")]
    pub prompt: Option<String>,
    /// Token ids to continue, comma-separated; the continuation is printed as ids.
    #[arg(long)]
    pub tokens: Option<String>,
    /// Tokenizer for --prompt: gpt2, bytes, or a tokenizer.json / folder (default: the
    /// checkpoint's own `tokenizer.json` or `vocab.json` + `merges.txt`, else GPT-2 BPE when the
    /// model has GPT-2's 50257 tokens).
    #[arg(long)]
    pub tokenizer: Option<TokenizerSpec>,
    /// Tokens to append.
    #[arg(long, default_value_t = 100)]
    pub max_new_tokens: usize,
    /// Softmax temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.8)]
    pub temperature: f64,
    /// Sample among the k most likely tokens only.
    #[arg(long, default_value_t = 200)]
    pub top_k: usize,
    /// Seed of the sampler.
    #[arg(long, default_value_t = 1337)]
    pub seed: u64,
    /// fp32 | fp8-amax | fp8-cscale.
    #[arg(long, default_value = "fp32")]
    pub precision: Precision,
}

impl GenerateArgs {
    /// Sampling settings; generation stops at `stop_token` (the tokenizer's end-of-text for
    /// text prompts, the config's `eos_token_id` for token prompts).
    fn sampling(&self, stop_token: Option<u32>, vocab_limit: Option<usize>) -> SamplingOptions {
        SamplingOptions {
            max_new_tokens: self.max_new_tokens,
            temperature: self.temperature,
            top_k: Some(self.top_k),
            seed: self.seed,
            stop_token,
            vocab_limit,
        }
    }
}

/// Runs `generate`; returns what to print: prompt and continuation as text, or the new token ids.
pub fn run_generate(args: &GenerateArgs) -> Result<String, Error> {
    if args.top_k == 0 {
        return Err(Error::Argument {
            flag: "--top-k",
            message: "must be at least 1 (1 is greedy)".into(),
        });
    }
    if !args.temperature.is_finite() || args.temperature < 0.0 {
        return Err(Error::Argument {
            flag: "--temperature",
            message: format!(
                "is {}, expected a finite number >= 0 (0 is greedy)",
                args.temperature
            ),
        });
    }
    let device = Default::default();
    let options = ModelOptions {
        fp8: policy_of(args.precision),
        ..ModelOptions::default()
    };
    let model = load_checkpoint::<CpuBackend>(&args.checkpoint, &options, &device)?;
    let config = model.config();
    match (&args.tokens, &args.prompt) {
        (Some(tokens), _) => {
            let prompt = parse_token_list("--tokens", tokens)?;
            check_tokens("--tokens", &prompt, config.vocab_size, config.n_positions)?;
            let sampling = args.sampling(config.eos_token_id, None);
            let new = generate(&model, &prompt, &sampling, &device);
            Ok(new.iter().map(u32::to_string).collect::<Vec<_>>().join(","))
        }
        (None, None) => Err(Error::Argument {
            flag: "--prompt",
            message: "give --prompt TEXT or --tokens IDS".into(),
        }),
        (None, Some(text)) => {
            let tokenizer = choose_tokenizer(args.tokenizer.as_ref(), &args.checkpoint, config)?;
            let prompt = tokenizer.encode(text);
            if prompt.is_empty() {
                return Err(Error::Argument {
                    flag: "--prompt",
                    message: "the prompt encodes to no tokens".into(),
                });
            }
            check_tokens("--prompt", &prompt, config.vocab_size, config.n_positions)?;
            let sampling = args.sampling(Some(tokenizer.eot_token()), Some(tokenizer.vocab_size()));
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
) -> Result<Box<dyn Tokenizer>, Error> {
    let flag_err = |origin: &str| {
        let origin = origin.to_string();
        move |source| Error::Tokenizer { origin, source }
    };
    let tokenizer = match spec {
        Some(spec) => load_tokenizer(spec).map_err(flag_err("--tokenizer"))?,
        None => match tokenizer_from_checkpoint_dir(checkpoint)
            .map_err(flag_err(&checkpoint.display().to_string()))?
        {
            Some(tokenizer) => tokenizer,
            None if config.vocab_size == 50257 => {
                load_tokenizer(&TokenizerSpec::Gpt2).map_err(flag_err("gpt2 tokenizer"))?
            }
            None => {
                return Err(Error::Argument {
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
        return Err(Error::Argument {
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
fn decode_longest_prefix(tokenizer: &dyn Tokenizer, tokens: &[u32]) -> Result<String, Error> {
    let mut end = tokens.len();
    loop {
        match tokenizer.decode(&tokens[..end]) {
            Ok(text) => return Ok(text),
            Err(datasets::TokenizerError::InvalidUtf8 { .. }) if end > 0 => end -= 1,
            Err(source) => {
                return Err(Error::Tokenizer {
                    origin: format!("decoding with {}", tokenizer.id()),
                    source,
                })
            }
        }
    }
}
