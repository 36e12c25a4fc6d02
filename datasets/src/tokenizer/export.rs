//! The tokenizer files a checkpoint folder carries, so that the folder is self-contained for
//! us (`tokenizer_from_checkpoint_dir`) and for Hugging Face (`AutoTokenizer.from_pretrained`):
//! `tokenizer.json` and `tokenizer_config.json`.
//!
//! Our two built-in tokenizers are written as the byte-level BPE `tokenizer.json` Hugging Face
//! would use for them (GPT-2's vocabulary and merges, recovered from tiktoken's ranks; for
//! bytes, 256 one-byte tokens and no merges), and `tokenizer_config.json` names them under
//! [`NATIVE_KEY`], so our loader takes the built-in (faster, same cache id) implementation back.
//! A Hugging Face tokenizer is written back as it was loaded, with the `tokenizer_config.json`
//! it came with (chat template and special tokens kept).

use serde_json::{json, Map, Value};

/// Key of `tokenizer_config.json` naming one of our built-in tokenizers (`gpt2-r50k`,
/// `bytes`); other tools ignore it.
pub const NATIVE_KEY: &str = "fp8_trainer_tokenizer";
/// `tokenizer.json`.
pub const TOKENIZER_FILE: &str = "tokenizer.json";
/// `tokenizer_config.json`.
pub const TOKENIZER_CONFIG_FILE: &str = "tokenizer_config.json";
/// The end-of-text spelling of both built-in tokenizers.
pub(crate) const EOT_TEXT: &str = "<|endoftext|>";

/// A file of a checkpoint folder: its name and contents.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckpointFile {
    pub name: String,
    pub contents: Vec<u8>,
}

impl CheckpointFile {
    /// `value` as pretty JSON, ending in a newline.
    pub fn json(name: &str, value: &Value) -> Self {
        let mut contents = serde_json::to_vec_pretty(value).expect("a JSON value serialises");
        contents.push(b'\n');
        CheckpointFile {
            name: name.to_string(),
            contents,
        }
    }
}

/// GPT-2's byte-to-character table (openai/gpt-2 `encoder.py`, `bytes_to_unicode`): printable
/// bytes stand for themselves, the other 68 are shifted to U+0100 and up, in byte order.
pub fn byte_chars() -> [char; 256] {
    let printable = |b: u32| {
        (0x21..=0x7e).contains(&b) || (0xa1..=0xac).contains(&b) || (0xae..=0xff).contains(&b)
    };
    let mut table = ['\0'; 256];
    let mut shifted = 0;
    for b in 0..256u32 {
        table[b as usize] = if printable(b) {
            char::from_u32(b).expect("below 0x100")
        } else {
            shifted += 1;
            char::from_u32(255 + shifted).expect("below 0x200")
        };
    }
    table
}

/// `bytes` as byte-level characters.
pub(crate) fn byte_level(bytes: &[u8], table: &[char; 256]) -> String {
    bytes.iter().map(|&b| table[b as usize]).collect()
}

/// A byte-level BPE `tokenizer.json` (GPT-2's pre-tokenizer when `gpt2_regex`, else whole
/// texts as one piece), with `vocab` in id order and `<|endoftext|>` at `eot` as the special
/// token.
pub(crate) fn byte_level_bpe_json(
    vocab: &[String],
    merges: &[(String, String)],
    eot: u32,
    gpt2_regex: bool,
) -> Value {
    // The settings of GPT-2's own tokenizer.json.
    let byte_level = |add_prefix_space: bool, trim_offsets: bool| {
        json!({"type": "ByteLevel", "add_prefix_space": add_prefix_space,
               "trim_offsets": trim_offsets, "use_regex": gpt2_regex})
    };
    let vocab: Map<String, Value> = vocab
        .iter()
        .enumerate()
        .map(|(id, token)| (token.clone(), json!(id)))
        .chain(std::iter::once((EOT_TEXT.to_string(), json!(eot))))
        .collect();
    // "a b" strings (every tokenizers release reads them; byte-level tokens hold no space).
    let merges: Vec<Value> = merges
        .iter()
        .map(|(a, b)| json!(format!("{a} {b}")))
        .collect();
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [{"id": eot, "content": EOT_TEXT, "single_word": false, "lstrip": false,
                          "rstrip": false, "normalized": true, "special": true}],
        "normalizer": null,
        "pre_tokenizer": byte_level(false, true),
        "post_processor": byte_level(true, false),
        "decoder": byte_level(true, true),
        "model": {"type": "BPE", "dropout": null, "unk_token": null,
                  "continuing_subword_prefix": "", "end_of_word_suffix": "", "fuse_unk": false,
                  "byte_fallback": false, "ignore_merges": false,
                  "vocab": vocab, "merges": merges}
    })
}

/// `tokenizer_config.json` for a tokenizer whose end-of-text is `<|endoftext|>` (GPT-2's
/// layout: the same token as bos, eos and unk), naming the built-in tokenizer `native` if any.
pub(crate) fn gpt2_style_config(
    class: &str,
    eos: &str,
    model_max_length: usize,
    native: Option<&str>,
) -> Value {
    let mut config = json!({
        "tokenizer_class": class,
        "bos_token": eos, "eos_token": eos, "unk_token": eos,
        "add_prefix_space": false,
        "clean_up_tokenization_spaces": false,
        "model_max_length": model_max_length,
    });
    if let Some(native) = native {
        config[NATIVE_KEY] = json!(native);
    }
    config
}

/// The merges of a byte-level BPE whose tokens are `tokens` (bytes, indexed by rank; ranks
/// 0..256 are the single bytes): token `r` is the merge of the two pieces that byte-pair
/// merging its bytes with ranks below `r` leaves (tiktoken's ranks are the merge order).
/// `None` if some token does not come out as exactly two pieces.
pub(crate) fn merges_from_ranks(
    tokens: &[Vec<u8>],
    rank_of: impl Fn(&[u8]) -> Option<u32>,
) -> Option<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut merges = Vec::with_capacity(tokens.len().saturating_sub(256));
    for (rank, token) in tokens.iter().enumerate().skip(256) {
        let below = |piece: &[u8]| rank_of(piece).filter(|&r| (r as usize) < rank);
        // Boundaries of the pieces; merge the adjacent pair of lowest rank until none is left.
        let mut cuts: Vec<usize> = (0..=token.len()).collect();
        loop {
            let best = (0..cuts.len().saturating_sub(2))
                .filter_map(|i| below(&token[cuts[i]..cuts[i + 2]]).map(|r| (r, i)))
                .min();
            match best {
                Some((_, i)) => {
                    cuts.remove(i + 1);
                }
                None => break,
            }
        }
        if cuts.len() != 3 {
            return None;
        }
        merges.push((token[..cuts[1]].to_vec(), token[cuts[1]..].to_vec()));
    }
    Some(merges)
}
