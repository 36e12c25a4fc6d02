//! Hugging Face tokenizers: a checkpoint's `tokenizer.json`, or GPT-2-style `vocab.json` +
//! `merges.txt`, through the pure-Rust `tokenizers` crate (fancy-regex, no oniguruma).

use std::ops::Range;
use std::path::Path;

use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::AddedToken;

use super::export::{gpt2_style_config, CheckpointFile, TOKENIZER_CONFIG_FILE, TOKENIZER_FILE};
use super::Tokenizer;
use crate::error::TokenizerError;
use crate::hash::Fnv64;

/// End-of-text spellings tried, in order, when `tokenizer_config.json` names none.
const EOT_CANDIDATES: [&str; 4] = ["<|endoftext|>", "<|end_of_text|>", "</s>", "<eos>"];

/// A tokenizer from Hugging Face files.
pub struct HfTokenizer {
    inner: tokenizers::Tokenizer,
    /// `inner` as `transformers` loads it for `apply_chat_template`: added tokens in the text
    /// become their ids, the end-of-text token among them.
    chat: tokenizers::Tokenizer,
    /// `tokenizer.json` as loaded (or, from vocab + merges, as built), before this crate's
    /// encoding settings: what a checkpoint gets back.
    original: Vec<u8>,
    /// The `tokenizer_config.json` it came with, as read.
    config: Option<Vec<u8>>,
    id: String,
    vocab_size: usize,
    eot: u32,
    /// [`Tokenizer::bos_prefix`]: what the post-processor puts before a text.
    bos_prefix: Vec<u32>,
    chunking_safe: bool,
}

impl std::fmt::Debug for HfTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HfTokenizer({}, vocab {})", self.id, self.vocab_size)
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TokenizerError> {
    crate::input::read_limited(path, crate::input::TOKENIZER_LIMIT, "tokenizer file").map_err(
        |source| TokenizerError::Io {
            path: path.to_path_buf(),
            source,
        },
    )
}

fn parse_err(path: &Path, e: impl std::fmt::Display) -> TokenizerError {
    TokenizerError::Parse {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

impl HfTokenizer {
    /// Loads a `tokenizer.json`. `eos` names the end-of-text token; `None` tries the usual
    /// spellings (`<|endoftext|>`, `<|end_of_text|>`, `</s>`, `<eos>`).
    pub fn from_json_file(path: &Path, eos: Option<String>) -> Result<Self, TokenizerError> {
        let bytes = read(path)?;
        // The tokenizers crate panics (`expect("Helper")` in its decoder reader) on JSON that
        // breaks off inside some sections: check the syntax first, for an error with a line.
        serde_json::from_slice::<serde::de::IgnoredAny>(&bytes)
            .map_err(|e| parse_err(path, format!("not valid JSON: {e}")))?;
        // And should it panic on valid JSON, that is still a file it cannot read, not a crash.
        let parsed = std::panic::catch_unwind(|| tokenizers::Tokenizer::from_bytes(&bytes))
            .map_err(|panic| {
                let why = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                parse_err(
                    path,
                    format!("the tokenizers library cannot read it ({why})"),
                )
            })?;
        let inner = parsed.map_err(|e| parse_err(path, e))?;
        let id = format!("hf-json:{:016x}", Fnv64::new().write(&bytes).finish());
        Self::finish(inner, bytes, id, path, eos)
    }

    /// Builds a GPT-2-style byte-level BPE from `vocab.json` + `merges.txt`.
    pub fn from_vocab_merges(
        vocab: &Path,
        merges: &Path,
        eos: Option<String>,
    ) -> Result<Self, TokenizerError> {
        let mut hash = Fnv64::new();
        hash.field(&read(vocab)?).field(&read(merges)?);
        let model = BPE::from_file(&vocab.to_string_lossy(), &merges.to_string_lossy())
            .build()
            .map_err(|e| parse_err(vocab, e))?;
        let mut inner = tokenizers::Tokenizer::new(model);
        inner.with_pre_tokenizer(Some(ByteLevel::default().add_prefix_space(false)));
        inner.with_decoder(Some(ByteLevelDecoder::default()));
        let id = format!("hf-bpe:{:016x}", hash.finish());
        let original = inner.to_string(false).map_err(|e| parse_err(vocab, e))?;
        Self::finish(inner, original.into_bytes(), id, vocab, eos)
    }

    /// The `tokenizer_config.json` (as read) to write beside `tokenizer.json` in checkpoints.
    pub fn with_config(mut self, config: Option<Vec<u8>>) -> Self {
        self.config = config;
        self
    }

    fn finish(
        mut inner: tokenizers::Tokenizer,
        original: Vec<u8>,
        id: String,
        path: &Path,
        eos: Option<String>,
    ) -> Result<Self, TokenizerError> {
        // A tokenizer.json may carry truncation/padding for its original use; ours is plain
        // encoding. Special-token strings in data are text, as with tiktoken's encode_ordinary.
        inner
            .with_truncation(None)
            .map_err(|e| parse_err(path, e))?;
        inner.with_padding(None);
        let mut chat = inner.clone();
        inner.set_encode_special_tokens(true);
        let candidates: Vec<String> = match eos {
            Some(e) => vec![e],
            None => EOT_CANDIDATES.iter().map(|s| s.to_string()).collect(),
        };
        let eot = candidates
            .iter()
            .find_map(|c| inner.token_to_id(c))
            .ok_or_else(|| TokenizerError::NoEndOfText {
                path: path.to_path_buf(),
                looked_for: candidates.join(", "),
            })?;
        if !chat.get_added_tokens_decoder().contains_key(&eot) {
            // transformers adds a tokenizer's special tokens (those its config names) to the
            // added vocabulary, so their strings in a chat text are found: here the end-of-text.
            let text = inner.id_to_token(eot).unwrap_or_default();
            chat.add_special_tokens(&[AddedToken::from(text, true)]);
        }
        let vocab_size = inner.get_vocab_size(true).max(eot as usize + 1);
        let chunking_safe = inner.get_normalizer().is_none()
            && matches!(
                inner.get_pre_tokenizer(),
                Some(PreTokenizerWrapper::ByteLevel(b)) if b.use_regex && !b.add_prefix_space
            );
        let bos_prefix = post_processor_prefix(&inner).map_err(|e| parse_err(path, e))?;
        Ok(HfTokenizer {
            inner,
            chat,
            original,
            config: None,
            id,
            vocab_size,
            eot,
            bos_prefix,
            chunking_safe,
        })
    }
}

impl Tokenizer for HfTokenizer {
    fn id(&self) -> String {
        self.id.clone()
    }
    fn vocab_size(&self) -> usize {
        self.vocab_size
    }
    fn eot_token(&self) -> u32 {
        self.eot
    }
    fn encode(&self, text: &str) -> Vec<u32> {
        self.try_encode(text).unwrap_or_else(|e| {
            log::error!("{e}; the text is dropped");
            Vec::new()
        })
    }
    fn try_encode(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        let enc = self
            .inner
            .encode_fast(text, false)
            .map_err(|e| TokenizerError::Backend {
                id: self.id.clone(),
                message: e.to_string(),
            })?;
        Ok(enc.get_ids().to_vec())
    }
    fn encode_rendered(&self, text: &str) -> Result<Vec<(u32, Range<usize>)>, TokenizerError> {
        let enc = self
            .chat
            .encode(text, false)
            .map_err(|e| TokenizerError::Backend {
                id: self.id.clone(),
                message: e.to_string(),
            })?;
        let spans = enc.get_offsets().iter().map(|&(start, end)| start..end);
        Ok(enc.get_ids().iter().copied().zip(spans).collect())
    }
    fn decode(&self, tokens: &[u32]) -> Result<String, TokenizerError> {
        if let Some(&id) = tokens.iter().find(|&&t| t as usize >= self.vocab_size) {
            return Err(TokenizerError::UnknownToken {
                id,
                vocab_size: self.vocab_size,
            });
        }
        self.inner
            .decode(tokens, false)
            .map_err(|e| TokenizerError::Backend {
                id: self.id.clone(),
                message: e.to_string(),
            })
    }
    fn newline_chunking_safe(&self) -> bool {
        self.chunking_safe
    }
    fn bos_prefix(&self) -> Vec<u32> {
        self.bos_prefix.clone()
    }
    /// `tokenizer.json` as loaded, and the `tokenizer_config.json` it came with (else one in
    /// GPT-2's layout naming its end-of-text token).
    fn checkpoint_files(
        &self,
        model_max_length: usize,
    ) -> Result<Vec<CheckpointFile>, TokenizerError> {
        let config = match &self.config {
            Some(bytes) => CheckpointFile {
                name: TOKENIZER_CONFIG_FILE.into(),
                contents: bytes.clone(),
            },
            None => {
                let eos = self.inner.id_to_token(self.eot).unwrap_or_default();
                let value =
                    gpt2_style_config("PreTrainedTokenizerFast", &eos, model_max_length, None);
                CheckpointFile::json(TOKENIZER_CONFIG_FILE, &value)
            }
        };
        let json = CheckpointFile {
            name: TOKENIZER_FILE.into(),
            contents: self.original.clone(),
        };
        Ok(vec![json, config])
    }
    fn eot_text(&self) -> String {
        self.inner
            .id_to_token(self.eot)
            .unwrap_or_else(|| "<|endoftext|>".into())
    }
    fn special_tokens(&self) -> Vec<(String, u32)> {
        let mut out: Vec<(String, u32)> = self
            .inner
            .get_added_tokens_decoder()
            .into_iter()
            .filter(|(_, t)| t.special)
            .map(|(id, t)| (t.content, id))
            .collect();
        if !out.iter().any(|(_, id)| *id == self.eot) {
            out.push((self.eot_text(), self.eot));
        }
        out.sort();
        out
    }
}

/// The ids the post-processor puts before a text: a probe text encoded with the special tokens,
/// up to where its ids without them begin (Llama's `<s>` / `<|begin_of_text|>`; nothing for
/// GPT-2's byte-level post-processor).
fn post_processor_prefix(inner: &tokenizers::Tokenizer) -> tokenizers::Result<Vec<u32>> {
    const PROBE: &str = "probe";
    let (with, without) = (
        inner.encode_fast(PROBE, true)?,
        inner.encode_fast(PROBE, false)?,
    );
    let (with, without) = (with.get_ids(), without.get_ids());
    let at = (0..=with.len().saturating_sub(without.len()))
        .find(|&i| with[i..].starts_with(without))
        .unwrap_or(0);
    Ok(with[..at].to_vec())
}

/// `tokenizer_config.json` in `dir`, parsed and as read, if the file exists.
pub(super) fn read_tokenizer_config(
    dir: &Path,
) -> Result<Option<(serde_json::Value, Vec<u8>)>, TokenizerError> {
    let path = dir.join(TOKENIZER_CONFIG_FILE);
    // `exists`: a FIFO or a device here is refused by `read`, not taken as absent.
    if !path.exists() {
        return Ok(None);
    }
    let bytes = read(&path)?;
    let value = serde_json::from_slice(&bytes).map_err(|e| parse_err(&path, e))?;
    Ok(Some((value, bytes)))
}

/// The `eos_token` a `tokenizer_config.json` names (as a string or as `{"content": ...}`).
pub(super) fn eos_of(config: &serde_json::Value) -> Option<String> {
    match config.get("eos_token") {
        Some(serde_json::Value::String(s)) => Some(s.clone()),
        Some(v) => v
            .get("content")
            .and_then(|c| c.as_str())
            .map(str::to_string),
        None => None,
    }
}
