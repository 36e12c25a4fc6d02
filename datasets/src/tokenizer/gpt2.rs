//! GPT-2 BPE, fully offline: the r50k_base ranks that `tiktoken-rs` embeds are GPT-2's
//! vocabulary (checked against GPT-2's encoder.json by `datasets/tools/make_gpt2_tokenizer.py`).
//!
//! Encoding pre-tokenizes with the `regex` crate instead of tiktoken-rs's `fancy-regex`: GPT-2's
//! pattern needs a look-ahead only in `\s+(?!\S)` ("a whitespace run, less its last character
//! when a non-space follows"), which is applied here by shortening such matches. tiktoken's own
//! notes measure a `regex`-crate pattern about 3x faster; the ids are the same (tested against
//! tiktoken-rs and golden values on the shipped corpus). Merging uses tiktoken-rs's BPE.

use std::ops::Range;
use std::sync::OnceLock;

use regex::Regex;
use rustc_hash::FxHashMap;
use tiktoken_rs::CoreBPE;

use super::export::{
    byte_chars, byte_level, byte_level_bpe_json, gpt2_style_config, merges_from_ranks,
    CheckpointFile, EOT_TEXT, TOKENIZER_CONFIG_FILE, TOKENIZER_FILE,
};
use super::{encode_bytewise_at_specials, utf8_string, Tokenizer};
use crate::error::TokenizerError;

/// GPT-2's vocabulary size: 50000 merges + 256 bytes + `<|endoftext|>`.
pub const GPT2_VOCAB_SIZE: usize = 50257;
/// GPT-2's `<|endoftext|>`.
pub const GPT2_EOT: u32 = 50256;

/// GPT-2's pre-tokenizer pattern (openai/gpt-2 `encoder.py`) without `\s+(?!\S)`.
const PATTERN: &str = r"'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+";
/// Pieces at least this long go to tiktoken's heap-based merge, which is not quadratic.
const LARGE_PIECE: usize = 100;

struct Fast {
    regex: Regex,
    ranks: FxHashMap<Vec<u8>, u32>,
}

/// Why the fast encoder's tables could not be built (both mean a broken build or a corrupt
/// embedded vocabulary, not bad input). Clone: the outcome is kept for the whole process.
#[derive(Clone, Debug, thiserror::Error)]
enum FastError {
    #[error("the GPT-2 pre-tokenizer pattern does not compile: {0}")]
    Pattern(#[from] regex::Error),
    #[error("the embedded r50k_base ranks have no bytes for token {id}")]
    MissingToken { id: u32 },
}

fn fast(bpe: &CoreBPE) -> Result<&'static Fast, FastError> {
    static FAST: OnceLock<Result<Fast, FastError>> = OnceLock::new();
    FAST.get_or_init(|| {
        let regex = Regex::new(PATTERN)?;
        let mut ranks = FxHashMap::default();
        for id in 0..GPT2_EOT {
            let bytes = bpe
                .decode_bytes(&[id])
                .map_err(|e| FastError::MissingToken { id: e.token })?;
            ranks.insert(bytes, id);
        }
        Ok(Fast { regex, ranks })
    })
    .as_ref()
    .map_err(Clone::clone)
}

/// GPT-2 BPE (r50k_base).
pub struct Gpt2Tokenizer {
    bpe: &'static CoreBPE,
    fast: &'static Fast,
}

impl Gpt2Tokenizer {
    /// Loads the embedded ranks (once per process; a fraction of a second).
    pub fn new() -> Result<Self, TokenizerError> {
        let backend = |message: String| TokenizerError::Backend {
            id: "gpt2-r50k".into(),
            message,
        };
        // The singleton panics only if the embedded file is corrupt; report that as an error.
        let bpe = std::panic::catch_unwind(tiktoken_rs::r50k_base_singleton).map_err(|_| {
            backend("the r50k_base ranks embedded in tiktoken-rs failed to load".into())
        })?;
        Ok(Gpt2Tokenizer {
            bpe,
            fast: fast(bpe).map_err(|e| backend(e.to_string()))?,
        })
    }

    /// Encodes with tiktoken-rs's own encoder (fancy-regex); the reference `encode` is
    /// tested against.
    pub fn encode_with_tiktoken(&self, text: &str) -> Vec<u32> {
        self.bpe.encode_ordinary(text)
    }

    fn push_piece(&self, piece: &str, out: &mut Vec<u32>) {
        let bytes = piece.as_bytes();
        if let Some(&id) = self.fast.ranks.get(bytes) {
            out.push(id);
        } else if bytes.len() >= LARGE_PIECE {
            out.extend(self.bpe.encode_ordinary(piece));
        } else {
            for part in tiktoken_rs::byte_pair_split(bytes, &self.fast.ranks) {
                out.push(self.fast.ranks[part]);
            }
        }
    }
}

impl std::fmt::Debug for Gpt2Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Gpt2Tokenizer")
    }
}

impl Tokenizer for Gpt2Tokenizer {
    fn id(&self) -> String {
        "gpt2-r50k".into()
    }
    fn vocab_size(&self) -> usize {
        GPT2_VOCAB_SIZE
    }
    fn eot_token(&self) -> u32 {
        GPT2_EOT
    }
    fn encode(&self, text: &str) -> Vec<u32> {
        let mut out = Vec::with_capacity(text.len() / 4 + 1);
        let mut pos = 0;
        // Every character is a letter, number, whitespace or other, so matches tile the text.
        while let Some(m) = self.fast.regex.find_at(text, pos) {
            let piece = m.as_str();
            let mut end = m.end();
            if end < text.len() && piece.chars().all(char::is_whitespace) {
                // `\s+(?!\S)`: a non-space follows, so the run's last character starts the
                // next piece (where " " joins the word after it).
                if let Some((last, _)) = piece.char_indices().last().filter(|&(i, _)| i > 0) {
                    end = m.start() + last;
                }
            }
            self.push_piece(&text[m.start()..end], &mut out);
            pos = end;
        }
        out
    }
    fn decode(&self, tokens: &[u32]) -> Result<String, TokenizerError> {
        if let Some(&id) = tokens.iter().find(|&&t| t as usize >= GPT2_VOCAB_SIZE) {
            return Err(TokenizerError::UnknownToken {
                id,
                vocab_size: GPT2_VOCAB_SIZE,
            });
        }
        let bytes = self
            .bpe
            .decode_bytes(tokens)
            .map_err(|e| TokenizerError::UnknownToken {
                id: e.token,
                vocab_size: GPT2_VOCAB_SIZE,
            })?;
        utf8_string(bytes)
    }
    fn encode_rendered(&self, text: &str) -> Result<Vec<(u32, Range<usize>)>, TokenizerError> {
        let byte_len = |id: u32| self.bpe.decode_bytes(&[id]).map_or(0, |b| b.len());
        let encode = |piece: &str| Ok(self.encode(piece));
        encode_bytewise_at_specials(text, &self.special_tokens(), encode, byte_len)
    }
    fn newline_chunking_safe(&self) -> bool {
        true
    }
    /// GPT-2's `tokenizer.json` as Hugging Face ships it: the vocabulary in byte-level
    /// characters and the 50000 merges, recovered from the ranks (rank order is merge order).
    fn checkpoint_files(
        &self,
        model_max_length: usize,
    ) -> Result<Vec<CheckpointFile>, TokenizerError> {
        let tokens: Vec<Vec<u8>> = (0..GPT2_EOT)
            .map(|id| self.bpe.decode_bytes(&[id]).unwrap_or_default())
            .collect();
        let ranks = &self.fast.ranks;
        let merges =
            merges_from_ranks(&tokens, |piece| ranks.get(piece).copied()).ok_or_else(|| {
                TokenizerError::Backend {
                    id: self.id(),
                    message: "the embedded r50k_base ranks do not form a merge list".into(),
                }
            })?;
        let table = byte_chars();
        let vocab: Vec<String> = tokens.iter().map(|t| byte_level(t, &table)).collect();
        let merges: Vec<(String, String)> = merges
            .iter()
            .map(|(a, b)| (byte_level(a, &table), byte_level(b, &table)))
            .collect();
        let json = byte_level_bpe_json(&vocab, &merges, GPT2_EOT, true);
        let config = gpt2_style_config(
            "GPT2Tokenizer",
            EOT_TEXT,
            model_max_length,
            Some(&self.id()),
        );
        Ok(vec![
            CheckpointFile::json(TOKENIZER_FILE, &json),
            CheckpointFile::json(TOKENIZER_CONFIG_FILE, &config),
        ])
    }
}
