//! GGUF import against independent references (tests/fixtures/gen_gguf.py): every supported
//! tensor type dequantized as gguf-py dequantizes it, bit for bit; two small models in llama.cpp's
//! layout (a "llama" file with Q/K rows in llama.cpp's rotary order, a "qwen2" file with biases
//! and a tied head) imported and compared with what `transformers` loads from the same files
//! (weights bit for bit, logits, config, tokenizer ids and chat template); the real
//! SmolLM2-135M-Instruct from PyPI when `scripts/fetch-smollm2` could fetch it (logits, greedy
//! reply, tokenizer); and malformed files, cut and edited from the fixtures and the real file,
//! each an exit 2 that names the key or tensor, with no folder written.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use safetensors::SafeTensors;
use serde_json::Value;
use sha2::{Digest, Sha256};
use trainer::gguf::GgufFile;

use crate::common;
use crate::common::jobs::{fp8_trainer, logits_rows, read_json, stderr};
use crate::common::max_abs_diff;
use crate::common::process::assert_exit;

/// Must equal `FIXTURE_VERSION` of gen_gguf.py.
const FIXTURE_VERSION: u64 = 1;
/// The small models' logits, max |ours - transformers| (largest logit about 3.5): f32 sums in
/// another order than torch's over 2 layers. A row of Q or K in the wrong place, a missing
/// bias or a wrong rotary base moves logits by 1e-2 or more.
const TINY_LOGITS_ABS_TOL: f32 = 1e-4;
/// SmolLM2's logits, max |ours - transformers| over the largest |logit| of the position (the
/// issue's bound): 30 layers of f32 sums in another order than torch's.
const SMOLLM2_LOGITS_REL_TOL: f32 = 1e-4;

fn dir() -> PathBuf {
    common::repo_root().join("tests/fixtures/gguf")
}

/// A reference JSON of gen_gguf.py, after checking its version.
fn reference(name: &str) -> Value {
    let r = read_json(&dir().join(format!("{name}_reference.json")));
    assert_eq!(
        r["fixture_version"].as_u64(),
        Some(FIXTURE_VERSION),
        "tests/fixtures/gguf is stale; re-run `python tests/fixtures/gen_gguf.py`"
    );
    r
}

/// Tensors of a reference safetensors file.
struct Tensors(Vec<u8>);

impl Tensors {
    fn open(path: &Path) -> Self {
        Self(std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
    }

    fn f32(&self, name: &str) -> Vec<f32> {
        let st = SafeTensors::deserialize(&self.0).unwrap();
        let t = st
            .tensor(name)
            .unwrap_or_else(|_| panic!("{name} in the reference"));
        assert_eq!(t.dtype(), safetensors::Dtype::F32, "{name}");
        t.data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect()
    }

    fn ids(&self, name: &str) -> Vec<u32> {
        let st = SafeTensors::deserialize(&self.0).unwrap();
        let t = st
            .tensor(name)
            .unwrap_or_else(|_| panic!("{name} in the reference"));
        assert_eq!(t.dtype(), safetensors::Dtype::I64, "{name}");
        t.data()
            .chunks_exact(8)
            .map(|b| i64::from_le_bytes(b.try_into().unwrap()) as u32)
            .collect()
    }
}

fn json_ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap_or_else(|| panic!("an id list: {v}"))
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// `fp8-trainer import` of `gguf` into a fresh scratch folder `name`; the folder.
fn import(gguf: &Path, name: &str) -> PathBuf {
    let out = common::scratch_dir(name).join("model");
    let run = fp8_trainer(&[
        "import",
        "--gguf",
        gguf.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(
        run.status.success(),
        "import {}: {}",
        gguf.display(),
        stderr(&run)
    );
    out
}

/// `fp8-trainer logits` of `tokens` on `checkpoint`: one row per position.
fn logits(checkpoint: &Path, tokens: &[u32]) -> Vec<Vec<f32>> {
    logits_rows(
        checkpoint,
        tokens,
        "fp32",
        &checkpoint.with_file_name("logits.json"),
    )
}

fn sha256_f32(values: &[f32]) -> String {
    let mut h = Sha256::new();
    for v in values {
        h.update(v.to_le_bytes());
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn every_type_dequantizes_as_gguf_py_bit_for_bit() {
    let file = GgufFile::open(&dir().join("quants.gguf")).unwrap();
    let reference = Tensors::open(&dir().join("quants_reference.safetensors"));
    let mut types = Vec::new();
    for t in &file.tensors {
        let ours = t.ty.dequantize(file.data(t));
        let theirs = reference.f32(&t.name);
        assert_eq!(t.shape(), [3, 512], "{}", t.name);
        let differ: Vec<usize> = (0..ours.len())
            .filter(|&i| ours[i].to_bits() != theirs[i].to_bits())
            .collect();
        assert!(
            differ.is_empty(),
            "{}: {} of {} elements differ from gguf-py's, first at {}: {} vs {}",
            t.name,
            differ.len(),
            ours.len(),
            differ[0],
            ours[differ[0]],
            theirs[differ[0]]
        );
        types.push(t.ty.name());
    }
    types.sort();
    assert_eq!(
        types,
        ["BF16", "F16", "F32", "Q4_0", "Q4_1", "Q4_K", "Q5_K", "Q6_K", "Q8_0"]
    );
}

/// A small model's GGUF imported, against what `transformers` loads from the same file.
fn small_model_matches_transformers(name: &str) {
    let r = reference(name);
    let tensors = Tensors::open(&dir().join(format!("{name}_reference.safetensors")));
    let folder = import(&dir().join(format!("{name}.gguf")), &format!("gguf-{name}"));

    // Every weight, bit for bit: the stored ones (each Q/K projection, so the rotary rows) in
    // full, the others by the sha256 of their f32 bytes.
    let ours = common::read_tensors(&folder.join("model.safetensors"));
    let weights = r["weights"].as_object().unwrap();
    let tied = r["config"]["tie_word_embeddings"].as_bool().unwrap();
    let expected: Vec<&String> = weights
        .keys()
        .filter(|n| !(tied && n.as_str() == "lm_head.weight"))
        .collect();
    let mut names: Vec<&String> = ours.iter().map(|t| &t.name).collect();
    names.sort();
    assert_eq!(names, expected, "{name}: the imported tensors");
    for t in &ours {
        let w = &weights[&t.name];
        assert_eq!(
            t.shape,
            json_ids(&w["shape"])
                .iter()
                .map(|&d| d as usize)
                .collect::<Vec<_>>(),
            "{name}: {} shape",
            t.name
        );
        if w["stored"].as_bool() == Some(true) {
            let diff = max_abs_diff(&t.values, &tensors.f32(&t.name));
            assert_eq!(
                diff, 0.0,
                "{name}: {} differs from transformers' by {diff}",
                t.name
            );
        }
        assert_eq!(
            sha256_f32(&t.values),
            w["sha256_f32"].as_str().unwrap(),
            "{name}: {} (from {} {}) is not transformers' dequantization",
            t.name,
            w["gguf_type"],
            w["gguf_name"]
        );
    }

    // The config transformers builds from the metadata.
    let config = read_json(&folder.join("config.json"));
    for key in [
        "model_type",
        "vocab_size",
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "head_dim",
        "max_position_embeddings",
        "rms_norm_eps",
        "tie_word_embeddings",
        "bos_token_id",
        "eos_token_id",
    ] {
        // Qwen2's config has no `head_dim` in transformers (derived); ours states it.
        if key == "head_dim" && r["config"][key].is_null() {
            let derived = r["config"]["hidden_size"].as_u64().unwrap()
                / r["config"]["num_attention_heads"].as_u64().unwrap();
            assert_eq!(config[key].as_u64(), Some(derived), "{name}: head_dim");
            continue;
        }
        assert_eq!(config[key], r["config"][key], "{name}: config.json `{key}`");
    }
    let theta = config["rope_theta"]
        .as_f64()
        .or_else(|| config["rope_parameters"]["rope_theta"].as_f64());
    assert_eq!(
        theta,
        r["config"]["rope_parameters"]["rope_theta"].as_f64(),
        "{name}: rope_theta"
    );

    // Logits.
    let ids = tensors.ids("input_ids");
    let expected = tensors.f32("logits");
    let rows = logits(&folder, &ids);
    let ours: Vec<f32> = rows.concat();
    let diff = max_abs_diff(&ours, &expected);
    eprintln!("{name}: logits max |ours - transformers| {diff:e}");
    assert!(diff <= TINY_LOGITS_ABS_TOL, "{name}: logits off by {diff}");

    tokenizer_matches(name, &folder, &r["tokenizer"]);
}

/// The imported tokenizer against transformers' tokenizer of the same GGUF: ids with and
/// without the special tokens it adds, decoding, and a chat prompt's rendering and ids.
fn tokenizer_matches(name: &str, folder: &Path, r: &Value) {
    let tok = datasets::tokenizer_from_checkpoint_dir(folder)
        .unwrap()
        .unwrap();
    for case in r["texts"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let plain = tok.encode(text);
        let with: Vec<u32> = [tok.bos_prefix(), plain.clone()].concat();
        let specials = tok.encode_rendered(text).unwrap();
        let rendered: Vec<u32> = specials.iter().map(|(id, _)| *id).collect();
        // transformers encodes special-token strings in plain text as their ids; the trainer
        // keeps them as text in documents and finds them in what a chat template renders.
        let theirs = json_ids(&case["ids_no_special"]);
        assert_eq!(rendered, theirs, "{name}: {text:?}");
        if !text.contains("<|") {
            assert_eq!(plain, theirs, "{name}: {text:?}");
            assert_eq!(
                with,
                json_ids(&case["ids"]),
                "{name}: {text:?} with special tokens"
            );
            assert_eq!(
                tok.decode(&plain).unwrap(),
                case["decoded_skip_special"].as_str().unwrap(),
                "{name}: decoding {text:?}"
            );
        }
    }
    let chat = &r["chat"];
    let template = datasets::ChatTemplate::resolve(
        &datasets::ChatConfig::default(),
        Some(folder),
        tok.as_ref(),
    )
    .unwrap();
    let messages = chat["messages"].as_array().unwrap();
    let text = template.render(messages, true).unwrap();
    assert_eq!(
        text,
        chat["text"].as_str().unwrap(),
        "{name}: chat rendering"
    );
    let ids: Vec<u32> = tok
        .encode_rendered(&text)
        .unwrap()
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(ids, json_ids(&chat["ids"]), "{name}: chat ids");
}

#[test]
fn a_llama_gguf_imports_as_transformers_loads_it() {
    small_model_matches_transformers("llama-tiny");
}

#[test]
fn a_qwen2_gguf_imports_as_transformers_loads_it() {
    small_model_matches_transformers("qwen2-tiny");
}

/// The real model's file, when `scripts/fetch-smollm2` fetched it (scripts/test sets
/// `SMOLLM2_GGUF`; else the script's default cache).
fn smollm2_gguf() -> Option<PathBuf> {
    if let Some(named) = std::env::var_os("SMOLLM2_GGUF") {
        // scripts/test sets it only after fetching: a missing file is a broken fetch, not a skip.
        let path = PathBuf::from(named);
        assert!(
            path.is_file(),
            "SMOLLM2_GGUF={} is not a file",
            path.display()
        );
        return Some(path);
    }
    let cache = std::env::var_os("FP8_TRAINER_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache/fp8-trainer")))?;
    let path = cache.join("smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    if path.is_file() {
        Some(path)
    } else {
        eprintln!(
            "SKIPPED: SmolLM2-135M-Instruct is not fetched ({} is missing; run \
             scripts/fetch-smollm2, which needs PyPI)",
            path.display()
        );
        None
    }
}

/// The imported SmolLM2, once per process (its import takes seconds, its folder 0.5 GB).
fn smollm2() -> Option<&'static Path> {
    static FOLDER: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();
    FOLDER
        .get_or_init(|| smollm2_gguf().map(|gguf| import(&gguf, "gguf-smollm2")))
        .as_deref()
}

#[test]
fn smollm2_from_pypi_matches_transformers() {
    let Some(folder) = smollm2() else { return };
    let r = reference("smollm2");
    let tensors = Tensors::open(&dir().join("smollm2_reference.safetensors"));
    let ids = tensors.ids("input_ids");
    assert_eq!(ids, json_ids(&r["input_ids"]));

    // The chat prompt: the imported template renders it, the tokenizer gives its ids.
    let tok = datasets::tokenizer_from_checkpoint_dir(folder)
        .unwrap()
        .unwrap();
    let template = datasets::ChatTemplate::resolve(
        &datasets::ChatConfig::default(),
        Some(folder),
        tok.as_ref(),
    )
    .unwrap();
    let text = template
        .render(r["messages"].as_array().unwrap(), true)
        .unwrap();
    assert_eq!(text, r["rendered"].as_str().unwrap());
    let encoded: Vec<u32> = tok
        .encode_rendered(&text)
        .unwrap()
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(encoded, ids, "the chat prompt's ids");

    // Logits: every position at the sampled ids (and each position's top 16), the last in full.
    let rows = logits(folder, &ids);
    let (sample, sampled) = (tensors.ids("sample_ids"), tensors.f32("logits_sample"));
    let (max_abs, argmax) = (tensors.f32("logits_max_abs"), tensors.ids("logits_argmax"));
    let mut worst = 0f32;
    for (p, row) in rows.iter().enumerate() {
        assert_eq!(row.len(), 49152);
        let ours: Vec<f32> = sample.iter().map(|&i| row[i as usize]).collect();
        let theirs = &sampled[p * sample.len()..(p + 1) * sample.len()];
        worst = worst.max(max_abs_diff(&ours, theirs) / max_abs[p]);
        let best = (0..row.len())
            .max_by(|&a, &b| row[a].total_cmp(&row[b]))
            .unwrap();
        assert_eq!(
            best as u32, argmax[p],
            "position {p}: the most likely token"
        );
    }
    let last = max_abs_diff(&rows[rows.len() - 1], &tensors.f32("logits_last"));
    worst = worst.max(last / max_abs[rows.len() - 1]);
    eprintln!("smollm2: logits max |ours - transformers| / max |logit| {worst:e}");
    assert!(
        worst <= SMOLLM2_LOGITS_REL_TOL,
        "logits off by {worst} of the largest"
    );

    // The greedy reply.
    let list: Vec<String> = ids.iter().map(u32::to_string).collect();
    let run = fp8_trainer(&[
        "generate",
        "--checkpoint",
        folder.to_str().unwrap(),
        "--tokens",
        &list.join(","),
        "--temperature",
        "0",
        "--max-new-tokens",
        "16",
    ]);
    assert!(run.status.success(), "{}", stderr(&run));
    let reply = json_ids(&r["generate"]["ids"]);
    let printed: Vec<u32> = String::from_utf8_lossy(&run.stdout)
        .trim()
        .split(',')
        .map(|s| s.parse().unwrap())
        .collect();
    assert_eq!(
        printed, reply,
        "the greedy reply (\"{}\")",
        r["generate"]["text"]
    );
    assert_eq!(
        tok.decode(&reply[..reply.len() - 1]).unwrap(),
        "The capital of France is Paris."
    );

    tokenizer_matches("smollm2", folder, &r["tokenizer"]);
}

/// Byte positions of the parts of a GGUF file the malformed cases edit.
struct Layout {
    /// Per metadata entry: its key, where its type (u32) is, where its value starts.
    kv: Vec<(String, usize, usize)>,
    /// Per tensor: its name, where its type (u32) and its offset (u64) are.
    tensors: Vec<(String, usize, usize)>,
    data_start: usize,
}

fn layout(bytes: &[u8]) -> Layout {
    let mut pos = 8;
    let u32_at = |p: usize| u32::from_le_bytes(bytes[p..p + 4].try_into().unwrap());
    let u64_at = |p: usize| u64::from_le_bytes(bytes[p..p + 8].try_into().unwrap()) as usize;
    let (n_tensors, n_kv) = (u64_at(pos), u64_at(pos + 8));
    pos += 16;
    fn skip(bytes: &[u8], pos: &mut usize, ty: u32) {
        let u64_at = |p: usize| u64::from_le_bytes(bytes[p..p + 8].try_into().unwrap()) as usize;
        match ty {
            0 | 1 | 7 => *pos += 1,
            2 | 3 => *pos += 2,
            4..=6 => *pos += 4,
            10..=12 => *pos += 8,
            8 => *pos += 8 + u64_at(*pos),
            9 => {
                let item = u32::from_le_bytes(bytes[*pos..*pos + 4].try_into().unwrap());
                let n = u64_at(*pos + 4);
                *pos += 12;
                for _ in 0..n {
                    skip(bytes, pos, item);
                }
            }
            _ => panic!("type {ty}"),
        }
    }
    let mut kv = Vec::new();
    for _ in 0..n_kv {
        let len = u64_at(pos);
        let key = String::from_utf8(bytes[pos + 8..pos + 8 + len].to_vec()).unwrap();
        pos += 8 + len;
        let ty_at = pos;
        pos += 4;
        kv.push((key, ty_at, pos));
        skip(bytes, &mut pos, u32_at(ty_at));
    }
    let mut tensors = Vec::new();
    for _ in 0..n_tensors {
        let len = u64_at(pos);
        let name = String::from_utf8(bytes[pos + 8..pos + 8 + len].to_vec()).unwrap();
        pos += 8 + len;
        let dims = u32_at(pos) as usize;
        pos += 4 + 8 * dims;
        tensors.push((name, pos, pos + 4));
        pos += 12;
    }
    Layout {
        kv,
        tensors,
        data_start: pos.div_ceil(32) * 32,
    }
}

/// Imports an edited copy of `bytes`: exit 2 within seconds, every needle in the message, no
/// folder written.
fn refused(label: &str, bytes: &[u8], needles: &[&str]) {
    let dir = common::scratch_dir(&format!("gguf-bad-{label}"));
    let path = dir.join("bad.gguf");
    std::fs::write(&path, bytes).unwrap();
    let out = dir.join("out");
    let started = Instant::now();
    let run = fp8_trainer(&[
        "import",
        "--gguf",
        path.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    let took = started.elapsed();
    std::fs::remove_file(&path).unwrap(); // a copy of the real model weighs 98 MB
    let mut needles = needles.to_vec();
    needles.push("bad.gguf");
    assert_exit(label, &run, 2, &needles);
    assert!(!out.exists(), "{label}: no folder is written");
    let leftovers: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(leftovers.is_empty(), "{label}: left {leftovers:?}");
    assert!(took < Duration::from_secs(30), "{label}: took {took:?}");
}

/// The malformed cases, cut and edited from `bytes` (a real GGUF with a tokenizer).
fn malformed_suite(tag: &str, bytes: &[u8]) {
    let l = layout(bytes);
    let put_u32 =
        |b: &mut Vec<u8>, at: usize, v: u32| b[at..at + 4].copy_from_slice(&v.to_le_bytes());
    let put_u64 =
        |b: &mut Vec<u8>, at: usize, v: u64| b[at..at + 8].copy_from_slice(&v.to_le_bytes());
    let kv = |key: &str| {
        l.kv.iter()
            .find(|k| k.0 == key)
            .unwrap_or_else(|| panic!("{key}"))
    };
    let (first, last) = (&l.tensors[0], &l.tensors[l.tensors.len() - 1]);

    refused(
        &format!("{tag}-magic"),
        &[b"GGUX", &bytes[4..]].concat(),
        &["not a GGUF file"],
    );
    let mut b = bytes.to_vec();
    put_u32(&mut b, 4, 9);
    refused(&format!("{tag}-version"), &b, &["version 9"]);
    // Truncated in the header, in the metadata, in the tensor table, in the data.
    refused(
        &format!("{tag}-cut-header"),
        &bytes[..12],
        &["the header", "truncated"],
    );
    let (key, _, value) = kv("tokenizer.ggml.tokens");
    refused(
        &format!("{tag}-cut-metadata"),
        &bytes[..value + 4000],
        &[key.as_str(), "truncated"],
    );
    refused(
        &format!("{tag}-cut-tensors"),
        &bytes[..first.1],
        &[&format!("tensor `{}`", first.0)],
    );
    let offset_of =
        |t: &(String, usize, usize)| u64::from_le_bytes(bytes[t.2..t.2 + 8].try_into().unwrap());
    let in_data_last = l.tensors.iter().max_by_key(|t| offset_of(t)).unwrap();
    refused(
        &format!("{tag}-cut-data"),
        &bytes[..bytes.len() - 1],
        &[
            &format!("tensor `{}`", in_data_last.0),
            "past the end of the file",
        ],
    );
    // Counts and sizes that lie.
    let mut b = bytes.to_vec();
    put_u64(&mut b, 8, 1 << 40);
    refused(&format!("{tag}-tensor-count"), &b, &["tensor count"]);
    let mut b = bytes.to_vec();
    put_u64(&mut b, value + 4, 1 << 40); // the tokens array's length
    refused(
        &format!("{tag}-array-length"),
        &b,
        &["tokenizer.ggml.tokens", "array of 1099511627776 items"],
    );
    let (_, _, name_value) = kv("general.architecture");
    let mut b = bytes.to_vec();
    put_u64(&mut b, *name_value, u64::MAX / 2); // its string's length
    refused(
        &format!("{tag}-string-length"),
        &b,
        &["general.architecture", "a string of"],
    );
    let mut b = bytes.to_vec();
    put_u64(&mut b, last.2, 1 << 50);
    refused(
        &format!("{tag}-offset"),
        &b,
        &[&format!("tensor `{}`", last.0), "past the end of the file"],
    );
    let mut b = bytes.to_vec();
    let second = &l.tensors[1];
    put_u64(&mut b, second.2, offset_of(first));
    refused(&format!("{tag}-overlap"), &b, &["overlaps"]);
    // Types: a ggml type that does not exist, one this importer does not read, a value type
    // GGUF does not define, a key of the wrong type.
    let mut b = bytes.to_vec();
    put_u32(&mut b, first.1, 99);
    refused(
        &format!("{tag}-ggml-type"),
        &b,
        &[&format!("tensor `{}`", first.0), "ggml type 99"],
    );
    let mut b = bytes.to_vec();
    put_u32(&mut b, first.1, 11);
    refused(
        &format!("{tag}-q3k"),
        &b,
        &[&format!("tensor `{}`", first.0), "Q3_K"],
    );
    let (key, ty_at, _) = kv("general.architecture");
    let mut b = bytes.to_vec();
    put_u32(&mut b, *ty_at, 77);
    refused(
        &format!("{tag}-value-type"),
        &b,
        &[key.as_str(), "value type 77"],
    );
    let (key, ty_at, _) = l.kv.iter().find(|k| k.0.ends_with(".block_count")).unwrap();
    let mut b = bytes.to_vec();
    put_u32(&mut b, *ty_at, 5); // int32 ...
    put_u32(&mut b, ty_at + 4, u32::MAX); // ... -1
    refused(
        &format!("{tag}-key-type"),
        &b,
        &[key.as_str(), "unsigned integer"],
    );
    // A key renamed away: missing.
    let (key, ty_at, _) = kv("tokenizer.ggml.merges");
    let mut b = bytes.to_vec();
    let at = ty_at - 6; // "merges" -> "mergez"
    assert_eq!(&b[at..at + 6], b"merges");
    b[at + 5] = b'z';
    refused(
        &format!("{tag}-missing-key"),
        &b,
        &[&format!("`{key}`"), "missing"],
    );
    // Not UTF-8.
    let (_, _, name_value) = kv("general.architecture");
    let mut b = bytes.to_vec();
    b[name_value + 8] = 0xFF;
    refused(
        &format!("{tag}-utf8"),
        &b,
        &["general.architecture", "not UTF-8"],
    );
    // Data that decodes to infinity (an F32 tensor's first element).
    if let Some(f32_tensor) = l
        .tensors
        .iter()
        .find(|t| u32::from_le_bytes(bytes[t.1..t.1 + 4].try_into().unwrap()) == 0)
    {
        let offset = u64::from_le_bytes(bytes[f32_tensor.2..f32_tensor.2 + 8].try_into().unwrap());
        let at = l.data_start + offset as usize;
        let mut b = bytes.to_vec();
        b[at..at + 4].copy_from_slice(&f32::INFINITY.to_le_bytes());
        refused(
            &format!("{tag}-infinite"),
            &b,
            &[&format!("tensor `{}`", f32_tensor.0), "not finite"],
        );
    }
}

#[test]
fn malformed_ggufs_exit_2_naming_the_key_or_tensor() {
    malformed_suite(
        "llama",
        &std::fs::read(dir().join("llama-tiny.gguf")).unwrap(),
    );
}

#[test]
fn malformed_copies_of_smollm2_exit_2_naming_the_key_or_tensor() {
    let Some(gguf) = smollm2_gguf() else { return };
    malformed_suite("smollm2", &std::fs::read(gguf).unwrap());
}

#[test]
fn an_existing_folder_is_kept_without_overwrite() {
    let gguf = dir().join("llama-tiny.gguf");
    let folder = common::scratch_dir("gguf-existing").join("model");
    std::fs::create_dir_all(&folder).unwrap();
    std::fs::write(folder.join("keep.txt"), "mine").unwrap();
    let args = [
        "import",
        "--gguf",
        gguf.to_str().unwrap(),
        "--out",
        folder.to_str().unwrap(),
    ];
    assert_exit(
        "existing folder",
        &fp8_trainer(&args),
        2,
        &["--out", "--overwrite"],
    );
    assert_eq!(
        std::fs::read_to_string(folder.join("keep.txt")).unwrap(),
        "mine"
    );
    let run = fp8_trainer(&[&args[..], &["--overwrite"]].concat());
    assert!(run.status.success(), "{}", stderr(&run));
    assert!(!folder.join("keep.txt").exists() && folder.join("model.safetensors").is_file());
}
