//! Every config the repository ships trains from the repository root, as the README tells users
//! to: two steps each, shrunk with `--set` (the Hugging Face fine-tunes on the committed tiny
//! fixture, as `gpt2` cannot be fetched here), and configs/chat.json on the shipped
//! conversations.

use std::process::Command;

use serde_json::Value;

use crate::common;
use crate::common::jobs::*;

/// Every shipped config runs (two steps, shrunk with `--set`) from the repository root, as the
/// README tells users to. The Hugging Face configs cannot fetch `gpt2` or Cerebras-GPT here (nor
/// rely on `scripts/fetch-smollm2` having run), so they fine-tune the tiny HF-layout fixture instead: the same config keys, data paths, the
/// checkpoint-folder loading path and the checkpoint writing path.
#[test]
fn shipped_configs_run_from_the_repository_root() {
    let dir = scratch("shipped");
    let root = common::repo_root();
    let fixture = root.join("tests/fixtures/gpt2-tiny");
    let mut names: Vec<String> = std::fs::read_dir(root.join("configs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".json"))
        .collect();
    names.sort();
    assert!(names.len() >= 3, "{names:?}");
    for name in &names {
        let config: Value = serde_json::from_str(
            &std::fs::read_to_string(root.join("configs").join(name)).unwrap(),
        )
        .unwrap();
        let mut sets = vec![
            format!("out_dir={}", dir.join("runs").display()),
            format!("data.cache_dir={}", dir.join("cache").display()),
            "steps=2".into(),
            "batch_size=2".into(),
            "grad_accum=1".into(),
            "data.seq_len=32".into(),
            "eval_every=2".into(),
            "eval_batches=1".into(),
        ];
        if config["model"]["checkpoint"].is_string() {
            sets.push(format!("model.checkpoint={}", fixture.display()));
            sets.push("tokenizer=bytes".into()); // the fixture has 512 embeddings
            if config["data"]["chat"]["template"] == "checkpoint" {
                // The fixture has no chat template (smollm2-chat.json takes SmolLM2's).
                sets.push("data.chat.template=chatml".into());
            }
        }
        let mut args = vec![
            "train".to_string(),
            "--config".into(),
            format!("configs/{name}"),
        ];
        for s in sets {
            args.push("--set".into());
            args.push(s);
        }
        let out = Command::new(common::trainer_bin())
            .current_dir(&root)
            .args(&args)
            .output()
            .unwrap();
        assert_ok(&out);
        let run = dir.join("runs").join(config["name"].as_str().unwrap());
        let rows = metrics(&run);
        assert_eq!(rows.len(), 3, "{name}: row 0 and two steps");
        for r in &rows[1..] {
            assert!(r[2].parse::<f64>().unwrap().is_finite(), "{name}: {r:?}");
        }
        // A LoRA job's checkpoint is an adapter folder.
        let weights = match config["lora"].is_object() {
            true => "adapter_model.safetensors",
            false => "model.safetensors",
        };
        assert!(
            run.join("checkpoints/step-2").join(weights).is_file(),
            "{name}"
        );
        assert!(run.join("loss.png").is_file(), "{name}");
    }
}

/// configs/chat.json runs from the repository root (two steps here).
#[test]
fn the_shipped_chat_config_trains() {
    let dir = scratch("chat-config");
    let run = Command::new(common::trainer_bin())
        .current_dir(common::repo_root())
        .args(["train", "--config", "configs/chat.json", "--set", "steps=2"])
        .arg("--set")
        .arg(format!("out_dir={}", dir.join("runs").display()))
        .arg("--set")
        .arg(format!("data.cache_dir={}", dir.join("cache").display()))
        .output()
        .unwrap();
    assert_ok(&run);
    let rows = metrics(&dir.join("runs/chat"));
    // Row 0 (initial validation loss), steps 1 and 2.
    assert_eq!(rows.len(), 3, "{rows:?}");
    let loss: f64 = rows[1][2].parse().unwrap();
    assert!(loss.is_finite() && loss > 0.0, "{rows:?}");
}
