//! Tokenizers: GPT-2 ids against golden values from OpenAI's tiktoken and Hugging Face
//! tokenizers (fixture made by datasets/tools/make_gpt2_fixtures.py), the committed GPT-2
//! tokenizer.json against tiktoken-rs on shipped text, round trips, checkpoint folders.

use std::path::Path;

use datasets::{
    encode_in_chunks, load_tokenizer, tokenizer_from_checkpoint_dir, ByteTokenizer, Gpt2Tokenizer,
    Tokenizer, TokenizerError, TokenizerSpec,
};

use crate::common;

const UNICODE: &str = "naïve café — Straße, Ελληνικά, русский, 日本語, 한국어, emoji 🙂🚀 e\u{301}";

fn gpt2_json_path() -> std::path::PathBuf {
    common::data_dir().join("gpt2/tokenizer.json")
}

/// The `version` that datasets/tools/make_gpt2_fixtures.py writes (its `FIXTURE_VERSION`);
/// bumped together with it whenever the cases or the references change.
const GPT2_FIXTURE_VERSION: u64 = 1;

#[test]
fn gpt2_ids_match_tiktoken_golden_values() {
    let fixture: serde_json::Value =
        serde_json::from_str(include_str!("../fixtures/gpt2_ids.json")).expect("fixture parses");
    // 0: a fixture written before the generator stamped a version.
    let version = fixture["version"].as_u64().unwrap_or(0);
    assert_eq!(
        version, GPT2_FIXTURE_VERSION,
        "tests/fixtures/gpt2_ids.json is version {version}, this test expects version \
         {GPT2_FIXTURE_VERSION}: the fixture is stale; re-run \
         datasets/tools/make_gpt2_fixtures.py (see its docstring)"
    );
    let cases = fixture["cases"].as_array().expect("cases");
    assert!(!cases.is_empty(), "fixture has no cases");
    let gpt2 = Gpt2Tokenizer::new().unwrap();
    let json = load_tokenizer(&TokenizerSpec::File(gpt2_json_path())).unwrap();
    for case in cases {
        let text = case["text"].as_str().unwrap();
        let ids: Vec<u32> = serde_json::from_value(case["ids"].clone()).unwrap();
        assert_eq!(gpt2.encode(text), ids, "tiktoken-rs on {text:?}");
        assert_eq!(json.encode(text), ids, "tokenizer.json on {text:?}");
        assert_eq!(gpt2.decode(&ids).unwrap(), text);
    }
    assert_eq!(gpt2.encode("Hello world"), vec![15496, 995]);
}

#[test]
fn gpt2_constants_and_special_text() {
    let gpt2 = load_tokenizer(&TokenizerSpec::Gpt2).unwrap();
    assert_eq!(gpt2.id(), "gpt2-r50k");
    assert_eq!(gpt2.vocab_size(), 50257);
    assert_eq!(gpt2.eot_token(), 50256);
    assert_eq!(gpt2.decode(&[50256]).unwrap(), "<|endoftext|>");
    // Special-token text in data is plain text, not the special id.
    assert!(!gpt2.encode("<|endoftext|>").contains(&50256));
}

#[test]
fn tokenizer_json_agrees_with_tiktoken_on_shipped_text_and_unicode() {
    let gpt2 = Gpt2Tokenizer::new().unwrap();
    let json = load_tokenizer(&TokenizerSpec::File(gpt2_json_path())).unwrap();
    assert_eq!(json.vocab_size(), 50257);
    assert_eq!(json.eot_token(), 50256);
    assert!(json.id().starts_with("hf-json:"));
    assert!(json.newline_chunking_safe());
    let corpus = common::data_dir().join("shakespeare_milton");
    let mut checked = 0;
    for name in [
        "shakespeare_hamlet.txt",
        "milton_paradise_lost.txt",
        "shakespeare_sonnets.txt",
    ] {
        let text = std::fs::read_to_string(corpus.join(name)).unwrap();
        let sample: String = text.chars().take(4000).collect();
        let ids = gpt2.encode(&sample);
        assert_eq!(json.encode(&sample), ids, "{name}");
        assert_eq!(json.decode(&ids).unwrap(), sample);
        checked += sample.len();
    }
    assert!(checked > 10_000);
    assert_eq!(json.encode(UNICODE), gpt2.encode(UNICODE));
}

#[test]
fn unicode_round_trips() {
    let gpt2 = Gpt2Tokenizer::new().unwrap();
    let bytes = ByteTokenizer;
    for tok in [&gpt2 as &dyn Tokenizer, &bytes] {
        let ids = tok.encode(UNICODE);
        assert_eq!(tok.decode(&ids).unwrap(), UNICODE, "{}", tok.id());
    }
    assert_eq!(bytes.encode("é"), vec![0xc3, 0xa9]);
    assert_eq!(bytes.decode(&[104, 256]).unwrap(), "h<|endoftext|>");
}

#[test]
fn decode_errors_are_typed() {
    let gpt2 = Gpt2Tokenizer::new().unwrap();
    assert!(matches!(
        gpt2.decode(&[50257]),
        Err(TokenizerError::UnknownToken { id: 50257, .. })
    ));
    // "🙂" is four bytes over several GPT-2 tokens; its first token alone is not UTF-8.
    let ids = gpt2.encode("🙂");
    assert!(ids.len() > 1);
    assert!(matches!(
        gpt2.decode(&ids[..1]),
        Err(TokenizerError::InvalidUtf8 { offset: 0 })
    ));
    assert!(matches!(
        ByteTokenizer.decode(&[300]),
        Err(TokenizerError::UnknownToken { .. })
    ));
    assert!(matches!(
        ByteTokenizer.decode(&[0xff]),
        Err(TokenizerError::InvalidUtf8 { .. })
    ));
}

#[test]
fn chunked_encoding_equals_whole_encoding() {
    let gpt2 = Gpt2Tokenizer::new().unwrap();
    let text = std::fs::read_to_string(
        common::data_dir().join("shakespeare_milton/shakespeare_macbeth.txt"),
    )
    .unwrap();
    let whole = gpt2.encode(&text);
    for chunk in [1, 100, 1000, 64 * 1024] {
        assert_eq!(
            encode_in_chunks(&gpt2, &text, chunk),
            whole,
            "chunk {chunk}"
        );
    }
    let tricky = "a\n\nb\n c\nd  \n\ne\u{a0}\nf's\n'll\n";
    assert_eq!(encode_in_chunks(&gpt2, tricky, 1), gpt2.encode(tricky));
}

/// Writes GPT-2's vocab.json and merges.txt, taken from the committed tokenizer.json.
fn write_vocab_merges(dir: &Path) {
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(gpt2_json_path()).unwrap()).unwrap();
    std::fs::write(dir.join("vocab.json"), json["model"]["vocab"].to_string()).unwrap();
    let merges: Vec<&str> = json["model"]["merges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap())
        .collect();
    std::fs::write(
        dir.join("merges.txt"),
        format!("#version: 0.2\n{}\n", merges.join("\n")),
    )
    .unwrap();
}

#[test]
fn checkpoint_folder_tokenizer_json_wins_then_vocab_merges_then_none() {
    let s = common::Scratch::new();
    let dir = s.path("ckpt");
    std::fs::create_dir_all(&dir).unwrap();
    assert!(tokenizer_from_checkpoint_dir(&dir).unwrap().is_none());

    write_vocab_merges(&dir);
    let bpe = tokenizer_from_checkpoint_dir(&dir)
        .unwrap()
        .expect("vocab + merges");
    assert!(bpe.id().starts_with("hf-bpe:"), "{}", bpe.id());
    assert_eq!(bpe.eot_token(), 50256);
    let text = "Hello world, O Romeo! naïve 🙂";
    assert_eq!(bpe.encode(text), Gpt2Tokenizer::new().unwrap().encode(text));

    std::fs::copy(gpt2_json_path(), dir.join("tokenizer.json")).unwrap();
    let json = tokenizer_from_checkpoint_dir(&dir)
        .unwrap()
        .expect("tokenizer.json");
    assert!(
        json.id().starts_with("hf-json:"),
        "tokenizer.json wins: {}",
        json.id()
    );
    // A folder given as a spec loads the same way.
    let via_spec = load_tokenizer(&TokenizerSpec::File(dir.clone())).unwrap();
    assert_eq!(via_spec.id(), json.id());
}

#[test]
fn tokenizer_config_names_the_end_of_text() {
    let s = common::Scratch::new();
    let dir = s.path("ckpt");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(gpt2_json_path(), dir.join("tokenizer.json")).unwrap();
    std::fs::write(
        dir.join("tokenizer_config.json"),
        r#"{"eos_token": {"content": "Hello"}}"#,
    )
    .unwrap();
    let tok = tokenizer_from_checkpoint_dir(&dir).unwrap().unwrap();
    assert_eq!(tok.eot_token(), 15496);
    std::fs::write(
        dir.join("tokenizer_config.json"),
        r#"{"eos_token": "<nope>"}"#,
    )
    .unwrap();
    let err = tokenizer_from_checkpoint_dir(&dir).expect_err("unknown eos");
    assert!(matches!(err, TokenizerError::NoEndOfText { .. }), "{err}");
}

#[test]
fn bad_tokenizer_files_are_typed_errors() {
    let s = common::Scratch::new();
    let missing = load_tokenizer(&TokenizerSpec::File(s.path("nope.json")))
        .err()
        .unwrap();
    assert!(matches!(missing, TokenizerError::Io { .. }), "{missing}");
    let garbage = s.write("tokenizer.json", "{not json");
    let err = load_tokenizer(&TokenizerSpec::File(garbage)).err().unwrap();
    assert!(matches!(err, TokenizerError::Parse { .. }), "{err}");
    assert!(err.to_string().contains("tokenizer.json"), "{err}");
    let empty_dir = s.path("empty");
    std::fs::create_dir_all(&empty_dir).unwrap();
    let err = load_tokenizer(&TokenizerSpec::File(empty_dir))
        .err()
        .unwrap();
    assert!(matches!(err, TokenizerError::NotATokenizer { .. }), "{err}");
}

#[test]
fn fast_gpt2_encoder_equals_tiktoken_rs() {
    let gpt2 = Gpt2Tokenizer::new().unwrap();
    let mut texts: Vec<String> = [
        "",
        " ",
        "  ",
        "a",
        "\n",
        "\n\n\n",
        "a  b",
        "a \n b",
        "x\t\t y",
        "end   ",
        "  start",
        "it's they'll we've I'M 'tis",
        "\u{3000}ideographic\u{3000} space",
        "nbsp\u{a0}\u{a0}x",
        "tabs\t\n\t\nand\r\nCRLF",
        "1234567 89",
        "??!! ...",
        UNICODE,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    texts.push("a".repeat(5000)); // one long piece: tiktoken's non-quadratic merge
    texts.push(" ".repeat(300) + "x");
    let corpus = common::data_dir().join("shakespeare_milton");
    for name in ["shakespeare_hamlet.txt", "milton_paradise_lost.txt"] {
        texts.push(std::fs::read_to_string(corpus.join(name)).unwrap());
    }
    for t in &texts {
        assert_eq!(
            gpt2.encode(t),
            gpt2.encode_with_tiktoken(t),
            "{:?}",
            &t[..t.len().min(40)]
        );
    }
}

/// A tokenizer.json that breaks off inside its `decoder` section made the tokenizers crate
/// panic (`expect("Helper")`; found by the trainer's `parser_fuzz` tests): a parse error naming
/// the file instead.
#[test]
fn a_truncated_tokenizer_json_is_a_parse_error_not_a_panic() {
    let s = common::Scratch::new();
    let path = s.write(
        "tokenizer.json",
        r#"{"version": "1.0", "decoder": {"type": "ByteLevel", "add_prefix_space": tr"#,
    );
    let err = load_tokenizer(&TokenizerSpec::File(path)).expect_err("truncated");
    assert!(matches!(err, TokenizerError::Parse { .. }), "{err:?}");
    assert!(err.to_string().contains("tokenizer.json"), "{err}");
}
