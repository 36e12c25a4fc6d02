//! Tokenizers of the kinds the hub ships for the Llama family, against `transformers`
//! (tests/fixtures/gen_tokenizers.py, run with transformers 5.25 and tokenizers 0.23): a Llama 2
//! style SentencePiece BPE (byte fallback, `▁` metaspace, `<s>` added by its post-processor), a
//! Llama 3 style byte-level BPE (its split regex, `<|begin_of_text|>` added by a template
//! post-processor, `<|eot_id|>` as eos) and a Qwen2 style one (ChatML, no BOS). Each folder is
//! read as a checkpoint's tokenizer: its ids and decoded text equal `AutoTokenizer`'s, its
//! beginning-of-sequence ids are the post-processor's, its end-of-text the `eos_token` its
//! `tokenizer_config.json` names, and its chat template renders conversations to the text and
//! (for the byte-level ones) the ids `apply_chat_template` gives.

use std::path::PathBuf;

use datasets::{tokenizer_from_checkpoint_dir, ChatLoss, ChatTemplate, Tokenizer};
use serde_json::Value;

use crate::common;

/// Must equal `FIXTURE_VERSION` of tests/fixtures/gen_tokenizers.py.
const FIXTURE_VERSION: u64 = 2;

fn folder(style: &str) -> PathBuf {
    common::data_dir()
        .join("../../tests/fixtures/tokenizers")
        .join(style)
}

fn reference(style: &str) -> Value {
    let text = std::fs::read_to_string(folder(style).join("reference.json")).unwrap();
    let value: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        value["fixture_version"].as_u64(),
        Some(FIXTURE_VERSION),
        "tests/fixtures/tokenizers/{style} is stale; re-run `python tests/fixtures/gen_tokenizers.py`"
    );
    value
}

fn ids(value: &Value) -> Vec<u32> {
    serde_json::from_value(value.clone()).unwrap()
}

fn load(style: &str) -> Box<dyn Tokenizer> {
    tokenizer_from_checkpoint_dir(&folder(style))
        .unwrap()
        .expect("a tokenizer.json")
}

#[test]
fn hub_style_tokenizers_encode_and_decode_as_transformers_does() {
    for (style, bos, eos) in [
        ("llama2-style", Some("<s>"), "</s>"),
        ("llama3-style", Some("<|begin_of_text|>"), "<|eot_id|>"),
        ("qwen2-style", None, "<|im_end|>"),
    ] {
        let r = reference(style);
        let tok = load(style);
        // `added_tokens`: id -> content, as transformers' `added_tokens_decoder`.
        let special = |s: &str| {
            let added = r["added_tokens"].as_object().unwrap();
            added
                .iter()
                .find(|(_, v)| v.as_str() == Some(s))
                .map(|(id, _)| id.parse::<u32>().unwrap())
        };
        let want_bos: Vec<u32> = bos
            .map(|b| special(b).expect("bos id"))
            .into_iter()
            .collect();
        assert_eq!(
            tok.bos_prefix(),
            want_bos,
            "{style}: what the post-processor adds"
        );
        assert_eq!(Some(tok.eot_token()), special(eos), "{style}: eos_token");
        let specials: Vec<String> = r["added_tokens"]
            .as_object()
            .unwrap()
            .values()
            .map(|v| v.as_str().unwrap().to_string())
            .collect();
        let mut checked = 0;
        for case in r["texts"].as_array().unwrap() {
            let text = case["text"].as_str().unwrap();
            let ours = tok.encode(text);
            if specials.iter().any(|s| text.contains(s.as_str())) {
                // Special-token strings in data are text here (GPT-2's convention: data cannot
                // forge a control token); `transformers` parses them. The text survives.
                assert!(
                    !ours.iter().any(|id| special_ids(&r).contains(id)),
                    "{style}: {text:?} became a special id"
                );
                continue;
            }
            assert_eq!(ours, ids(&case["ids_no_special"]), "{style}: {text:?}");
            let with: Vec<u32> = [tok.bos_prefix(), ours.clone()].concat();
            assert_eq!(
                with,
                ids(&case["ids"]),
                "{style}: {text:?} with special tokens"
            );
            assert_eq!(
                tok.decode(&ours).unwrap(),
                case["decoded_no_special"].as_str().unwrap(),
                "{style}: decoding {text:?}"
            );
            checked += 1;
        }
        assert!(checked >= 6, "{style}: {checked} texts compared");
    }
}

fn special_ids(r: &Value) -> Vec<u32> {
    r["added_tokens"]
        .as_object()
        .unwrap()
        .keys()
        .map(|id| id.parse().unwrap())
        .collect()
}

#[test]
fn hub_chat_templates_render_and_tokenize_as_apply_chat_template() {
    for style in ["llama2-style", "llama3-style", "qwen2-style"] {
        let r = reference(style);
        let tok = load(style);
        let config = datasets::ChatConfig::default();
        let template = ChatTemplate::resolve(&config, Some(&folder(style)), tok.as_ref()).unwrap();
        let mut masks = 0;
        for conversation in r["conversations"].as_array().unwrap() {
            let messages = conversation["messages"].as_array().unwrap();
            for (generation_prompt, text_key) in [(false, "text"), (true, "text_generation_prompt")]
            {
                let text = template.render(messages, generation_prompt).unwrap();
                assert_eq!(
                    text,
                    conversation[text_key].as_str().unwrap(),
                    "{style}: add_generation_prompt {generation_prompt}"
                );
            }
            // The conversation as training tokenizes it (the rendering encoded whole, special
            // strings as their ids): apply_chat_template's ids, with loss on every token or ...
            let all = ChatTemplate::new(
                template.source().to_string(),
                "all".into(),
                (bos_text(&r), tok.eot_text()),
                ChatLoss::All,
            )
            .unwrap();
            let (tokens, _) = all.tokenize(messages, tok.as_ref()).unwrap();
            assert_eq!(tokens, ids(&conversation["ids"]), "{style}: ids");
            // ... on the assistants' replies: the tokens return_assistant_tokens_mask marks.
            if let Some(expected) = conversation.get("assistant_masks") {
                let (tokens, mask) = template.tokenize(messages, tok.as_ref()).unwrap();
                assert_eq!(tokens, ids(&conversation["ids"]), "{style}: ids");
                let expected: Vec<u8> = ids(expected).into_iter().map(|m| m as u8).collect();
                assert_eq!(mask, expected, "{style}: loss mask of {messages:?}");
                masks += 1;
            }
        }
        assert!(masks >= 2, "{style}: {masks} loss masks compared");
    }
}

/// The `bos_token` the fixture's tokenizer_config names (empty when it names none).
fn bos_text(r: &Value) -> String {
    r["special_tokens_map"]["bos_token"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}
