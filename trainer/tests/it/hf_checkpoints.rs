//! Our checkpoints are Hugging Face checkpoint folders (docs/design.md "Model and checkpoints"):
//! saving then loading is bit-identical, tied and untied; the variants the hub has load (no
//! `transformer.` prefix, attention buffers, a stored tied head, shards); a checkpoint `train`
//! writes is self-contained (tokenizer and generation config beside the weights, so `generate`
//! needs no flags), and one trained at a learning rate too small to move a weight is the fixture
//! again, key for key and bit for bit.
//!
//! `saved_checkpoint_for_transformers` and `a_checkpoint_written_by_train_is_the_fixture_again`
//! leave our saves of the fixture under the test target directory and print the command that
//! checks them with `transformers` (run by hand; the result is in tests/README.md):
//!   python tests/fixtures/gen_gpt2.py --check <printed path>

use std::path::Path;

use crate::common;
use crate::common::jobs::{
    assert_ok, fp8_trainer, job, read_json, scratch, stderr, train, write_config,
};
use burn::backend::NdArray;
use burn::tensor::{Int, Tensor, TensorData};
use serde_json::json;
use trainer::checkpoint::{write_safetensors, NamedTensor, WEIGHTS_INDEX_FILE};
use trainer::model::names::param_values;
use trainer::{load_checkpoint, save_checkpoint, Gpt2Config, Model, ModelConfig, ModelOptions};

/// The model runs on the FP8 decorator (with FP8 off, bit-identical to plain ndarray).
type Cpu = fp8_backend::Fp8<NdArray<f32>>;

fn load(dir: &Path) -> Model<Cpu> {
    load_checkpoint::<Cpu>(dir, &ModelOptions::default(), &Default::default())
        .unwrap_or_else(|e| panic!("loading {}: {e}", dir.display()))
}

/// Every parameter, by name, as raw f32 bits.
fn bits(model: &Model<Cpu>) -> Vec<(String, Vec<u32>)> {
    param_values(model)
        .into_iter()
        .map(|(name, data)| {
            (
                name,
                data.into_vec::<f32>()
                    .unwrap()
                    .iter()
                    .map(|v| v.to_bits())
                    .collect(),
            )
        })
        .collect()
}

fn logits(model: &Model<Cpu>) -> Vec<f32> {
    let tokens: Vec<i64> = (0..16).map(|i| (i * 37) % 512).collect();
    let input =
        Tensor::<Cpu, 2, Int>::from_data(TensorData::new(tokens, [1, 16]), &Default::default());
    model.forward(input).into_data().into_vec().unwrap()
}

#[test]
fn save_then_load_is_bit_identical() {
    let fixture = load(&common::fixture_dir());
    let dir = common::scratch_dir("roundtrip").join("step-1");
    save_checkpoint(&fixture, &dir).unwrap();
    assert_eq!(bits(&load(&dir)), bits(&fixture));

    // Same tensors, same names, same bytes as the file transformers wrote.
    let ours = common::read_tensors(&dir.join("model.safetensors"));
    let theirs = common::read_tensors(&common::fixture_dir().join("model.safetensors"));
    assert_eq!(
        ours.iter().map(|t| &t.name).collect::<Vec<_>>(),
        theirs.iter().map(|t| &t.name).collect::<Vec<_>>()
    );
    for (a, b) in ours.iter().zip(&theirs) {
        assert_eq!((&a.shape, &a.values), (&b.shape, &b.values), "{}", a.name);
    }

    // Saving over an existing checkpoint replaces it and leaves no temporary directories.
    save_checkpoint(&fixture, &dir).unwrap();
    let siblings: Vec<_> = std::fs::read_dir(dir.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(siblings, vec![std::ffi::OsString::from("step-1")]);
}

/// The keys in which a `config.json` we save may differ from the Hugging Face one it was loaded
/// from (docs/design.md "Model and checkpoints": saving adds `model_type`, `architectures` and
/// `reorder_and_upcast_attn: false`, and writes every typed field, HF defaults included). The
/// fixture was written by `transformers` 5.24 and has all of them already, with the same values,
/// so for it the list is empty: every key and every value must survive. (Numbers compare as
/// numbers: we write `layer_norm_epsilon` 1e-05 as `0.00001`.)
const DOCUMENTED_CONFIG_DIFFERENCES: [&str; 0] = [];

fn json_file(path: &Path) -> serde_json::Map<String, serde_json::Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

/// `saved` holds the fixture's config.json key for key, with equal values.
fn assert_config_matches_the_fixture(saved: &Path) {
    let ours = json_file(&saved.join("config.json"));
    let theirs = json_file(&common::fixture_dir().join("config.json"));
    let keys = |m: &serde_json::Map<String, serde_json::Value>| {
        m.keys()
            .filter(|k| !DOCUMENTED_CONFIG_DIFFERENCES.contains(&k.as_str()))
            .cloned()
            .collect::<Vec<_>>()
    };
    assert_eq!(
        keys(&ours),
        keys(&theirs),
        "{}: the same keys",
        saved.display()
    );
    for (key, value) in &theirs {
        assert_eq!(&ours[key], value, "{}: `{key}`", saved.display());
    }
}

/// Our save of the fixture, left under the test target directory for the `transformers` check
/// (tests/README.md): `python tests/fixtures/gen_gpt2.py --check <printed path>`.
#[test]
fn saved_checkpoint_for_transformers() {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("gpt2-tiny-saved-by-rust");
    save_checkpoint(&load(&common::fixture_dir()), &dir).unwrap();
    assert_config_matches_the_fixture(&dir);
    println!(
        "check with transformers: python tests/fixtures/gen_gpt2.py --check {}",
        dir.display()
    );
}

/// A checkpoint written by `fp8-trainer train` (one step on the fixture with a learning rate so
/// small that no f32 weight moves: AdamW's first step moves each by about lr = 1e-30, and the
/// fixture's smallest |weight| is 3.2e-6, whose half ulp is 1.1e-13) is the fixture again: the
/// same config.json key for key and the same tensors bit for bit, in the training checkpoint
/// layout. tests/README.md records `gen_gpt2.py --check` on it.
#[test]
fn a_checkpoint_written_by_train_is_the_fixture_again() {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("gpt2-tiny-trained-by-rust");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let sonnets =
        common::repo_root().join("datasets/data/shakespeare_milton/shakespeare_sonnets.txt");
    let job = json!({
        "name": "fixture", "out_dir": dir.join("runs"),
        "model": {"checkpoint": common::fixture_dir()},
        "tokenizer": "bytes",
        "data": {"train": sonnets, "seq_len": 64, "cache_dir": dir.join("cache")},
        "precision": {"mode": "fp32"},
        "optimizer": {"lr": 1e-30},
        "batch_size": 2, "steps": 1
    });
    let config = dir.join("job.json");
    std::fs::write(&config, job.to_string()).unwrap();
    let out = std::process::Command::new(common::trainer_bin())
        .args(["train", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let checkpoint = dir.join("runs/fixture/checkpoints/step-1");
    assert!(checkpoint.join("trainer_state/state.json").is_file());
    assert_config_matches_the_fixture(&checkpoint);
    let ours = common::read_tensors(&checkpoint.join("model.safetensors"));
    let theirs = common::read_tensors(&common::fixture_dir().join("model.safetensors"));
    assert_eq!(ours.len(), theirs.len());
    for (a, b) in ours.iter().zip(&theirs) {
        assert_eq!((&a.name, &a.shape), (&b.name, &b.shape));
        assert!(a.values == b.values, "{} moved", a.name);
    }
    println!(
        "check with transformers: python tests/fixtures/gen_gpt2.py --check {}",
        checkpoint.display()
    );
}

#[test]
fn random_model_round_trips_tied_and_untied() {
    for tie in [true, false] {
        let config = Gpt2Config {
            tie_word_embeddings: tie,
            ..Gpt2Config::tiny()
        };
        let config = ModelConfig::Gpt2(config);
        let model =
            Model::<Cpu>::new(&config, &ModelOptions::default(), &Default::default()).unwrap();
        let dir = common::scratch_dir(&format!("random-tie-{tie}"));
        save_checkpoint(&model, &dir).unwrap();
        let names: Vec<String> = common::read_tensors(&dir.join("model.safetensors"))
            .into_iter()
            .map(|t| t.name)
            .collect();
        assert_eq!(names.contains(&"lm_head.weight".to_string()), !tie);
        let loaded = load(&dir);
        assert_eq!(loaded.config(), model.config());
        assert_eq!(bits(&loaded), bits(&model));
        assert_eq!(logits(&loaded), logits(&model));
    }
}

/// The original `gpt2` upload: no `transformer.` prefix, causal-mask buffers, and here also a
/// stored copy of the tied head. All of it loads, to the same model.
#[test]
fn hub_style_names_buffers_and_stored_tied_head_load() {
    let dir = common::edited_fixture("hub-style", |tensors| {
        for t in tensors.iter_mut() {
            t.name = t.name.strip_prefix("transformer.").unwrap().to_string();
        }
        let wte = tensors.iter().find(|t| t.name == "wte.weight").unwrap();
        let head = NamedTensor {
            name: "lm_head.weight".into(),
            shape: wte.shape.clone(),
            values: wte.values.clone(),
        };
        tensors.push(head);
        for layer in 0..2 {
            for buffer in ["bias", "masked_bias"] {
                tensors.push(NamedTensor {
                    name: format!("h.{layer}.attn.{buffer}"),
                    shape: vec![1],
                    values: vec![1.0],
                });
            }
        }
    });
    assert_eq!(bits(&load(&dir)), bits(&load(&common::fixture_dir())));
}

#[test]
fn sharded_checkpoint_loads() {
    let tensors = common::read_tensors(&common::fixture_dir().join("model.safetensors"));
    let dir = common::scratch_dir("sharded");
    std::fs::copy(
        common::fixture_dir().join("config.json"),
        dir.join("config.json"),
    )
    .unwrap();
    let (first, second) = tensors.split_at(tensors.len() / 2);
    let mut weight_map = serde_json::Map::new();
    for (shard, part) in [
        ("model-00001-of-00002.safetensors", first),
        ("model-00002-of-00002.safetensors", second),
    ] {
        write_safetensors(&dir.join(shard), part).unwrap();
        for t in part {
            weight_map.insert(t.name.clone(), json!(shard));
        }
    }
    let index = json!({ "metadata": {}, "weight_map": weight_map });
    std::fs::write(dir.join(WEIGHTS_INDEX_FILE), index.to_string()).unwrap();
    assert_eq!(bits(&load(&dir)), bits(&load(&common::fixture_dir())));
}

/// The checkpoint holds what `from_pretrained` and `AutoTokenizer.from_pretrained` read, and
/// `generate` needs no `--tokenizer` for it (the README's quickstart case: bytes tokenizer).
#[test]
fn a_checkpoint_is_self_contained_and_generates_without_flags() {
    let dir = scratch("self-contained");
    let path = write_config(&dir, "job.json", &job(&dir, "sc", 2));
    assert_ok(&train(&path, &[], &[]));
    let ckpt = dir.join("runs/sc/checkpoints/step-2");
    for file in [
        "config.json",
        "model.safetensors",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
    ] {
        assert!(ckpt.join(file).is_file(), "{file} missing");
    }
    let generation = read_json(&ckpt.join("generation_config.json"));
    assert_eq!(
        generation["eos_token_id"], 256,
        "the byte tokenizer's end-of-text"
    );
    let tokenizer = read_json(&ckpt.join("tokenizer.json"));
    assert_eq!(tokenizer["added_tokens"][0]["id"], 256);
    assert_eq!(tokenizer["model"]["vocab"].as_object().unwrap().len(), 257);
    let tok_config = read_json(&ckpt.join("tokenizer_config.json"));
    assert_eq!(tok_config["fp8_trainer_tokenizer"], "bytes");
    assert_eq!(tok_config["model_max_length"], 32);

    let ckpt_arg = ckpt.to_str().unwrap();
    let args = [
        "generate",
        "--checkpoint",
        ckpt_arg,
        "--prompt",
        "ROMEO:",
        "--max-new-tokens",
        "8",
        "--temperature",
        "0",
    ];
    let out = fp8_trainer(&args);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.starts_with("ROMEO:"), "{text}");
    // The same continuation as with the tokenizer named explicitly.
    let mut explicit = args.to_vec();
    explicit.extend(["--tokenizer", "bytes"]);
    let again = fp8_trainer(&explicit);
    assert_eq!(String::from_utf8(again.stdout).unwrap(), text);
}
