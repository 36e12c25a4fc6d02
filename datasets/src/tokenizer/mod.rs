//! Tokenizers behind one small trait: GPT-2 BPE (offline, from the ranks `tiktoken-rs` embeds),
//! any Hugging Face `tokenizer.json` (or `vocab.json` + `merges.txt`), and bytes.

mod bytes;
mod export;
mod gpt2;
mod hf;

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

pub use self::bytes::ByteTokenizer;
pub use self::export::{
    byte_chars, CheckpointFile, NATIVE_KEY, TOKENIZER_CONFIG_FILE, TOKENIZER_FILE,
};
pub use self::gpt2::Gpt2Tokenizer;
pub use self::hf::HfTokenizer;
use crate::error::TokenizerError;

/// The text <-> token-id mapping a model was trained with.
pub trait Tokenizer: Send + Sync {
    /// Stable identifier, written into cache headers (e.g. `"gpt2-r50k"`, `"bytes"`,
    /// `"hf-json:<hash of file>"`); two tokenizers with the same id give the same ids.
    fn id(&self) -> String;
    /// Number of token ids, special tokens included (ids are `0..vocab_size`).
    fn vocab_size(&self) -> usize;
    /// The end-of-text token that separates documents (50256 for GPT-2, 256 for bytes).
    fn eot_token(&self) -> u32;
    /// Encodes plain text; special-token strings such as `<|endoftext|>` are not parsed.
    fn encode(&self, text: &str) -> Vec<u32>;
    /// Decodes ids to text; an id outside the vocabulary or a character cut between tokens is
    /// an error (Hugging Face decoders replace such bytes with U+FFFD instead).
    fn decode(&self, tokens: &[u32]) -> Result<String, TokenizerError>;

    /// The ids the tokenizer puts before every text it encodes with its special tokens: Llama's
    /// beginning-of-sequence token, where its `tokenizer.json` post-processor adds one (as
    /// `transformers` encodes a text by default); none for GPT-2 and bytes. Prepended to every
    /// document and prompt (chat templates write their own).
    fn bos_prefix(&self) -> Vec<u32> {
        Vec::new()
    }

    /// Like `encode`, but reports tokenizer failures instead of logging them.
    fn try_encode(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        Ok(self.encode(text))
    }

    /// True when encoding a text in pieces cut at "X\nY" (X, Y visible ASCII characters) gives
    /// the same ids as encoding it whole. Large documents are then tokenized in chunks, in
    /// parallel and in flat memory. True for GPT-2's regex pre-tokenizer: there the "\n" is a
    /// piece of its own and no pattern looks across it.
    fn newline_chunking_safe(&self) -> bool {
        false
    }

    /// The files that load this tokenizer again from a checkpoint folder, for
    /// [`tokenizer_from_checkpoint_dir`] and for Hugging Face's `AutoTokenizer`
    /// (`tokenizer.json`, `tokenizer_config.json`); `model_max_length` is the model's context.
    fn checkpoint_files(
        &self,
        _model_max_length: usize,
    ) -> Result<Vec<CheckpointFile>, TokenizerError> {
        Err(TokenizerError::Backend {
            id: self.id(),
            message: "this tokenizer cannot write its files into a checkpoint".into(),
        })
    }

    /// The end-of-text token as text: what chat templates get as `eos_token` and `bos_token`.
    fn eot_text(&self) -> String {
        "<|endoftext|>".into()
    }

    /// Special tokens and their ids. In text a chat template renders, these strings become
    /// their ids (as Hugging Face's `apply_chat_template` tokenizes); elsewhere they are text.
    fn special_tokens(&self) -> Vec<(String, u32)> {
        vec![(self.eot_text(), self.eot_token())]
    }

    /// Encodes text a chat template rendered as `transformers`' `apply_chat_template` does:
    /// whole, in one call, its special-token strings becoming their ids; each id with the byte
    /// range of `text` it stands for (a special token: its string's). Whole, not message by
    /// message: a SentencePiece `▁` metaspace marks only the start of the text, and a BPE merge
    /// may cross from one message into the next.
    fn encode_rendered(&self, _text: &str) -> Result<Vec<(u32, Range<usize>)>, TokenizerError> {
        Err(TokenizerError::Backend {
            id: self.id(),
            message: "this tokenizer cannot encode chat templates' text".into(),
        })
    }
}

/// [`Tokenizer::encode_rendered`] for tokenizers whose ids each stand for whole bytes of the
/// text, in order (byte-level BPE without a normalizer, bytes): `text` is cut at the strings of
/// `specials` (the longest where two begin at the same byte), each piece between them encoded
/// by `encode`, and each id given the next `byte_len(id)` bytes.
pub(crate) fn encode_bytewise_at_specials(
    text: &str,
    specials: &[(String, u32)],
    encode: impl Fn(&str) -> Result<Vec<u32>, TokenizerError>,
    byte_len: impl Fn(u32) -> usize,
) -> Result<Vec<(u32, Range<usize>)>, TokenizerError> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < text.len() {
        let next = specials
            .iter()
            .filter(|(s, _)| !s.is_empty())
            .filter_map(|(s, id)| {
                text[pos..]
                    .find(s.as_str())
                    .map(|at| (pos + at, s.len(), *id))
            })
            .min_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
        let end = next.map_or(text.len(), |(at, _, _)| at);
        let mut at = pos;
        for id in encode(&text[pos..end])? {
            let len = byte_len(id);
            out.push((id, at.min(end)..(at + len).min(end)));
            at += len;
        }
        let Some((at, len, id)) = next else {
            break;
        };
        out.push((id, at..at + len));
        pos = at + len;
    }
    Ok(out)
}

impl fmt::Debug for dyn Tokenizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Tokenizer({}, vocab {})", self.id(), self.vocab_size())
    }
}

/// Which tokenizer to use. In JSON: `"gpt2"`, `"bytes"`, or a path to a `tokenizer.json` file
/// or to a folder holding one (write `./gpt2` for a folder literally named `gpt2`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenizerSpec {
    /// GPT-2 BPE (r50k_base), vocabulary 50257, end-of-text 50256; needs no file.
    Gpt2,
    /// Bytes: ids 0..=255 are the UTF-8 bytes, 256 is end-of-text (vocabulary 257).
    Bytes,
    /// A `tokenizer.json`, or a folder with `tokenizer.json` or `vocab.json` + `merges.txt`.
    File(PathBuf),
}

impl TokenizerSpec {
    fn as_config_str(&self) -> String {
        match self {
            TokenizerSpec::Gpt2 => "gpt2".into(),
            TokenizerSpec::Bytes => "bytes".into(),
            TokenizerSpec::File(p) => p.display().to_string(),
        }
    }
}

impl std::str::FromStr for TokenizerSpec {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "gpt2" => TokenizerSpec::Gpt2,
            "bytes" => TokenizerSpec::Bytes,
            path => TokenizerSpec::File(PathBuf::from(path)),
        })
    }
}

impl Serialize for TokenizerSpec {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.as_config_str())
    }
}

impl<'de> Deserialize<'de> for TokenizerSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let Ok(spec) = s.parse();
        Ok(spec)
    }
}

/// Loads the tokenizer a spec names.
pub fn load_tokenizer(spec: &TokenizerSpec) -> Result<Box<dyn Tokenizer>, TokenizerError> {
    match spec {
        TokenizerSpec::Gpt2 => Ok(Box::new(Gpt2Tokenizer::new()?)),
        TokenizerSpec::Bytes => Ok(Box::new(ByteTokenizer)),
        TokenizerSpec::File(path) => {
            if path.is_dir() {
                tokenizer_from_checkpoint_dir(path)?
                    .ok_or_else(|| TokenizerError::NotATokenizer { path: path.clone() })
            } else if path.exists() {
                Ok(Box::new(HfTokenizer::from_json_file(path, None)?))
            } else {
                Err(TokenizerError::Io {
                    path: path.clone(),
                    source: std::io::Error::from(std::io::ErrorKind::NotFound),
                })
            }
        }
    }
}

/// The tokenizer a checkpoint folder carries: `tokenizer.json` wins; else `vocab.json` +
/// `merges.txt` (a GPT-2-style byte-level BPE); else `None` (the caller falls back to its
/// default). An `eos_token` in `tokenizer_config.json` beside them names the end-of-text token.
pub fn tokenizer_from_checkpoint_dir(
    dir: &Path,
) -> Result<Option<Box<dyn Tokenizer>>, TokenizerError> {
    let config = hf::read_tokenizer_config(dir)?;
    match config.as_ref().and_then(|(value, _)| value.get(NATIVE_KEY)) {
        Some(serde_json::Value::String(s)) if s == "gpt2-r50k" => {
            return Ok(Some(Box::new(Gpt2Tokenizer::new()?)))
        }
        Some(serde_json::Value::String(s)) if s == "bytes" => {
            return Ok(Some(Box::new(ByteTokenizer)))
        }
        Some(other) => {
            return Err(TokenizerError::Parse {
                path: dir.join(TOKENIZER_CONFIG_FILE),
                message: format!(
                    "`{NATIVE_KEY}` is {other}; this build knows \"gpt2-r50k\" and \"bytes\""
                ),
            })
        }
        None => {}
    }
    let eos = config.as_ref().and_then(|(value, _)| hf::eos_of(value));
    let raw_config = config.map(|(_, bytes)| bytes);
    let json = dir.join(TOKENIZER_FILE);
    // `exists`, not `is_file`: a FIFO or a device is refused (`hf::read`), not skipped.
    if json.exists() {
        let tokenizer = HfTokenizer::from_json_file(&json, eos)?;
        return Ok(Some(Box::new(tokenizer.with_config(raw_config))));
    }
    let (vocab, merges) = (dir.join("vocab.json"), dir.join("merges.txt"));
    if vocab.exists() && merges.exists() {
        let tokenizer = HfTokenizer::from_vocab_merges(&vocab, &merges, eos)?;
        return Ok(Some(Box::new(tokenizer.with_config(raw_config))));
    }
    Ok(None)
}

/// Position of the first invalid byte, for `TokenizerError::InvalidUtf8`.
pub(crate) fn utf8_string(bytes: Vec<u8>) -> Result<String, TokenizerError> {
    String::from_utf8(bytes).map_err(|e| TokenizerError::InvalidUtf8 {
        offset: e.utf8_error().valid_up_to(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_round_trips_through_json() {
        for (json, spec) in [
            ("\"gpt2\"", TokenizerSpec::Gpt2),
            ("\"bytes\"", TokenizerSpec::Bytes),
            (
                "\"ckpt/tokenizer.json\"",
                TokenizerSpec::File("ckpt/tokenizer.json".into()),
            ),
        ] {
            let parsed: TokenizerSpec = serde_json::from_str(json).unwrap();
            assert_eq!(parsed, spec);
            assert_eq!(serde_json::to_string(&parsed).unwrap(), json);
        }
    }
}
