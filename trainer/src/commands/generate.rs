//! `fp8-trainer generate`: continue a prompt with a checkpoint.

use std::io::Write;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use datasets::{load_tokenizer, tokenizer_from_checkpoint_dir, Tokenizer, TokenizerSpec};
use fp8_backend::{BaseStorage, Precision};

use super::{check_tokens, inference_storage, parse_token_list, policy_of, stored_base_line};
use crate::checkpoint::load_checkpoint_storing;
use crate::device::CpuBackend;
use crate::error::Error;
use crate::model::sampling::{generate_with, SamplingOptions};
use crate::model::{Model, ModelConfig, ModelOptions};
use crate::train::checkpoints::inference_histories;

/// The line printed between two samples of `--num-samples` (nanoGPT's `sample.py` prints it).
pub const SAMPLE_SEPARATOR: &str = "---------------";

/// Arguments of `generate`.
#[derive(Clone, Debug, clap::Args)]
pub struct GenerateArgs {
    /// Checkpoint directory (config.json + model.safetensors).
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Text to continue; prints the prompt and its continuation as it is generated. Stops at
    /// the tokenizer's end-of-text, which is not printed.
    #[arg(long, conflicts_with = "tokens", required_unless_present = "tokens")]
    pub prompt: Option<String>,
    /// Token ids to continue, comma-separated; the continuation is printed as ids. Stops at the
    /// config's `eos_token_id`, which is printed as the last id.
    #[arg(long)]
    pub tokens: Option<String>,
    /// Tokenizer for --prompt: gpt2, bytes, or a tokenizer.json / folder (default: the
    /// checkpoint's own `tokenizer.json` or `vocab.json` + `merges.txt`, else GPT-2 BPE when the
    /// model has GPT-2's 50257 tokens).
    #[arg(long)]
    pub tokenizer: Option<TokenizerSpec>,
    /// Tokens to append (per sample).
    #[arg(long, default_value_t = 100)]
    pub max_new_tokens: usize,
    /// Softmax temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.8)]
    pub temperature: f64,
    /// Sample among the k most likely tokens only.
    #[arg(long, default_value_t = 200)]
    pub top_k: usize,
    /// Nucleus sampling, after temperature and top-k: sample among the smallest set of most
    /// likely tokens whose probability reaches P (0 < P <= 1; 1 is off).
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f64,
    /// Seed of the sampler; sample i of --num-samples uses seed + i.
    #[arg(long, default_value_t = 1337)]
    pub seed: u64,
    /// Independent continuations of the same prompt, printed one after another with a
    /// `---------------` line between them; sample i is seeded with --seed + i.
    #[arg(long, default_value_t = 1)]
    pub num_samples: usize,
    /// Do not stop at end-of-text (--prompt: the tokenizer's, then printed as its text, e.g.
    /// `<|endoftext|>`; --tokens: the config's `eos_token_id`); always --max-new-tokens tokens.
    #[arg(long)]
    pub ignore_eos: bool,
    /// fp32 | fp8-amax | fp8-cscale.
    #[arg(long, default_value = "fp32")]
    pub precision: Precision,
    /// f32 | fp8: with an FP8 --precision, fp8 keeps each projection weight as its FP8 cast
    /// (one byte a parameter), made as the checkpoint is read: the same tokens in about a
    /// quarter of the projections' memory.
    #[arg(long, default_value = "f32", value_parser = super::base_storage_arg)]
    pub base_storage: BaseStorage,
    /// --prompt is a user's message: rendered with the checkpoint's chat template (its
    /// `tokenizer_config.json` or `chat_template.jinja`) with the generation prompt, tokenized
    /// as `apply_chat_template` does; prints the reply.
    #[arg(long, requires = "prompt")]
    pub chat: bool,
}

impl GenerateArgs {
    /// Sampling settings of sample `index` (seeded with `seed + index`); generation stops at
    /// `stop_tokens` (the tokenizer's end-of-text for text prompts, the config's `eos_token_id`
    /// for token prompts) unless `--ignore-eos`.
    fn sampling(
        &self,
        index: usize,
        stop_tokens: Vec<u32>,
        vocab_limit: Option<usize>,
    ) -> SamplingOptions {
        SamplingOptions {
            max_new_tokens: self.max_new_tokens,
            temperature: self.temperature,
            top_k: Some(self.top_k),
            top_p: Some(self.top_p),
            seed: self.seed.wrapping_add(index as u64),
            stop_tokens: if self.ignore_eos {
                Vec::new()
            } else {
                stop_tokens
            },
            vocab_limit,
        }
    }

    /// The argument checks that need no checkpoint.
    fn check(&self) -> Result<(), Error> {
        if self.top_k == 0 {
            return Err(Error::Argument {
                flag: "--top-k",
                message: "must be at least 1 (1 is greedy)".into(),
            });
        }
        if !self.temperature.is_finite() || self.temperature < 0.0 {
            return Err(Error::Argument {
                flag: "--temperature",
                message: format!(
                    "is {}, expected a finite number >= 0 (0 is greedy)",
                    self.temperature
                ),
            });
        }
        // Written so that NaN fails too.
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(Error::Argument {
                flag: "--top-p",
                message: format!(
                    "is {}, expected a number in (0, 1] (1 keeps every token)",
                    self.top_p
                ),
            });
        }
        if self.num_samples == 0 {
            return Err(Error::Argument {
                flag: "--num-samples",
                message: "must be at least 1".into(),
            });
        }
        Ok(())
    }
}

/// Runs `generate`, writing to `out` as it goes: per sample the prompt and its continuation as
/// text (flushed after every token), or the new token ids; samples separated by
/// [`SAMPLE_SEPARATOR`] lines. A closed `out` (`| head`) ends the command quietly.
pub fn run_generate(args: &GenerateArgs, out: &mut dyn Write) -> Result<(), Error> {
    args.check()?;
    let device = Default::default();
    let mut options = ModelOptions {
        fp8: policy_of(args.precision),
        ..ModelOptions::default()
    };
    let storage = inference_storage(&args.checkpoint, &mut options.fp8, args.base_storage)?;
    let model =
        load_checkpoint_storing::<CpuBackend>(&args.checkpoint, &options, &device, storage)?;
    if let Some(line) = stored_base_line(&model) {
        // On stderr: standard output is the generated text (or ids) alone.
        eprintln!("{line}");
    }
    let _frozen = inference_histories(&args.checkpoint, &model)?;
    let config = model.config();
    let mut out = Output::new(out);
    match (&args.tokens, &args.prompt) {
        (Some(tokens), _) => {
            let prompt = parse_token_list("--tokens", tokens)?;
            check_tokens("--tokens", &prompt, &config)?;
            for index in 0..args.num_samples {
                out.start_sample(index)?;
                let mut stops = config.eos_token_ids();
                stops.extend(generation_eos(&args.checkpoint, config.vocab_size())?);
                let sampling = args.sampling(index, stops, None);
                let mut first = true;
                let mut failed = None;
                generate_with(&model, &prompt, &sampling, &device, |token| {
                    let comma = if first { "" } else { "," };
                    first = false;
                    let written = out.write(&format!("{comma}{token}"));
                    out.go_on(written, &mut failed)
                });
                finish_sample(&mut out, failed)?;
                if out.closed {
                    break;
                }
            }
            Ok(())
        }
        (None, None) => Err(Error::Argument {
            flag: "--prompt",
            message: "give --prompt TEXT or --tokens IDS".into(),
        }),
        (None, Some(text)) => {
            let tokenizer = choose_tokenizer(args.tokenizer.as_ref(), &args.checkpoint, &config)?;
            let (prompt, shown) = match args.chat {
                true => (chat_prompt(text, &args.checkpoint, tokenizer.as_ref())?, ""),
                // As `transformers` encodes a prompt: with the beginning-of-sequence ids its
                // tokenizer's post-processor adds (Llama's; none for GPT-2).
                false => match tokenizer.encode(text) {
                    p if p.is_empty() => (p, text.as_str()),
                    p => ([tokenizer.bos_prefix(), p].concat(), text.as_str()),
                },
            };
            if prompt.is_empty() {
                return Err(Error::Argument {
                    flag: "--prompt",
                    message: "the prompt encodes to no tokens".into(),
                });
            }
            check_tokens("--prompt", &prompt, &config)?;
            for index in 0..args.num_samples {
                out.start_sample(index)?;
                let mut stops = vec![tokenizer.eot_token()];
                stops.extend(generation_eos(&args.checkpoint, config.vocab_size())?);
                let sampling = args.sampling(index, stops, Some(tokenizer.vocab_size()));
                stream_text(
                    &model,
                    &prompt,
                    shown,
                    &sampling,
                    tokenizer.as_ref(),
                    &mut out,
                )?;
                if out.closed {
                    break;
                }
            }
            Ok(())
        }
    }
}

/// A user's message `text` as the chat template of `checkpoint` renders it for a reply, in
/// ids as `apply_chat_template(..., add_generation_prompt=True)` gives them.
fn chat_prompt(
    text: &str,
    checkpoint: &Path,
    tokenizer: &dyn Tokenizer,
) -> Result<Vec<u32>, Error> {
    let config = datasets::ChatConfig::default();
    let checkpoint = crate::model::lora::tokenizer_dir(checkpoint);
    let template = datasets::ChatTemplate::resolve(&config, Some(&checkpoint), tokenizer).map_err(
        |source| Error::DataArgument {
            flag: "--chat",
            source,
        },
    )?;
    let messages = [serde_json::json!({"role": "user", "content": text})];
    let rendered = template
        .render(&messages, true)
        .map_err(|message| Error::Argument {
            flag: "--chat",
            message,
        })?;
    let ids = tokenizer
        .encode_rendered(&rendered)
        .map_err(|source| Error::Tokenizer {
            origin: "--chat".into(),
            source,
        })?;
    Ok(ids.into_iter().map(|(id, _)| id).collect())
}

/// One sample of a text prompt: `text`, then its continuation as the tokens come (the stop
/// token itself is not written), then a newline.
fn stream_text(
    model: &Model<CpuBackend>,
    prompt: &[u32],
    text: &str,
    sampling: &SamplingOptions,
    tokenizer: &dyn Tokenizer,
    out: &mut Output<'_>,
) -> Result<(), Error> {
    out.write(text)?;
    let mut stream = TextStream::new(tokenizer);
    let mut failed = None;
    generate_with(model, prompt, sampling, &Default::default(), |token| {
        if sampling.stop_tokens.contains(&token) {
            return ControlFlow::Break(()); // the last token anyway
        }
        let written = stream.push(token).and_then(|new| out.write(&new));
        out.go_on(written, &mut failed)
    });
    if let Some(error) = failed {
        return Err(error);
    }
    out.write(&stream.finish()?)?;
    out.write("\n")
}

/// Ends a sample of ids: the error that stopped it, else a newline.
fn finish_sample(out: &mut Output<'_>, failed: Option<Error>) -> Result<(), Error> {
    match failed {
        Some(error) => Err(error),
        None => out.write("\n"),
    }
}

/// The command's standard output, flushed after every write. A reader that went away (a
/// broken pipe, as after `| head`) closes it: later writes are dropped and generation stops.
struct Output<'a> {
    out: &'a mut dyn Write,
    closed: bool,
}

impl<'a> Output<'a> {
    fn new(out: &'a mut dyn Write) -> Self {
        Self { out, closed: false }
    }

    fn write(&mut self, text: &str) -> Result<(), Error> {
        if self.closed || text.is_empty() {
            return Ok(());
        }
        match self
            .out
            .write_all(text.as_bytes())
            .and_then(|()| self.out.flush())
        {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
                self.closed = true;
                Ok(())
            }
            Err(source) => Err(Error::Io {
                path: "<stdout>".into(),
                source,
            }),
        }
    }

    /// The separator line before every sample but the first.
    fn start_sample(&mut self, index: usize) -> Result<(), Error> {
        if index == 0 {
            return Ok(());
        }
        self.write(&format!("{SAMPLE_SEPARATOR}\n"))
    }

    /// Whether generation goes on after a write: not once it failed (the error is kept in
    /// `failed`) or the output closed.
    fn go_on(&self, written: Result<(), Error>, failed: &mut Option<Error>) -> ControlFlow<()> {
        match written {
            Err(error) => {
                *failed = Some(error);
                ControlFlow::Break(())
            }
            Ok(()) if self.closed => ControlFlow::Break(()),
            Ok(()) => ControlFlow::Continue(()),
        }
    }
}

/// The text of a growing continuation, released as it becomes final. Everything released is a
/// prefix of [`decode_longest_prefix`] of the tokens so far, so that the whole output equals
/// decoding all tokens at the end. What may still change is held back: tokens that do not
/// decode yet (a multi-byte character split across tokens) and a trailing U+FFFD (tokenizers
/// that decode such a split lossily, as Hugging Face's byte-level decoder does).
struct TextStream<'a> {
    tokenizer: &'a dyn Tokenizer,
    tokens: Vec<u32>,
    released: String,
}

impl<'a> TextStream<'a> {
    fn new(tokenizer: &'a dyn Tokenizer) -> Self {
        Self {
            tokenizer,
            tokens: Vec::new(),
            released: String::new(),
        }
    }

    /// Adds `token`; the text that became final with it (often empty).
    fn push(&mut self, token: u32) -> Result<String, Error> {
        self.tokens.push(token);
        // Decoding everything again (not only the new tokens) keeps tokenizers whose decoding
        // depends on the neighbours (a stripped leading space) identical to one decode at the
        // end; next to a forward pass over the whole context it costs nothing.
        let text = decode_longest_prefix(self.tokenizer, &self.tokens)?;
        Ok(self.release(text.trim_end_matches(char::REPLACEMENT_CHARACTER)))
    }

    /// The rest of the text, once no token follows.
    fn finish(mut self) -> Result<String, Error> {
        let text = decode_longest_prefix(self.tokenizer, &self.tokens)?;
        let rest = self.release(&text);
        if self.released != text {
            log::warn!(
                "tokenizer {} decoded the continuation differently as it grew; the printed text \
                 differs from decoding it at once",
                self.tokenizer.id()
            );
        }
        Ok(rest)
    }

    /// The part of `text` after what was released, when `text` extends it.
    fn release(&mut self, text: &str) -> String {
        match text.strip_prefix(self.released.as_str()) {
            Some(new) => {
                let new = new.to_string();
                self.released.push_str(&new);
                new
            }
            None => String::new(),
        }
    }
}

/// The end-of-text ids of the checkpoint's `generation_config.json` (`eos_token_id`, one or a
/// list: Llama 3's instruct models stop at `<|eot_id|>` or `<|end_of_text|>`); none without the
/// file.
fn generation_eos(checkpoint: &Path, vocab_size: usize) -> Result<Vec<u32>, Error> {
    let path = checkpoint.join(crate::train::checkpoints::GENERATION_CONFIG_FILE);
    let text = match datasets::input::read_text_limited(
        &path,
        datasets::input::CONFIG_LIMIT,
        "generation config",
    ) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(&path)(e)),
    };
    let bad = |message: String| Error::BadFile {
        path: path.clone(),
        message,
    };
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| bad(format!("not valid JSON: {e}")))?;
    let id = |v: &serde_json::Value| {
        v.as_u64()
            .and_then(|id| u32::try_from(id).ok())
            .filter(|&id| (id as usize) < vocab_size)
            .ok_or_else(|| {
                bad(format!(
                    "field `eos_token_id`: {v} is not a token id of this model (vocab_size = \
                     {vocab_size})"
                ))
            })
    };
    match value.get("eos_token_id") {
        None | Some(serde_json::Value::Null) => Ok(Vec::new()),
        Some(serde_json::Value::Array(ids)) => ids.iter().map(id).collect(),
        Some(one) => Ok(vec![id(one)?]),
    }
}

fn choose_tokenizer(
    spec: Option<&TokenizerSpec>,
    checkpoint: &Path,
    config: &ModelConfig,
) -> Result<Box<dyn Tokenizer>, Error> {
    let flag_err = |origin: &str| {
        let origin = origin.to_string();
        move |source| Error::Tokenizer { origin, source }
    };
    let tokenizer = match spec {
        Some(spec) => load_tokenizer(spec).map_err(flag_err("--tokenizer"))?,
        None => match tokenizer_from_checkpoint_dir(&crate::model::lora::tokenizer_dir(checkpoint))
            .map_err(flag_err(&checkpoint.display().to_string()))?
        {
            Some(tokenizer) => tokenizer,
            None if config.vocab_size() == 50257 => {
                load_tokenizer(&TokenizerSpec::Gpt2).map_err(flag_err("gpt2 tokenizer"))?
            }
            None => {
                return Err(Error::Argument {
                    flag: "--prompt",
                    message: format!(
                        "{} has no tokenizer.json or vocab.json + merges.txt, and its vocabulary ({}) is not \
                         GPT-2's; pass --tokenizer, or token ids with --tokens",
                        checkpoint.display(),
                        config.vocab_size()
                    ),
                })
            }
        },
    };
    if tokenizer.vocab_size() > config.vocab_size() {
        return Err(Error::Argument {
            flag: "--tokenizer",
            message: format!(
                "tokenizer {} has {} tokens, more than the model's vocab_size {}",
                tokenizer.id(),
                tokenizer.vocab_size(),
                config.vocab_size()
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

#[cfg(test)]
mod tests {
    use datasets::{ByteTokenizer, TokenizerError};

    use super::*;

    /// Bytes decoded as Hugging Face's byte-level decoder does: a cut character becomes U+FFFD.
    struct LossyBytes;

    impl Tokenizer for LossyBytes {
        fn id(&self) -> String {
            "lossy-bytes".into()
        }
        fn vocab_size(&self) -> usize {
            256
        }
        fn eot_token(&self) -> u32 {
            0
        }
        fn encode(&self, text: &str) -> Vec<u32> {
            text.bytes().map(u32::from).collect()
        }
        fn decode(&self, tokens: &[u32]) -> Result<String, TokenizerError> {
            let bytes: Vec<u8> = tokens.iter().map(|&t| t as u8).collect();
            Ok(String::from_utf8_lossy(&bytes).into_owned())
        }
    }

    /// What a stream releases for each token of `text`'s bytes, then at the end.
    fn releases(tokenizer: &dyn Tokenizer, bytes: &[u8]) -> Vec<String> {
        let mut stream = TextStream::new(tokenizer);
        let mut out: Vec<String> = bytes
            .iter()
            .map(|&b| stream.push(u32::from(b)).unwrap())
            .collect();
        out.push(stream.finish().unwrap());
        out
    }

    const TEXT: &str = "aé€😀b";

    #[test]
    fn a_split_character_is_released_when_its_last_byte_arrives() {
        for tokenizer in [&ByteTokenizer as &dyn Tokenizer, &LossyBytes] {
            let out = releases(tokenizer, TEXT.as_bytes());
            // a, [C3] A9, [E2 82] AC, [F0 9F 98] 80, b, end
            let expected = ["a", "", "é", "", "", "€", "", "", "", "😀", "b", ""];
            assert_eq!(out, expected, "{}", tokenizer.id());
            assert_eq!(out.concat(), TEXT);
        }
    }

    #[test]
    fn the_stream_equals_decoding_at_once_when_it_ends_mid_character() {
        // Cut after the first byte of `€`: the bytes tokenizer's one-shot text drops it, the
        // lossy one ends in U+FFFD; the stream gives the same either way.
        let bytes = &TEXT.as_bytes()[..4];
        for tokenizer in [&ByteTokenizer as &dyn Tokenizer, &LossyBytes] {
            let tokens: Vec<u32> = bytes.iter().map(|&b| u32::from(b)).collect();
            let at_once = decode_longest_prefix(tokenizer, &tokens).unwrap();
            let out = releases(tokenizer, bytes);
            assert_eq!(out.concat(), at_once, "{}", tokenizer.id());
            assert!(out[..bytes.len()].concat() == "aé", "{out:?}");
        }
        assert_eq!(releases(&LossyBytes, bytes).concat(), "aé\u{FFFD}");
    }
}
