//! Saving and loading checkpoints: bit-identical round trips, and the checkpoint variants the
//! hub has (no `transformer.` prefix, attention buffers, a stored tied head, shards, an untied head).
//!
//! `saved_checkpoint_for_transformers` leaves our save of the fixture under the test target
//! directory and prints the one command that checks it with `transformers`:
//!   python tests/fixtures/gen_gpt2.py --check <printed path>

mod common;

use std::path::Path;

use burn::backend::NdArray;
use burn::tensor::{Int, Tensor, TensorData};
use serde_json::json;
use trainer::checkpoint::{write_safetensors, NamedTensor, WEIGHTS_INDEX_FILE};
use trainer::model::names::param_values;
use trainer::{load_checkpoint, save_checkpoint, Gpt2, Gpt2Config, ModelOptions};

/// The model runs on the FP8 decorator (with FP8 off, bit-identical to plain ndarray).
type Cpu = fp8_backend::Fp8<NdArray<f32>>;

fn load(dir: &Path) -> Gpt2<Cpu> {
    load_checkpoint::<Cpu>(dir, &ModelOptions::default(), &Default::default())
        .unwrap_or_else(|e| panic!("loading {}: {e}", dir.display()))
}

/// Every parameter, by name, as raw f32 bits.
fn bits(model: &Gpt2<Cpu>) -> Vec<(String, Vec<u32>)> {
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

fn logits(model: &Gpt2<Cpu>) -> Vec<f32> {
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

#[test]
fn saved_checkpoint_for_transformers() {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("gpt2-tiny-saved-by-rust");
    save_checkpoint(&load(&common::fixture_dir()), &dir).unwrap();
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["architectures"], json!(["GPT2LMHeadModel"]));
    assert_eq!(config["model_type"], json!("gpt2"));
    println!(
        "check with transformers: python tests/fixtures/gen_gpt2.py --check {}",
        dir.display()
    );
}

#[test]
fn random_model_round_trips_tied_and_untied() {
    for tie in [true, false] {
        let config = Gpt2Config {
            tie_word_embeddings: tie,
            ..Gpt2Config::tiny()
        };
        let model =
            Gpt2::<Cpu>::new(&config, &ModelOptions::default(), &Default::default()).unwrap();
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
