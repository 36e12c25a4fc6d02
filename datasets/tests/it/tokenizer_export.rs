//! The tokenizer files a checkpoint folder gets (`Tokenizer::checkpoint_files`): the exported
//! `tokenizer.json`, read by Hugging Face's tokenizers library (our `HfTokenizer`), gives the
//! same ids as the built-in tokenizer on the shipped corpus; GPT-2's export equals the committed
//! GPT-2 tokenizer.json (made by datasets/tools/make_gpt2_tokenizer.py, checked there against
//! GPT-2's original encoder.json and vocab.bpe); a folder reloads as the tokenizer it came from.

use std::path::Path;

use datasets::{
    load_tokenizer, tokenizer_from_checkpoint_dir, ByteTokenizer, CheckpointFile, Gpt2Tokenizer,
    HfTokenizer, Tokenizer, TokenizerSpec, NATIVE_KEY, TOKENIZER_CONFIG_FILE, TOKENIZER_FILE,
};
use serde_json::Value;

use crate::common;

const UNICODE: &str =
    "naïve café — Straße, Ελληνικά, 日本語, emoji 🙂🚀 e\u{301}\n\n  tabs\tand   runs";
const CONTEXT: usize = 1024;

fn write_all(files: &[CheckpointFile], dir: &Path) {
    for f in files {
        std::fs::write(dir.join(&f.name), &f.contents).unwrap();
    }
}

fn json_of(files: &[CheckpointFile], name: &str) -> Value {
    let file = files.iter().find(|f| f.name == name).expect(name);
    serde_json::from_slice(&file.contents).unwrap()
}

/// A few works of the shipped corpus and hand-picked hard cases.
fn texts() -> Vec<String> {
    let corpus = common::data_dir().join("shakespeare_milton");
    let mut texts: Vec<String> = ["shakespeare_sonnets.txt", "milton_paradise_regained.txt"]
        .iter()
        .map(|f| std::fs::read_to_string(corpus.join(f)).unwrap())
        .collect();
    texts.extend(
        [
            UNICODE,
            " leading space",
            "trailing  ",
            "it's we'll they're",
            "123 4567 8",
        ]
        .map(String::from),
    );
    texts
}

/// Ids of the exported tokenizer.json (through the tokenizers library) against `native`.
fn assert_export_encodes_like(native: &dyn Tokenizer) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let files = native.checkpoint_files(CONTEXT).unwrap();
    write_all(&files, dir.path());
    let hf = HfTokenizer::from_json_file(&dir.path().join(TOKENIZER_FILE), None).unwrap();
    assert_eq!(hf.vocab_size(), native.vocab_size());
    assert_eq!(hf.eot_token(), native.eot_token());
    for text in texts() {
        let ids = native.encode(&text);
        assert_eq!(
            hf.encode(&text),
            ids,
            "{}: {:?}",
            native.id(),
            &text[..40.min(text.len())]
        );
        assert_eq!(hf.decode(&ids).unwrap(), text);
    }
    let config = json_of(&files, TOKENIZER_CONFIG_FILE);
    assert_eq!(config[NATIVE_KEY], native.id());
    assert_eq!(config["eos_token"], "<|endoftext|>");
    assert_eq!(config["model_max_length"], CONTEXT);
    dir
}

#[test]
fn gpt2_export_encodes_like_the_builtin_and_reloads_as_it() {
    let gpt2 = Gpt2Tokenizer::new().unwrap();
    let dir = assert_export_encodes_like(&gpt2);
    let back = tokenizer_from_checkpoint_dir(dir.path()).unwrap().unwrap();
    assert_eq!(back.id(), "gpt2-r50k");
}

#[test]
fn gpt2_export_equals_the_committed_gpt2_tokenizer_json() {
    let files = Gpt2Tokenizer::new()
        .unwrap()
        .checkpoint_files(CONTEXT)
        .unwrap();
    let ours = json_of(&files, TOKENIZER_FILE);
    let path = common::data_dir().join("gpt2/tokenizer.json");
    let theirs: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    for key in [
        "pre_tokenizer",
        "post_processor",
        "decoder",
        "added_tokens",
        "normalizer",
    ] {
        assert_eq!(ours[key], theirs[key], "{key}");
    }
    assert_eq!(ours["model"]["vocab"], theirs["model"]["vocab"]);
    let merges = |v: &Value| v["model"]["merges"].as_array().unwrap().clone();
    assert_eq!(merges(&ours).len(), 50000);
    assert_eq!(merges(&ours), merges(&theirs));
}

#[test]
fn byte_export_encodes_like_the_builtin_and_reloads_as_it() {
    let dir = assert_export_encodes_like(&ByteTokenizer);
    let back = tokenizer_from_checkpoint_dir(dir.path()).unwrap().unwrap();
    assert_eq!(back.id(), "bytes");
    // Without our key the folder is a plain Hugging Face tokenizer, with the same ids.
    let config_path = dir.path().join(TOKENIZER_CONFIG_FILE);
    let mut config: Value = serde_json::from_slice(&std::fs::read(&config_path).unwrap()).unwrap();
    config.as_object_mut().unwrap().remove(NATIVE_KEY);
    std::fs::write(&config_path, serde_json::to_vec(&config).unwrap()).unwrap();
    let plain = tokenizer_from_checkpoint_dir(dir.path()).unwrap().unwrap();
    assert!(plain.id().starts_with("hf-json:"), "{}", plain.id());
    assert_eq!(plain.encode(UNICODE), ByteTokenizer.encode(UNICODE));
    assert_eq!(plain.eot_token(), 256);
}

/// A Hugging Face tokenizer goes back out as it came in: the same tokenizer.json bytes (so the
/// same id, and caches stay valid) and its own tokenizer_config.json, chat template included.
#[test]
fn a_hugging_face_tokenizer_is_written_back_as_loaded() {
    let source = tempfile::tempdir().unwrap();
    let json = std::fs::read(common::data_dir().join("gpt2/tokenizer.json")).unwrap();
    std::fs::write(source.path().join(TOKENIZER_FILE), &json).unwrap();
    let config =
        br#"{"eos_token": {"content": "<|endoftext|>"}, "chat_template": "{{ messages }}"}"#;
    std::fs::write(source.path().join(TOKENIZER_CONFIG_FILE), config).unwrap();
    let loaded = tokenizer_from_checkpoint_dir(source.path())
        .unwrap()
        .unwrap();
    let files = loaded.checkpoint_files(CONTEXT).unwrap();
    let by_name = |n: &str| &files.iter().find(|f| f.name == n).unwrap().contents;
    assert_eq!(by_name(TOKENIZER_FILE), &json);
    assert_eq!(by_name(TOKENIZER_CONFIG_FILE), &config.to_vec());

    let copy = tempfile::tempdir().unwrap();
    write_all(&files, copy.path());
    let again = tokenizer_from_checkpoint_dir(copy.path()).unwrap().unwrap();
    assert_eq!(again.id(), loaded.id());

    // A tokenizer.json named by path has no config of its own: one is written for it.
    let bare = load_tokenizer(&TokenizerSpec::File(source.path().join(TOKENIZER_FILE))).unwrap();
    let files = bare.checkpoint_files(CONTEXT).unwrap();
    let config = json_of(&files, TOKENIZER_CONFIG_FILE);
    assert_eq!(config["eos_token"], "<|endoftext|>");
    assert!(config.get(NATIVE_KEY).is_none());
}

#[test]
fn an_unknown_builtin_name_is_an_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    write_all(
        &ByteTokenizer.checkpoint_files(CONTEXT).unwrap(),
        dir.path(),
    );
    let path = dir.path().join(TOKENIZER_CONFIG_FILE);
    std::fs::write(&path, format!(r#"{{"{NATIVE_KEY}": "bytes-v9"}}"#)).unwrap();
    let err = tokenizer_from_checkpoint_dir(dir.path())
        .err()
        .expect("an error")
        .to_string();
    assert!(
        err.contains(TOKENIZER_CONFIG_FILE) && err.contains("bytes-v9"),
        "{err}"
    );
}
