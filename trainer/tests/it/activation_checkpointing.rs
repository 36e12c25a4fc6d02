//! Activation checkpointing (`"activation_checkpointing": true`) trains what the same job trains
//! without it, bit for bit: metrics, FP8 statistics, final weights, AdamW moments and amax
//! histories. Covered: fp32; `fp8-delayed` with gradient accumulation (its recomputed casts
//! must take the first forward's biases from the cast log, not from a history that has moved
//! on, and record nothing twice); a Llama with LoRA adapters on an FP8-AMAX base; two
//! data-parallel peers (whose activation casts take the peers' largest amax once). That a
//! block's second forward draws the dropout masks of its first: the unit test in
//! `trainer/src/train/step.rs`.

use std::path::Path;

use serde_json::{json, Value};

use crate::common::jobs::{exact, scratch};
use crate::data_parallel::{job, run};

/// Files of a checkpoint (under `checkpoints/step-6/`) that must be byte-identical.
fn same_files(dir: &Path, files: &[&str]) {
    for file in files {
        let at = |name: &str| dir.join(format!("runs/{name}/checkpoints/step-6/{file}"));
        let (a, b) = (
            std::fs::read(at("plain")),
            std::fs::read(at("checkpointed")),
        );
        let (a, b) = (a.unwrap(), b.unwrap());
        assert!(a == b, "{file} differs");
    }
    let stats =
        |name: &str| std::fs::read_to_string(dir.join(format!("runs/{name}/fp8_stats.csv")));
    if let Ok(plain) = stats("plain") {
        assert_eq!(plain, stats("checkpointed").unwrap(), "fp8_stats.csv");
    }
}

/// Runs `job` as it is and with activation checkpointing; returns the scratch folder.
fn both(tag: &str, job: impl Fn(&Path, &str) -> Value) -> std::path::PathBuf {
    let dir = scratch(&format!("ac-{tag}"));
    let plain = run(&dir, &job(&dir, "plain"));
    let mut checkpointed = job(&dir, "checkpointed");
    checkpointed["activation_checkpointing"] = json!(true);
    let checkpointed = run(&dir, &checkpointed);
    assert_eq!(exact(&checkpointed), exact(&plain), "metrics");
    // And the job trained: the loss moved.
    assert_ne!(plain[1][2], plain.last().unwrap()[2]);
    let log = std::fs::read_to_string(dir.join("runs/checkpointed/log.txt")).unwrap();
    assert!(log.contains("activation checkpointing"), "{log}");
    dir
}

#[test]
fn checkpointing_trains_what_fp32_trains() {
    let dir = both("fp32", |dir, name| job(dir, name, "fp32", 1));
    same_files(
        &dir,
        &["model.safetensors", "trainer_state/optimizer.safetensors"],
    );
}

#[test]
fn checkpointing_trains_what_fp8_delayed_trains_with_gradient_accumulation() {
    let dir = both("delayed", |dir, name| {
        let mut job = job(dir, name, "fp8-delayed", 1);
        // The newest amax only: a recomputed cast that read the history again would take this
        // step's own amax instead of the last step's.
        job["precision"]["amax_compute_algo"] = json!("most_recent");
        job["precision"]["amax_history_len"] = json!(4);
        job["batch_size"] = json!(4);
        job["grad_accum"] = json!(2);
        job
    });
    same_files(
        &dir,
        &[
            "model.safetensors",
            "trainer_state/optimizer.safetensors",
            "trainer_state/fp8_amax_history.safetensors",
        ],
    );
}

#[test]
fn checkpointing_trains_what_lora_on_an_fp8_llama_trains() {
    let dir = both("lora", |dir, name| {
        let mut job = job(dir, name, "fp8-amax", 1);
        job["model"] = json!({"preset": "llama-tiny", "init_seed": 7, "vocab_size": 257,
            "n_positions": 32, "n_embd": 32, "n_layer": 2, "n_head": 4, "n_inner": 48});
        job["lora"] = json!({"r": 4, "lora_alpha": 8, "target_modules": "all-linear"});
        job
    });
    same_files(
        &dir,
        &[
            "adapter_model.safetensors",
            "trainer_state/optimizer.safetensors",
        ],
    );
}

#[test]
fn checkpointing_trains_what_two_peers_train() {
    let dir = both("peers", |dir, name| job(dir, name, "fp8-amax", 2));
    same_files(
        &dir,
        &["model.safetensors", "trainer_state/optimizer.safetensors"],
    );
}
