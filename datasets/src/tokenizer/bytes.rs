//! Byte-level tokenizer for tiny from-scratch models: one id per UTF-8 byte, plus end-of-text.

// `decode` writes end-of-text as GPT-2 writes its own: `EOT_TEXT`.
use super::export::{
    byte_chars, byte_level_bpe_json, gpt2_style_config, CheckpointFile, EOT_TEXT,
    TOKENIZER_CONFIG_FILE, TOKENIZER_FILE,
};
use std::ops::Range;

use super::{encode_bytewise_at_specials, utf8_string, Tokenizer};
use crate::error::TokenizerError;

/// Ids 0..=255 are bytes; 256 is end-of-text.
#[derive(Clone, Copy, Debug, Default)]
pub struct ByteTokenizer;

/// The end-of-text id of [`ByteTokenizer`].
pub const BYTES_EOT: u32 = 256;

impl Tokenizer for ByteTokenizer {
    fn id(&self) -> String {
        "bytes".into()
    }
    fn vocab_size(&self) -> usize {
        257
    }
    fn eot_token(&self) -> u32 {
        BYTES_EOT
    }
    fn encode(&self, text: &str) -> Vec<u32> {
        text.bytes().map(u32::from).collect()
    }
    fn decode(&self, tokens: &[u32]) -> Result<String, TokenizerError> {
        let mut out = Vec::with_capacity(tokens.len());
        for &t in tokens {
            match t {
                0..=255 => out.push(t as u8),
                BYTES_EOT => out.extend_from_slice(EOT_TEXT.as_bytes()),
                id => {
                    return Err(TokenizerError::UnknownToken {
                        id,
                        vocab_size: 257,
                    })
                }
            }
        }
        utf8_string(out)
    }
    fn encode_rendered(&self, text: &str) -> Result<Vec<(u32, Range<usize>)>, TokenizerError> {
        let encode = |piece: &str| Ok(self.encode(piece));
        encode_bytewise_at_specials(text, &self.special_tokens(), encode, |_| 1)
    }
    fn newline_chunking_safe(&self) -> bool {
        true
    }
    /// A byte-level BPE with the 256 bytes as its vocabulary (in byte order) and no merges, no
    /// pre-tokenizer regex: Hugging Face's tokenizers then give one id per byte, as here.
    fn checkpoint_files(
        &self,
        model_max_length: usize,
    ) -> Result<Vec<CheckpointFile>, TokenizerError> {
        let table = byte_chars();
        let vocab: Vec<String> = table.iter().map(|c| c.to_string()).collect();
        let json = byte_level_bpe_json(&vocab, &[], BYTES_EOT, false);
        let config = gpt2_style_config(
            "PreTrainedTokenizerFast",
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
