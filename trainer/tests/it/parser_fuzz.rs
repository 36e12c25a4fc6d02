//! Generated bad input for every parser a user feeds: the job config and its `--set`
//! overrides, JSONL, CSV/TSV, safetensors headers, a checkpoint's `config.json` and
//! `tokenizer.json`. Each property: the parser returns (no panic, no abort), and when it refuses
//! the input, the error is bad input (exit code 2) and names the file (or the `--set` argument).
//! Inputs are random mutations of valid files (a value replaced, a key dropped, bytes cut or
//! flipped) and random JSON trees over the keys each format knows, so most of them get past the
//! first syntax check. Each test prints how many inputs it tried.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use datasets::{
    ByteTokenizer, CsvConfig, DataConfig, DataFormat, Dataset, TokenizerSpec, Validation,
};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRng, TestRunner};
use serde_json::{json, Map, Value};
use trainer::checkpoint::WeightFiles;
use trainer::job::assemble::model_config;
use trainer::job::load_job_config;
use trainer::{Error, ModelConfig};

use crate::common;

/// Cases per property (proptest's default is 256).
const CASES: u32 = 1000;

/// A scratch folder for one test binary run.
fn scratch(name: &str) -> PathBuf {
    common::jobs::scratch(&format!("robustness-{name}"))
}

/// Runs `property` on `CASES` inputs of `strategy`; prints and returns the count.
fn check<S: Strategy>(
    name: &str,
    strategy: S,
    property: impl Fn(S::Value) -> Result<(), TestCaseError>,
) where
    S::Value: std::fmt::Debug,
{
    let tried = AtomicU64::new(0);
    // A fixed seed: the same inputs on every run (house style: deterministic tests).
    let config = Config {
        cases: CASES,
        failure_persistence: None,
        ..Config::default()
    };
    let rng = TestRng::deterministic_rng(config.rng_algorithm);
    let mut runner = TestRunner::new_with_rng(config, rng);
    let result = runner.run(&strategy, |input| {
        tried.fetch_add(1, Ordering::Relaxed);
        property(input)
    });
    println!("{name}: {} inputs tried", tried.load(Ordering::Relaxed));
    if let Err(e) = result {
        panic!("{name}: {e}");
    }
}

/// Keys the job config, the data section and `config.json` know, so that generated objects
/// reach past the unknown-key check.
const KEYS: &[&str] = &[
    "name",
    "model",
    "preset",
    "checkpoint",
    "init_seed",
    "vocab_size",
    "n_positions",
    "n_embd",
    "n_layer",
    "n_head",
    "n_inner",
    "dropout",
    "tokenizer",
    "data",
    "train",
    "validation",
    "fraction",
    "paths",
    "seq_len",
    "shuffle",
    "seed",
    "format",
    "jsonl",
    "csv",
    "cache_dir",
    "precision",
    "mode",
    "family",
    "layers",
    "stats_every",
    "cscale_bias",
    "optimizer",
    "lr",
    "betas",
    "eps",
    "weight_decay",
    "schedule",
    "kind",
    "warmup_steps",
    "min_lr_ratio",
    "batch_size",
    "grad_accum",
    "grad_clip",
    "steps",
    "epochs",
    "eval_every",
    "eval_batches",
    "checkpoint_every",
    "keep_checkpoints",
    "log_every",
    "device",
    "out_dir",
    "non_finite",
    "text",
    "prompt",
    "completion",
    "model_type",
    "architectures",
    "activation_function",
    "layer_norm_epsilon",
    "n_ctx",
    "tie_word_embeddings",
    "eos_token_id",
    "bos_token_id",
];

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => proptest::sample::select(KEYS).prop_map(str::to_string),
        1 => "[a-z_.]{0,8}",
    ]
}

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        prop_oneof![
            Just(0i64),
            Just(-1),
            Just(1),
            Just(3),
            Just(i64::MAX),
            Just(1_000_000_000_000),
            any::<i64>()
        ]
        .prop_map(|n| json!(n)),
        prop_oneof![
            Just(0.0f64),
            Just(-0.5),
            Just(1e-30),
            Just(1e300),
            any::<f64>()
        ]
        .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        prop_oneof![
            proptest::sample::select(
                &[
                    "",
                    "*",
                    "!",
                    "tiny",
                    "gpt2",
                    "bytes",
                    "fp32",
                    "fp8-amax",
                    "cosine",
                    "cpu",
                    "wgpu",
                    "none",
                    "skip",
                    "gelu",
                    "../x",
                    "/nonexistent",
                    "\u{0}",
                    "é"
                ][..]
            )
            .prop_map(str::to_string),
            ".{0,12}",
        ]
        .prop_map(Value::String),
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            proptest::collection::vec((key(), inner), 0..6)
                .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// A JSON path into `value` (object keys and array indices that exist), chosen by `picks`.
fn path_in(value: &Value, picks: &[usize]) -> Vec<String> {
    let mut path = Vec::new();
    let mut node = value;
    for &p in picks {
        match node {
            Value::Object(m) if !m.is_empty() => {
                let (k, v) = m.iter().nth(p % m.len()).unwrap();
                path.push(k.clone());
                node = v;
            }
            Value::Array(a) if !a.is_empty() => {
                path.push((p % a.len()).to_string());
                node = &a[p % a.len()];
            }
            _ => break,
        }
    }
    path
}

/// `value` with the node at `path` replaced by `new` (or removed when `new` is `None`).
fn edited(mut value: Value, path: &[String], new: Option<Value>) -> Value {
    let Some((last, parents)) = path.split_last() else {
        return new.unwrap_or(Value::Null);
    };
    let mut node = &mut value;
    for p in parents {
        node = match node {
            Value::Object(m) => m.get_mut(p).unwrap(),
            Value::Array(a) => &mut a[p.parse::<usize>().unwrap()],
            _ => unreachable!("path_in follows existing nodes"),
        };
    }
    match (node, new) {
        (Value::Object(m), Some(v)) => {
            m.insert(last.clone(), v);
        }
        (Value::Object(m), None) => {
            m.remove(last);
        }
        (Value::Array(a), Some(v)) => a[last.parse::<usize>().unwrap()] = v,
        (Value::Array(a), None) => {
            a.remove(last.parse::<usize>().unwrap());
        }
        _ => unreachable!(),
    }
    value
}

/// A mutation of `base`: up to three nodes replaced by generated JSON or removed.
fn mutated(base: Value) -> impl Strategy<Value = Value> {
    let edit = (
        proptest::collection::vec(any::<usize>(), 1..5),
        proptest::option::weighted(0.85, json_value()),
    );
    proptest::collection::vec(edit, 1..4).prop_map(move |edits| {
        let mut v = base.clone();
        for (picks, new) in edits {
            let path = path_in(&v, &picks);
            v = edited(v, &path, new);
        }
        v
    })
}

/// Bytes of `text` cut short, with a few bytes flipped.
fn damaged_bytes(text: String) -> impl Strategy<Value = Vec<u8>> {
    let n = text.len().max(1);
    (0..=n, proptest::collection::vec((0..n, any::<u8>()), 0..4)).prop_map(move |(cut, flips)| {
        let mut b = text.as_bytes().to_vec();
        for (i, x) in flips {
            if i < b.len() {
                b[i] = x;
            }
        }
        b.truncate(cut);
        b
    })
}

/// The refusal is bad input and names `file`.
fn refused_naming(error: &Error, file: &str) -> Result<(), TestCaseError> {
    let message = error.to_string();
    prop_assert_eq!(error.exit_code(), 2, "exit code of: {}", message);
    prop_assert!(message.contains(file), "names {}: {}", file, message);
    Ok(())
}

fn valid_job(dir: &Path) -> Value {
    let mut job = common::jobs::tiny_job(dir, "fuzz");
    job["data"]["train"] = json!(dir.join("corpus.txt"));
    job
}

#[test]
fn job_configs() {
    let dir = scratch("job");
    std::fs::write(dir.join("corpus.txt"), "some text").unwrap();
    let path = dir.join("job.json");
    let base = valid_job(&dir);
    let text = serde_json::to_string_pretty(&base).unwrap();
    let strategy = prop_oneof![
        3 => mutated(base).prop_map(|v| serde_json::to_vec(&v).unwrap()),
        1 => json_value().prop_map(|v| serde_json::to_vec(&v).unwrap()),
        1 => damaged_bytes(text),
    ];
    check("job config", strategy, |bytes| {
        std::fs::write(&path, &bytes).unwrap();
        match load_job_config(&path, &[]) {
            // The model section as the job would assemble it (preset, overrides, sizes),
            // without allocating the model.
            Ok(job) => match model_config(&job, &path) {
                Ok(_) => Ok(()),
                Err(e) => refused_naming(&e, "job.json"),
            },
            Err(e) => refused_naming(&Error::from(e), "job.json"),
        }
    });
}

#[test]
fn set_overrides() {
    let dir = scratch("set");
    std::fs::write(dir.join("corpus.txt"), "some text").unwrap();
    let path = dir.join("job.json");
    std::fs::write(&path, serde_json::to_string(&valid_job(&dir)).unwrap()).unwrap();
    let key_path = proptest::collection::vec(key(), 0..4).prop_map(|k| k.join("."));
    let raw_value = prop_oneof![json_value().prop_map(|v| v.to_string()), ".{0,10}",];
    let arg = prop_oneof![
        4 => (key_path, raw_value).prop_map(|(k, v)| format!("{k}={v}")),
        1 => ".{0,16}",
    ];
    check(
        "--set",
        proptest::collection::vec(arg, 1..4),
        |args| match load_job_config(&path, &args) {
            Ok(_) => Ok(()),
            Err(e) => {
                let e = Error::from(e);
                let m = e.to_string();
                prop_assert_eq!(e.exit_code(), 2, "{}", m);
                prop_assert!(m.contains("job.json") || m.contains("--set"), "{}", m);
                Ok(())
            }
        },
    );
}

/// Opens `file` as training data with the byte tokenizer (cache in `dir/cache`), like a job.
fn open_data(
    dir: &Path,
    file: &Path,
    format: DataFormat,
    csv: Option<CsvConfig>,
) -> Result<(), Error> {
    let mut config = DataConfig::new(file.to_path_buf(), 4);
    config.cache_dir = dir.join("cache");
    config.format = format;
    config.validation = Validation::Fraction(0.25);
    config.csv = csv;
    let job_file = dir.join("job.json");
    let data_err = |source| Error::Data {
        file: job_file.clone(),
        source,
    };
    let dataset = Dataset::open(&config, &ByteTokenizer).map_err(data_err)?;
    dataset.train_loader(2).map_err(data_err)?;
    dataset.validation_loader(2).map_err(data_err)?;
    Ok(())
}

/// A line of a JSONL file: mostly records with the keys the loader reads.
fn jsonl_line() -> impl Strategy<Value = String> {
    let record = proptest::collection::vec(
        (
            proptest::sample::select(&["text", "prompt", "completion", "other"][..]),
            leaf(),
        ),
        0..3,
    )
    .prop_map(|kv| {
        Value::Object(kv.into_iter().map(|(k, v)| (k.to_string(), v)).collect()).to_string()
    });
    prop_oneof![
        4 => record,
        1 => json_value().prop_map(|v| v.to_string()),
        1 => ".{0,20}",
        1 => Just(String::new()),
    ]
}

#[test]
fn jsonl_files() {
    let dir = scratch("jsonl");
    let file = dir.join("data.jsonl");
    let lines = proptest::collection::vec(jsonl_line(), 0..8).prop_map(|l| l.join("\n"));
    let strategy = prop_oneof![
        3 => lines.prop_map(String::into_bytes),
        1 => proptest::collection::vec(any::<u8>(), 0..64),
    ];
    check("JSONL", strategy, |bytes| {
        std::fs::write(&file, &bytes).unwrap();
        match open_data(&dir, &file, DataFormat::Jsonl, None) {
            Ok(()) => Ok(()),
            Err(e) => refused_naming(&e, "data.jsonl"),
        }
    });
}

fn csv_field() -> impl Strategy<Value = String> {
    prop_oneof![
        proptest::sample::select(
            &[
                "0",
                "1",
                "good",
                "bad",
                "",
                " ",
                "\"",
                "\"\"",
                "a\"b",
                "\"x\"",
                "\"a,b\"",
                "\"two\nlines\"",
                "\t",
                "\u{feff}"
            ][..]
        )
        .prop_map(str::to_string),
        "[a-z,\"\t\n ]{0,6}",
    ]
}

#[test]
fn csv_and_tsv_files() {
    let dir = scratch("csv");
    let row = proptest::collection::vec(csv_field(), 0..4);
    let body = (
        any::<bool>(),
        proptest::sample::select(
            &[
                "sentence,label",
                "sentence\tlabel",
                "label,sentence",
                "text,label",
                "",
            ][..],
        ),
        proptest::collection::vec(row, 0..8),
    );
    check("CSV/TSV", body, |(tsv, header, rows)| {
        let sep = if tsv { "\t" } else { "," };
        let mut text = format!("{header}\n");
        for r in rows {
            text += &r.join(sep);
            text += "\n";
        }
        let file = dir.join(if tsv { "data.tsv" } else { "data.csv" });
        std::fs::write(&file, &text).unwrap();
        let csv = CsvConfig {
            template: "Review: {sentence}\nSentiment:".into(),
            label_column: "label".into(),
            verbalizer: [("0", " bad"), ("1", " good")]
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect(),
            header: true,
            delimiter: None,
            quoting: None,
        };
        let format = if tsv {
            DataFormat::Tsv
        } else {
            DataFormat::Csv
        };
        match open_data(&dir, &file, format, Some(csv)) {
            Ok(()) => Ok(()),
            Err(e) => refused_naming(&e, file.file_name().unwrap().to_str().unwrap()),
        }
    });
}

/// A safetensors header entry, mostly plausible.
fn tensor_entry() -> impl Strategy<Value = Value> {
    let dtype = prop_oneof![
        proptest::sample::select(&["F32", "F16", "BF16", "F64", "I64", "U8", "F8_E4M3", "XX"][..])
            .prop_map(|s| json!(s)),
        leaf(),
    ];
    let shape = prop_oneof![
        proptest::collection::vec(0u64..5, 0..3).prop_map(|s| json!(s)),
        Just(json!([u64::MAX, 2])),
        leaf(),
    ];
    let offsets = prop_oneof![
        (0u64..64, 0u64..64).prop_map(|(a, b)| json!([a, b])),
        leaf(),
    ];
    (dtype, shape, offsets).prop_map(|(d, s, o)| json!({"dtype": d, "shape": s, "data_offsets": o}))
}

#[test]
fn safetensors_headers() {
    let dir = scratch("safetensors");
    let file = dir.join("model.safetensors");
    let header = prop_oneof![
        4 => proptest::collection::vec(
            (proptest::sample::select(&["transformer.wte.weight", "a", "__metadata__"][..]), tensor_entry()),
            0..4,
        )
        .prop_map(|kv| Value::Object(kv.into_iter().map(|(k, v)| (k.to_string(), v)).collect()).to_string().into_bytes()),
        1 => json_value().prop_map(|v| v.to_string().into_bytes()),
        1 => proptest::collection::vec(any::<u8>(), 0..16),
    ];
    let strategy = (
        header,
        prop_oneof![
            Just(None),
            Just(Some(0u64)),
            Just(Some(u64::MAX)),
            any::<u64>().prop_map(Some)
        ],
        0usize..80,
    );
    check(
        "safetensors header",
        strategy,
        |(header, declared, data_len)| {
            let mut bytes = declared
                .unwrap_or(header.len() as u64)
                .to_le_bytes()
                .to_vec();
            bytes.extend_from_slice(&header);
            bytes.extend(std::iter::repeat_n(0x3fu8, data_len));
            std::fs::write(&file, &bytes).unwrap();
            match WeightFiles::open_files(std::slice::from_ref(&file), file.clone()) {
                Ok(files) => {
                    let names: Vec<String> = files.names().map(str::to_string).collect();
                    for name in names {
                        if let Err(e) = files.read_f32(&name) {
                            refused_naming(&Error::Checkpoint(e), "model.safetensors")?;
                        }
                    }
                    Ok(())
                }
                Err(e) => {
                    let message = e.to_string();
                    prop_assert!(!message.contains("TensorInvalidInfo"), "{}", message);
                    refused_naming(&Error::Checkpoint(e), "model.safetensors")
                }
            }
        },
    );
}

#[test]
fn checkpoint_config_json() {
    let dir = scratch("config-json");
    let path = dir.join("config.json");
    let base: Value = serde_json::from_str(
        &std::fs::read_to_string(common::fixture_dir().join("config.json")).unwrap(),
    )
    .unwrap();
    let strategy = prop_oneof![
        3 => mutated(base),
        1 => json_value(),
    ];
    check("config.json", strategy, |value| {
        std::fs::write(&path, value.to_string()).unwrap();
        match ModelConfig::from_file(&path) {
            Ok(_) => Ok(()),
            Err(e) => refused_naming(&Error::Checkpoint(e.into()), "config.json"),
        }
    });
}

#[test]
fn tokenizer_json() {
    let dir = scratch("tokenizer");
    let path = dir.join("tokenizer.json");
    // A small valid byte-level BPE tokenizer.json, mutated.
    let base = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [{"id": 3, "content": "<|endoftext|>", "single_word": false,
                          "lstrip": false, "rstrip": false, "normalized": false, "special": true}],
        "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true,
                          "use_regex": true},
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true,
                    "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null,
                  "continuing_subword_prefix": null, "end_of_word_suffix": null,
                  "fuse_unk": false, "byte_fallback": false,
                  "vocab": {"a": 0, "b": 1, "ab": 2, "<|endoftext|>": 3},
                  "merges": ["a b"]}
    });
    let text = base.to_string();
    let strategy = prop_oneof![
        3 => mutated(base).prop_map(|v| v.to_string().into_bytes()),
        1 => damaged_bytes(text),
    ];
    check("tokenizer.json", strategy, |bytes| {
        std::fs::write(&path, &bytes).unwrap();
        let spec = TokenizerSpec::File(path.clone());
        match datasets::load_tokenizer(&spec) {
            Ok(tok) => {
                // A loaded tokenizer encodes and decodes without panicking.
                let ids = tok.encode("ab ba");
                let _ = tok.decode(&ids);
                Ok(())
            }
            Err(source) => refused_naming(
                &Error::Tokenizer {
                    origin: "job.json: field `tokenizer`".into(),
                    source,
                },
                "tokenizer.json",
            ),
        }
    });
}
