//! The Llama family through the trainer as GPT-2 goes through it: a Llama preset trains in
//! FP8-AMAX, resumes bit-exactly, writes checkpoints that load again to the same bits and logits
//! (in the config style they came in), and generates, stopping at any end-of-text id of a
//! `generation_config.json` (Llama 3 lists several); bad Llama configs and checkpoints exit 2
//! naming the file and the field or tensor. Parity with `transformers` is `parity::llama`.

use std::path::{Path, PathBuf};
use std::process::Command;

use burn::backend::NdArray;
use burn::tensor::{Int, Tensor, TensorData};
use fp8_backend::Fp8;
use serde_json::{json, Value};
use trainer::checkpoint::write_safetensors;
use trainer::model::names::param_values;
use trainer::{load_checkpoint, save_checkpoint, Model, ModelOptions};

use crate::common::jobs::{assert_ok, exact, metrics, scratch, sonnets, train, write_config};
use crate::common::process::assert_exit;
use crate::common::{self, read_tensors};

type Cpu = Fp8<NdArray<f32>>;

/// A tiny Llama job (preset `llama-tiny` resized: 2 layers 32 wide, 4 query heads sharing 2
/// key/value heads, MLP 48) on the sonnets with the byte tokenizer, in `dir/runs/<name>`.
fn llama_job(dir: &Path, name: &str) -> Value {
    json!({
        "name": name,
        "out_dir": dir.join("runs"),
        "model": {"preset": "llama-tiny", "init_seed": 7, "vocab_size": 257, "n_positions": 32,
                  "n_embd": 32, "n_layer": 2, "n_head": 4, "n_inner": 48},
        "tokenizer": "bytes",
        "data": {"train": sonnets(), "validation": {"fraction": 0.1}, "seq_len": 32,
                 "shuffle": true, "seed": 3, "cache_dir": dir.join("cache")},
        "precision": {"mode": "fp8-amax", "stats_every": 4},
        "optimizer": {"lr": 0.003},
        "schedule": {"kind": "constant", "warmup_steps": 2},
        "batch_size": 4, "steps": 8, "eval_every": 4, "eval_batches": 2,
        "checkpoint_every": 4, "keep_checkpoints": 2, "log_every": 1
    })
}

#[test]
fn a_llama_trains_in_fp8_resumes_exactly_and_generates() {
    let dir = scratch("llama-train");
    let config = llama_job(&dir, "whole");
    let path = write_config(&dir, "whole.json", &config);
    assert_ok(&train(&path, &[], &[]));
    let whole = metrics(&dir.join("runs/whole"));
    assert_eq!(whole.len(), 9, "row 0 and 8 steps: {whole:?}");
    let loss = |row: &Vec<String>| row[3].parse::<f64>().unwrap();
    assert!(
        loss(&whole[8]) < loss(&whole[0]) - 0.5,
        "the validation loss falls: {} -> {}",
        whole[0][3],
        whole[8][3]
    );
    // FP8 statistics name the Llama projections.
    let stats = std::fs::read_to_string(dir.join("runs/whole/fp8_stats.csv")).unwrap();
    for layer in [
        "model.layers.0.self_attn.q_proj",
        "model.layers.1.mlp.down_proj",
    ] {
        assert!(stats.contains(layer), "{layer} in fp8_stats.csv");
    }

    // Stopped after the checkpoint of step 4 (`steps` 4), then resumed to step 8 (a constant
    // schedule: the number of steps does not change the first four).
    let mut halves = llama_job(&dir, "halves");
    halves["steps"] = json!(4);
    let half = write_config(&dir, "halves-4.json", &halves);
    assert_ok(&train(&half, &[], &[]));
    halves["steps"] = json!(8);
    let rest = write_config(&dir, "halves-8.json", &halves);
    assert_ok(&train(&rest, &["--resume"], &[]));
    let resumed = metrics(&dir.join("runs/halves"));
    assert_eq!(exact(&resumed), exact(&whole));

    let checkpoint = dir.join("runs/whole/checkpoints/step-8");
    let config: Value =
        serde_json::from_str(&std::fs::read_to_string(checkpoint.join("config.json")).unwrap())
            .unwrap();
    assert_eq!(config["model_type"], "llama");
    assert_eq!(config["architectures"], json!(["LlamaForCausalLM"]));
    assert_eq!(config["num_key_value_heads"], 2);
    let out = Command::new(common::trainer_bin())
        .args(["generate", "--checkpoint"])
        .arg(&checkpoint)
        .args([
            "--prompt",
            "Shall I",
            "--max-new-tokens",
            "20",
            "--temperature",
            "0",
        ])
        .output()
        .unwrap();
    assert_ok(&out);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with("Shall I") && text.trim().len() > "Shall I".len(),
        "{text}"
    );
}

fn logits(model: &Model<Cpu>, tokens: &[i64]) -> Vec<f32> {
    let input = Tensor::<Cpu, 2, Int>::from_data(
        TensorData::new(tokens.to_vec(), [1, tokens.len()]),
        &Default::default(),
    );
    model.forward(input).into_data().to_vec().unwrap()
}

fn bits(model: &Model<Cpu>) -> Vec<(String, Vec<u32>)> {
    param_values(model)
        .into_iter()
        .map(|(name, data)| {
            let values = data.to_vec::<f32>().unwrap();
            (name, values.iter().map(|v| v.to_bits()).collect())
        })
        .collect()
}

#[test]
fn saved_llama_checkpoints_load_to_the_same_bits_in_their_config_style() {
    for (name, style_key) in [
        ("llama-tiny", "rope_parameters"),
        ("llama3-tiny", "rope_parameters"),
        ("qwen2-tiny", "rope_parameters"),
        ("mistral-tiny", "rope_parameters"),
    ] {
        let options = ModelOptions::default();
        let model =
            load_checkpoint::<Cpu>(&common::fixture_named(name), &options, &Default::default())
                .unwrap();
        let dir = common::scratch_dir(&format!("llama-save-{name}"));
        save_checkpoint(&model, &dir).unwrap();
        let theirs: Vec<String> =
            read_tensors(&common::fixture_named(name).join("model.safetensors"))
                .into_iter()
                .map(|t| t.name)
                .collect();
        let ours: Vec<String> = read_tensors(&dir.join("model.safetensors"))
            .into_iter()
            .map(|t| t.name)
            .collect();
        assert_eq!(ours, theirs, "{name}: the tensors of the hub layout");
        let written: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap())
                .unwrap();
        let source: Value = serde_json::from_str(
            &std::fs::read_to_string(common::fixture_named(name).join("config.json")).unwrap(),
        )
        .unwrap();
        assert!(written.get(style_key).is_some(), "{name}: {written}");
        assert!(
            written.get("rope_theta").is_none(),
            "{name}: one style: {written}"
        );
        for key in [
            "model_type",
            "architectures",
            "hidden_size",
            "num_key_value_heads",
            "rope_parameters",
            "tie_word_embeddings",
            "eos_token_id",
            "rms_norm_eps",
        ] {
            assert_eq!(written[key], source[key], "{name}: `{key}` written back");
        }
        let loaded = load_checkpoint::<Cpu>(&dir, &options, &Default::default()).unwrap();
        assert_eq!(bits(&loaded), bits(&model), "{name}");
        let tokens = [1, 5, 9, 200, 3, 77];
        assert_eq!(logits(&loaded, &tokens), logits(&model, &tokens), "{name}");
    }
    // A transformers 4 config is written back in its own style.
    let v4 = common::scratch_dir("llama-save-v4");
    for file in ["model.safetensors"] {
        std::fs::copy(
            common::fixture_named("llama3-tiny").join(file),
            v4.join(file),
        )
        .unwrap();
    }
    std::fs::copy(
        common::fixture_named("llama3-tiny").join("config_v4.json"),
        v4.join("config.json"),
    )
    .unwrap();
    let model = load_checkpoint::<Cpu>(&v4, &ModelOptions::default(), &Default::default()).unwrap();
    let out = common::scratch_dir("llama-save-v4-out");
    save_checkpoint(&model, &out).unwrap();
    let written: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(written["rope_theta"], json!(500000.0));
    assert_eq!(written["rope_scaling"]["rope_type"], "llama3");
    assert!(written.get("rope_parameters").is_none(), "{written}");
}

/// `logits` on a copy of fixture `name` whose config went through `edit` (and whose tensors
/// went through `tensors`).
fn logits_of_edited(
    tag: &str,
    name: &str,
    edit: impl FnOnce(&mut Value),
    tensors: impl FnOnce(&mut Vec<trainer::checkpoint::NamedTensor>),
) -> (std::process::Output, PathBuf) {
    let dir = common::scratch_dir(&format!("llama-bad-{tag}"));
    let mut config: Value = serde_json::from_str(
        &std::fs::read_to_string(common::fixture_named(name).join("config.json")).unwrap(),
    )
    .unwrap();
    edit(&mut config);
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let mut weights = read_tensors(&common::fixture_named(name).join("model.safetensors"));
    tensors(&mut weights);
    write_safetensors(&dir.join("model.safetensors"), &weights).unwrap();
    let out = Command::new(common::trainer_bin())
        .args(["logits", "--checkpoint"])
        .arg(&dir)
        .args(["--tokens", "1,2,3", "--out"])
        .arg(dir.join("logits.json"))
        .output()
        .unwrap();
    (out, dir)
}

#[test]
fn bad_llama_configs_and_checkpoints_exit_2_naming_the_field_or_tensor() {
    let no_edit = |_: &mut Vec<trainer::checkpoint::NamedTensor>| {};
    let cases: Vec<(&str, Box<dyn FnOnce(&mut Value)>, &[&str])> = vec![
        (
            "heads",
            Box::new(|c: &mut Value| {
                c["num_attention_heads"] = json!(5);
                c.as_object_mut().unwrap().remove("head_dim");
            }),
            &[
                "config.json",
                "num_attention_heads",
                "divisor of hidden_size",
            ],
        ),
        (
            "kv-heads",
            Box::new(|c: &mut Value| c["num_key_value_heads"] = json!(3)),
            &[
                "config.json",
                "num_key_value_heads",
                "divisor of num_attention_heads",
            ],
        ),
        (
            "rope-type",
            Box::new(|c: &mut Value| c["rope_parameters"]["rope_type"] = json!("yarn")),
            &["config.json", "rope_parameters.rope_type", "yarn"],
        ),
        (
            "activation",
            Box::new(|c: &mut Value| c["hidden_act"] = json!("gelu")),
            &["config.json", "hidden_act"],
        ),
        (
            "missing",
            Box::new(|c: &mut Value| {
                c.as_object_mut().unwrap().remove("hidden_size");
            }),
            &["config.json", "hidden_size"],
        ),
    ];
    for (tag, edit, needles) in cases {
        let (out, _) = logits_of_edited(tag, "llama-tiny", edit, no_edit);
        assert_exit(tag, &out, 2, needles);
    }
    let (out, _) = logits_of_edited(
        "tensor-missing",
        "llama-tiny",
        |_| {},
        |t| t.retain(|t| t.name != "model.layers.1.self_attn.k_proj.weight"),
    );
    assert_exit(
        "missing tensor",
        &out,
        2,
        &["model.layers.1.self_attn.k_proj.weight", "missing"],
    );
    let (out, _) = logits_of_edited(
        "tensor-shape",
        "llama-tiny",
        |_| {},
        |t| {
            // k_proj of a model whose every head has its own key/value head: [64, 64], not [32, 64].
            let k = t
                .iter_mut()
                .find(|t| t.name == "model.layers.0.self_attn.k_proj.weight")
                .unwrap();
            k.shape = vec![64, 64];
            k.values = vec![0.0; 64 * 64];
        },
    );
    assert_exit(
        "wrong shape",
        &out,
        2,
        &[
            "model.layers.0.self_attn.k_proj.weight",
            "[64, 64]",
            "[32, 64]",
        ],
    );
}

/// `generate --tokens` on a copy of llama3-tiny (eos_token_id [2, 3] in its config), greedy;
/// the new ids.
fn greedy_ids(dir: &Path) -> Vec<u32> {
    let out = Command::new(common::trainer_bin())
        .args(["generate", "--checkpoint"])
        .arg(dir)
        .args([
            "--tokens",
            "5,6,7",
            "--max-new-tokens",
            "12",
            "--temperature",
            "0",
        ])
        .output()
        .unwrap();
    assert_ok(&out);
    let text = String::from_utf8_lossy(&out.stdout);
    text.trim().split(',').map(|t| t.parse().unwrap()).collect()
}

#[test]
fn generation_stops_at_any_end_of_text_id_of_generation_config() {
    let dir = common::scratch_dir("llama-generation-config");
    for file in ["config.json", "model.safetensors"] {
        std::fs::copy(
            common::fixture_named("llama3-tiny").join(file),
            dir.join(file),
        )
        .unwrap();
    }
    let free = greedy_ids(&dir);
    assert_eq!(free.len(), 12, "{free:?}");
    // Llama 3 style: several end-of-text ids; the first id drawn that differs from those before
    // it is made one of them.
    let at = (1..free.len())
        .find(|&k| !free[..k].contains(&free[k]))
        .expect("greedy generation changes token at some point");
    let config = json!({"bos_token_id": 1, "eos_token_id": [500, free[at]]});
    std::fs::write(dir.join("generation_config.json"), config.to_string()).unwrap();
    assert_eq!(
        greedy_ids(&dir),
        free[..=at],
        "stops after the end-of-text id, printing it"
    );
}

#[test]
fn layer_filters_name_llama_projections_and_eval_tables_run_on_a_llama() {
    let dir = scratch("llama-filter");
    let mut config = llama_job(&dir, "mlp-only");
    config["precision"] = json!({"mode": "fp8-amax", "stats_every": 4,
        "layers": ["model.layers.*.mlp.*", "!model.layers.0.mlp.down_proj"]});
    let path = write_config(&dir, "mlp-only.json", &config);
    assert_ok(&train(&path, &[], &[]));
    let stats = std::fs::read_to_string(dir.join("runs/mlp-only/fp8_stats.csv")).unwrap();
    let mut layers: Vec<&str> = stats
        .lines()
        .skip(1)
        .map(|l| l.split(',').nth(1).unwrap())
        .collect();
    layers.sort_unstable();
    layers.dedup();
    assert_eq!(
        layers,
        [
            "model.layers.0.mlp.gate_proj",
            "model.layers.0.mlp.up_proj",
            "model.layers.1.mlp.down_proj",
            "model.layers.1.mlp.gate_proj",
            "model.layers.1.mlp.up_proj",
        ]
    );
    // A pattern of GPT-2's names matches no Llama projection: refused, naming the field.
    config["name"] = json!("gpt2-names");
    config["precision"]["layers"] = json!(["h.*.mlp.*"]);
    let path = write_config(&dir, "gpt2-names.json", &config);
    assert_exit(
        "GPT-2 layer names",
        &train(&path, &[], &[]),
        2,
        &["precision.layers", "model.layers.0.self_attn.q_proj"],
    );
    // The FP8 inference table of the trained checkpoint: each recipe a row.
    let out = dir.join("table.json");
    let run = Command::new(common::trainer_bin())
        .args(["eval", "--checkpoint"])
        .arg(dir.join("runs/mlp-only/checkpoints/step-8"))
        .args([
            "--data",
            &sonnets(),
            "--seq-len",
            "32",
            "--max-batches",
            "2",
        ])
        .args([
            "--precisions",
            "fp32,fp8-amax",
            "--cscale-biases",
            "0,4",
            "--out",
        ])
        .arg(&out)
        .output()
        .unwrap();
    assert_ok(&run);
    let table: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let recipes: Vec<&str> = (table["recipes"].as_array().unwrap().iter())
        .map(|r| r["recipe"].as_str().unwrap())
        .collect();
    assert_eq!(
        recipes,
        ["fp32", "fp8-amax", "fp8-cscale-b0", "fp8-cscale-b4"]
    );
    let loss = |i: usize| table["recipes"][i]["loss"].as_f64().unwrap();
    assert!(
        loss(0).is_finite() && loss(1) != loss(0),
        "FP8 changes the loss: {table}"
    );
}
