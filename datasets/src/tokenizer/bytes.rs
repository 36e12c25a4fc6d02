//! Byte-level tokenizer for tiny from-scratch models: one id per UTF-8 byte, plus end-of-text.

use super::{utf8_string, Tokenizer};
use crate::error::TokenizerError;

/// Ids 0..=255 are bytes; 256 is end-of-text.
#[derive(Clone, Copy, Debug, Default)]
pub struct ByteTokenizer;

/// The end-of-text id of [`ByteTokenizer`].
pub const BYTES_EOT: u32 = 256;
/// Text written for [`BYTES_EOT`] by `decode`, as GPT-2 writes its own end-of-text.
const EOT_TEXT: &str = "<|endoftext|>";

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
    fn newline_chunking_safe(&self) -> bool {
        true
    }
}
