//! The memory check before training (`trainer/src/job/memory.rs`): full fine-tuning of a
//! Llama-3.2-1B-shaped model without activation checkpointing is refused up front on a 24 GiB
//! machine, exit 2, naming the config and what would fit (checkpointing, LoRA on the frozen
//! base); nothing is allocated or written first. (The
//! machine's memory comes from `FP8_TRAINER_PHYSICAL_MEMORY_BYTES`, so the test does not depend
//! on the machine; the estimate's parts and the LoRA job that fits: its unit tests.)

use serde_json::json;

use crate::common::jobs::{scratch, sonnets, train, write_config};
use crate::common::process::assert_exit;

const MACHINE_BYTES: &str = "25769803776"; // 24 GiB

#[test]
fn full_fine_tuning_of_a_1b_llama_without_checkpointing_is_refused_up_front() {
    let dir = scratch("memory-1b");
    let job = json!({
        "name": "full-1b", "out_dir": dir.join("runs"),
        "model": {"preset": "llama-3.2-1b"}, "tokenizer": "bytes",
        "data": {"train": sonnets(), "seq_len": 512, "cache_dir": dir.join("cache")},
        "precision": {"mode": "fp8-amax"}, "batch_size": 4, "steps": 2
    });
    let path = write_config(&dir, "full-1b.json", &job);
    let started = std::time::Instant::now();
    let out = train(
        &path,
        &[],
        &[("FP8_TRAINER_PHYSICAL_MEMORY_BYTES", MACHINE_BYTES)],
    );
    assert_exit(
        "1B full fine-tuning",
        &out,
        2,
        &[
            "full-1b.json",
            "`model`",
            "gradients and AdamW moments 13.8",
            "what would fit: `activation_checkpointing: true`",
            "LoRA on the frozen base",
        ],
    );
    // Refused before the 5 GB of weights were initialised, and no run folder was made.
    assert!(started.elapsed().as_secs() < 30, "{:?}", started.elapsed());
    assert!(!dir.join("runs/full-1b").exists());
}
