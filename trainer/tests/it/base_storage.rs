//! FP8-stored base weights (`"precision": {"base_storage": "fp8"}`) train what the same LoRA job
//! trains from the f32 base, bit for bit: metrics (the validation loss comes from the logits),
//! `fp8_stats.csv` (the stored weights report the cast they are), adapter weights, AdamW moments
//! and amax histories. Covered: GPT-2 and a Llama under FP8-AMAX, `fp8-delayed` with gradient
//! accumulation and activation checkpointing, a layer filter (filtered layers stay f32), two
//! data-parallel peers. And the setting is refused where it means nothing (no `lora`, no FP8).

use std::path::Path;

use serde_json::{json, Value};

use crate::common::jobs::{exact, fp8_trainer, scratch, stderr, write_config};
use crate::data_parallel::{job, run};

const LLAMA: fn() -> Value = || {
    json!({"preset": "llama-tiny", "init_seed": 7, "vocab_size": 257, "n_positions": 32,
        "n_embd": 32, "n_layer": 2, "n_head": 4, "n_inner": 48})
};

/// Runs `job` (a LoRA job) from the f32 base and from the FP8-stored base; compares what they
/// wrote.
fn both(tag: &str, job: impl Fn(&Path, &str) -> Value) {
    let dir = scratch(&format!("base-storage-{tag}"));
    let f32_base = run(&dir, &job(&dir, "f32"));
    let mut stored = job(&dir, "fp8");
    stored["precision"]["base_storage"] = json!("fp8");
    let stored = run(&dir, &stored);
    assert_eq!(exact(&stored), exact(&f32_base), "metrics");
    assert_ne!(
        f32_base[1][2],
        f32_base.last().unwrap()[2],
        "the job trained"
    );
    let log = std::fs::read_to_string(dir.join("runs/fp8/log.txt")).unwrap();
    assert!(
        log.contains("frozen projection weights as their FP8 cast"),
        "{log}"
    );
    let at = |run: &str, file: &str| dir.join(format!("runs/{run}/checkpoints/step-6/{file}"));
    for file in [
        "adapter_model.safetensors",
        "trainer_state/optimizer.safetensors",
        "trainer_state/fp8_amax_history.safetensors",
    ] {
        match (
            std::fs::read(at("f32", file)),
            std::fs::read(at("fp8", file)),
        ) {
            (Ok(a), Ok(b)) => assert!(a == b, "{tag}: {file} differs"),
            (Err(_), Err(_)) => {}
            (a, b) => panic!(
                "{tag}: {file} written by one run only ({} / {})",
                a.is_ok(),
                b.is_ok()
            ),
        }
    }
    let stats = |run: &str| std::fs::read_to_string(dir.join(format!("runs/{run}/fp8_stats.csv")));
    let want = stats("f32").unwrap();
    assert!(
        want.contains("weight"),
        "statistics of the weights were sampled"
    );
    assert_eq!(stats("fp8").unwrap(), want, "{tag}: fp8_stats.csv");
}

fn lora(dir: &Path, name: &str, mode: &str, peers: usize) -> Value {
    let mut job = job(dir, name, mode, peers);
    job["lora"] = json!({"r": 4, "lora_alpha": 8, "target_modules": "all-linear"});
    job
}

#[test]
fn fp8_stored_base_trains_what_the_f32_base_trains_gpt2() {
    both("gpt2", |dir, name| lora(dir, name, "fp8-amax", 1));
}

#[test]
fn fp8_stored_base_trains_what_the_f32_base_trains_llama() {
    both("llama", |dir, name| {
        let mut job = lora(dir, name, "fp8-amax", 1);
        job["model"] = LLAMA();
        job["precision"]["family"] = json!("ocp");
        job
    });
}

#[test]
fn fp8_stored_base_trains_what_the_f32_base_trains_delayed_checkpointed_filtered() {
    both("delayed", |dir, name| {
        let mut job = lora(dir, name, "fp8-delayed", 1);
        job["model"] = LLAMA();
        job["precision"]["amax_compute_algo"] = json!("most_recent");
        job["precision"]["amax_history_len"] = json!(4);
        // The MLPs stay f32 (no site, nothing stored): a mixed model.
        job["precision"]["layers"] = json!(["*", "!*.mlp.*"]);
        job["batch_size"] = json!(4);
        job["grad_accum"] = json!(2);
        job["activation_checkpointing"] = json!(true);
        job
    });
}

#[test]
fn fp8_stored_base_trains_what_the_f32_base_trains_two_peers() {
    both("peers", |dir, name| lora(dir, name, "fp8-amax", 2));
}

#[test]
fn fp8_base_storage_is_refused_without_lora_or_without_fp8() {
    let dir = scratch("base-storage-refused");
    let cases = [
        (
            "full",
            job(&dir, "full", "fp8-amax", 1),
            "no `lora` section",
        ),
        ("fp32", lora(&dir, "fp32", "fp32", 1), "\"fp32\" makes none"),
        ("bf16", lora(&dir, "bf16", "bf16", 1), "\"bf16\" makes none"),
    ];
    for (name, mut config, want) in cases {
        config["precision"]["base_storage"] = json!("fp8");
        let path = write_config(&dir, &format!("{name}.json"), &config);
        let out = fp8_trainer(&["train", "--config", path.to_str().unwrap()]);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{name}: {err}");
        for needle in [&format!("{name}.json"), "precision.base_storage", want] {
            assert!(err.contains(needle), "{name}: {needle}: {err}");
        }
        assert!(
            !dir.join("runs").join(name).exists(),
            "{name}: nothing written"
        );
    }
    let mut config = lora(&dir, "typo", "fp8-amax", 1);
    config["precision"]["base_storage"] = json!("e4m3");
    let path = write_config(&dir, "typo.json", &config);
    let out = fp8_trainer(&["train", "--config", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("base_storage"), "{}", stderr(&out));
}

/// From checkpoint files: each base weight is cast as it is read (`load_checkpoint_storing`).
#[test]
fn fp8_stored_base_trains_what_the_f32_base_trains_from_a_checkpoint() {
    both("checkpoint", |dir, name| {
        let mut job = lora(dir, name, "fp8-amax", 1);
        job["model"] = json!({"checkpoint": crate::common::fixture_named("qwen2-tiny")});
        job
    });
}

/// An adapter folder trained further: its base (the folder `base_model_name_or_path` names)
/// loads stored, then the adapter goes on it.
#[test]
fn fp8_stored_base_trains_what_the_f32_base_trains_from_an_adapter_folder() {
    both("adapter", |dir, name| {
        let mut job = lora(dir, name, "fp8-amax", 1);
        job["model"] = json!({"checkpoint": crate::common::fixture_named("llama-tiny-lora")});
        job["lora"] = json!({"r": 4, "lora_alpha": 6, "target_modules": "all-linear",
            "use_rslora": true});
        job
    });
}

/// `compare` of a LoRA job with an FP8-stored base: the FP8 run stores it, the fp32 run (which
/// refuses the setting on its own) holds the base in f32.
#[test]
fn compare_stores_the_base_for_the_fp8_runs_only() {
    let dir = scratch("base-storage-compare");
    let mut config = lora(&dir, "cmp", "fp8-amax", 1);
    config["precision"]["base_storage"] = json!("fp8");
    config["steps"] = json!(3);
    config["checkpoint_every"] = json!(0);
    let path = write_config(&dir, "cmp.json", &config);
    let out = fp8_trainer(&[
        "compare",
        "--config",
        path.to_str().unwrap(),
        "--precisions",
        "fp32,fp8-amax",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let log = |run: &str| std::fs::read_to_string(dir.join(format!("runs/{run}/log.txt"))).unwrap();
    assert!(log("cmp-fp8-amax").contains("frozen projection weights as their FP8 cast"));
    assert!(!log("cmp-fp32").contains("base storage"));
}
