//! The tokenizer a GGUF file describes (`tokenizer.ggml.*`, `tokenizer.chat_template`) as the
//! files `transformers` and this trainer load: `tokenizer.json` built as `transformers`' GGUF
//! loader builds it (`integrations/gguf/gguf_tokenizer_mapping.py`: a byte-level BPE for
//! `tokenizer.ggml.model` "gpt2", GPT-2's pre-tokenizer unless `tokenizer.ggml.pre` names a split
//! regex of its own, control tokens as special added tokens, user-defined ones as plain added
//! tokens), `tokenizer_config.json` (special tokens, `add_bos_token`, chat template, context) and
//! `generation_config.json`.

use std::collections::HashSet;

use datasets::tokenizer::byte_chars;
use datasets::CheckpointFile;
use serde_json::{json, Map, Value};

use super::{GgufError, GgufFile};

/// `tokenizer.ggml.token_type` values (llama.cpp's `llama_token_type`).
const CONTROL: i64 = 3;
const USER_DEFINED: i64 = 4;

/// Llama 3's split regex (transformers' `_LLAMA3_SPLIT`).
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2's (single digits).
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The split regex of a `tokenizer.ggml.pre` value (none: GPT-2's byte-level regex).
fn split_regex(pre: &str) -> Option<&'static str> {
    match pre {
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "smaug-bpe" | "dbrx" => {
            Some(LLAMA3_SPLIT)
        }
        "qwen2" | "deepseek-r1-qwen" | "megrez" => Some(QWEN2_SPLIT),
        _ => None,
    }
}

/// `tokenizer.json`, `tokenizer_config.json` and `generation_config.json` for `file`;
/// `context`: the model's context length (`model_max_length`).
pub fn checkpoint_files(file: &GgufFile, context: usize) -> Result<Vec<CheckpointFile>, GgufError> {
    let bad = |key: &str, message: String| {
        GgufError::bad(&file.path, &format!("metadata key `{key}`"), message)
    };
    let model = file.str_opt("tokenizer.ggml.model")?.ok_or_else(|| {
        bad(
            "tokenizer.ggml.model",
            "is missing: the file has no tokenizer".into(),
        )
    })?;
    if model != "gpt2" {
        return Err(bad(
            "tokenizer.ggml.model",
            format!(
                "\"{model}\" tokenizers are not imported yet (the byte-level BPE \"gpt2\" of \
                 Llama 3, SmolLM2 and Qwen2 is)"
            ),
        ));
    }
    let tokens = file
        .strings_opt("tokenizer.ggml.tokens")?
        .ok_or_else(|| bad("tokenizer.ggml.tokens", "is missing".into()))?;
    let merges = file
        .strings_opt("tokenizer.ggml.merges")?
        .ok_or_else(|| bad("tokenizer.ggml.merges", "is missing".into()))?;
    let types = file
        .ints_opt("tokenizer.ggml.token_type")?
        .unwrap_or_default();
    if !types.is_empty() && types.len() != tokens.len() {
        return Err(bad(
            "tokenizer.ggml.token_type",
            format!("has {} entries for {} tokens", types.len(), tokens.len()),
        ));
    }
    let table = byte_chars();
    let alphabet: HashSet<char> = table.iter().copied().collect();
    // A token outside the byte alphabet is respelled from its UTF-8 bytes, as transformers does.
    let spell = |t: &str| -> String {
        if t.chars().all(|c| alphabet.contains(&c)) {
            t.to_string()
        } else {
            t.bytes().map(|b| table[b as usize]).collect()
        }
    };
    let mut vocab = Map::new();
    for (id, t) in tokens.iter().enumerate() {
        // A token listed twice keeps its last id, as transformers' `{token: index}` dict does.
        vocab.insert(spell(t), Value::from(id));
    }
    let mut merge_pairs = Vec::with_capacity(merges.len());
    for (i, m) in merges.iter().enumerate() {
        let Some((a, b)) = m.split_once(' ') else {
            return Err(bad(
                "tokenizer.ggml.merges",
                format!("merge {i} ({m:?}) is not two tokens separated by a space"),
            ));
        };
        merge_pairs.push(json!([a, b]));
    }
    let id_key = |k: &str| -> Result<Option<usize>, GgufError> {
        let key = format!("tokenizer.ggml.{k}");
        match file.u64_opt(&key)? {
            Some(id) if id as usize >= tokens.len() => Err(bad(
                &key,
                format!("token {id} is outside the vocabulary of {}", tokens.len()),
            )),
            other => Ok(other.map(|id| id as usize)),
        }
    };
    let (bos, eos) = (id_key("bos_token_id")?, id_key("eos_token_id")?);
    let (unk, pad) = (id_key("unknown_token_id")?, id_key("padding_token_id")?);
    let add_bos = file
        .bool_opt("tokenizer.ggml.add_bos_token")?
        .unwrap_or(false);

    let mut added = Vec::new();
    for (id, (t, &ty)) in tokens.iter().zip(&types).enumerate() {
        let special = match ty {
            CONTROL if t.chars().all(|c| alphabet.contains(&c)) => true,
            USER_DEFINED => false,
            _ => continue,
        };
        added.push(json!({
            "id": id, "content": t, "single_word": false, "lstrip": false, "rstrip": false,
            "normalized": false, "special": special,
        }));
    }
    let byte_level = |use_regex: bool| {
        json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true,
               "use_regex": use_regex})
    };
    let pre = file.str_opt("tokenizer.ggml.pre")?.unwrap_or("default");
    let pre_tokenizer = match split_regex(pre) {
        None => byte_level(true),
        Some(regex) => json!({"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated",
             "invert": false},
            byte_level(false),
        ]}),
    };
    let post_processor = match (add_bos, bos) {
        (true, Some(bos)) => json!({
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": tokens[bos], "type_id": 0}},
                       {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": tokens[bos], "type_id": 0}},
                     {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": tokens[bos], "type_id": 1}},
                     {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {tokens[bos]: {"id": tokens[bos], "ids": [bos],
                                             "tokens": [tokens[bos]]}},
        }),
        _ => Value::Null,
    };
    let tokenizer = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": post_processor,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true,
                    "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null,
                  "continuing_subword_prefix": "", "end_of_word_suffix": "", "fuse_unk": false,
                  "byte_fallback": false, "ignore_merges": false, "vocab": vocab,
                  "merges": merge_pairs},
    });

    let text = |id: Option<usize>| id.map_or(Value::Null, |i| Value::from(tokens[i]));
    let mut config = json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": text(bos),
        "eos_token": text(eos),
        "unk_token": text(unk),
        "pad_token": text(pad),
        "add_bos_token": add_bos,
        "clean_up_tokenization_spaces": false,
        "model_max_length": context,
    });
    if let Some(template) = file.str_opt("tokenizer.chat_template")? {
        config["chat_template"] = template.into();
    }
    let mut generation = Map::new();
    for (key, id) in [
        ("bos_token_id", bos),
        ("eos_token_id", eos),
        ("pad_token_id", pad),
    ] {
        if let Some(id) = id {
            generation.insert(key.into(), id.into());
        }
    }
    Ok(vec![
        CheckpointFile::json("tokenizer.json", &tokenizer),
        CheckpointFile::json("tokenizer_config.json", &config),
        CheckpointFile::json("generation_config.json", &Value::Object(generation)),
    ])
}
