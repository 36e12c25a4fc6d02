//! `scripts/experiments --quick`: the whole experiment pipeline of EXPERIMENTS.md on tiny
//! models of both families (pretraining, the fine-tuning tasks over the recipes and two seeds,
//! the FP8 inference tables, the gathered outputs), so that it cannot rot; and a second
//! invocation reuses every finished run instead of training it again.

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

use crate::common;
use crate::common::jobs::*;

fn experiments(out: &Path) -> Output {
    Command::new("bash")
        .arg(common::repo_root().join("scripts/experiments"))
        .args(["--quick", "--out"])
        .arg(out)
        .env("FP8_TRAINER", common::trainer_bin())
        .output()
        .unwrap()
}

fn json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

fn labels(report: &Value) -> Vec<String> {
    report["recipes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["recipe"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn quick_pipeline_runs_end_to_end_and_reuses_finished_runs() {
    let out = scratch("experiments-quick");
    let run = experiments(&out);
    assert_ok(&run);
    let results = std::fs::read_to_string(out.join("results.md")).unwrap();
    for stage in [
        "pretrain-s",
        "milton-s",
        "author-s",
        "inference-pretrain-s",
        "inference-milton-s",
        "inference-author-s",
        "pretrain-llama-s",
        "milton-llama-s",
        "inference-pretrain-llama-s",
        "inference-milton-llama-s",
        "crosseval-milton-llama-s",
    ] {
        assert!(results.contains(&format!("{stage}: ")), "{stage} timed");
    }
    // The Llama model: fp32 and FP8-AMAX fine-tunes over the seeds, its inference tables.
    let llama = json(&out.join("milton-llama-s-report.json"));
    assert_eq!(labels(&llama), ["fp32", "fp8-amax"]);
    assert_eq!(llama["recipes"][1]["final_val_loss"]["n"], 2, "two seeds");
    let config = json(&out.join("runs/pretrain-llama-s/checkpoints/best/config.json"));
    assert_eq!(config["model_type"], "llama");
    for table in ["pretrain-llama-s", "milton-llama-s"] {
        let t = json(&out.join(format!("inference-{table}.json")));
        assert_eq!(t["recipes"].as_array().unwrap().len(), 3 + 5, "{table}");
    }

    let milton = json(&out.join("milton-s-report.json"));
    assert_eq!(
        labels(&milton),
        [
            "fp32",
            "fp8-amax",
            "fp8-amax-ocp",
            "fp8-delayed",
            "fp8-cscale-b0",
            "fp8-cscale-b8"
        ]
    );
    assert_eq!(milton["seeds"].as_array().unwrap().len(), 2);
    assert_eq!(milton["recipes"][1]["final_val_loss"]["n"], 2, "two seeds");
    assert_eq!(milton["cscale"]["metric"], "val_perplexity");
    let author = json(&out.join("author-s-report.json"));
    assert_eq!(labels(&author), ["fp32", "fp8-amax"]);
    assert!(author["recipes"][0]["final_val_accuracy"]["mean"].is_f64());
    for (table, metric) in [
        ("pretrain-s", "val_perplexity"),
        ("milton-s", "val_perplexity"),
        ("author-s", "val_accuracy"),
    ] {
        let t = json(&out.join(format!("inference-{table}.json")));
        assert_eq!(t["cscale"]["metric"], metric, "{table}");
        assert_eq!(t["recipes"].as_array().unwrap().len(), 3 + 5, "{table}");
        let md = std::fs::read_to_string(out.join(format!("inference-{table}.md"))).unwrap();
        assert!(md.contains("| fp8-cscale-b-16 |"), "{table}: {md}");
        assert!(md.starts_with("| recipe |"), "the table alone: {md}");
    }
    // Seed 1's fp32 checkpoint is the one the Milton inference table evaluated, with the same
    // settings: the cross-evaluation's first two figures are that table's fp32 and fp8-amax
    // (shown failing when the cross-evaluation read other batches). At these tiny sizes fp32 and
    // FP8 agree to four decimals, so the columns' order is checked by the full run instead:
    // EXPERIMENTS.md's seed-1 S figures are inference-milton-s's fp32 and fp8-amax rows.
    let cross = std::fs::read_to_string(out.join("crosseval-milton-s.md")).unwrap();
    let rows: Vec<Vec<&str>> = (cross.lines().skip(2))
        .map(|l| l.trim_matches('|').split('|').map(str::trim).collect())
        .collect();
    assert_eq!(rows.len(), 2, "one row per seed: {cross}");
    for row in &rows {
        assert_eq!(row.len(), 5, "{cross}");
        for loss in &row[1..] {
            assert!(loss.parse::<f64>().is_ok_and(f64::is_finite), "{cross}");
        }
    }
    let table = json(&out.join("inference-milton-s.json"));
    for (column, recipe) in [(1, 0), (2, 1)] {
        let loss = table["recipes"][recipe]["loss"].as_f64().unwrap();
        assert_eq!(rows[0][column], format!("{loss:.4}"), "{cross}");
    }
    assert!(results.contains("crosseval-milton-s: "), "timed");
    for png in [
        "milton-s-loss.png",
        "milton-s-fp8-amax-telemetry.png",
        "author-s-loss.png",
    ] {
        assert!(out.join(png).is_file(), "{png}");
    }

    // Again: nothing trains, every run is reused.
    let metrics_before = std::fs::read(out.join("runs/milton-s-fp8-amax-s1/metrics.csv")).unwrap();
    let again = experiments(&out);
    assert_ok(&again);
    let log = stderr(&again);
    assert!(
        log.contains("pretrain-s: finished earlier, reused"),
        "{log}"
    );
    for (task, runs) in [("milton-s", 12), ("author-s", 4), ("milton-llama-s", 4)] {
        let path = out.join(format!("{task}-compare.txt"));
        let log = std::fs::read_to_string(path).unwrap();
        assert_eq!(
            log.matches("reused, not trained again").count(),
            runs,
            "{log}"
        );
    }
    assert_eq!(
        std::fs::read(out.join("runs/milton-s-fp8-amax-s1/metrics.csv")).unwrap(),
        metrics_before
    );
}

/// The fine-tuning configs run on a Hugging Face checkpoint folder as they do on ours (what a
/// user does with a downloaded gpt2): here the tiny HF-layout fixture, which ships no tokenizer
/// files (so `tokenizer` is given) and has 64 positions (so a shorter `data.seq_len`).
#[test]
fn finetune_configs_run_on_a_hugging_face_checkpoint_folder() {
    let dir = scratch("experiments-hf");
    let root = common::repo_root();
    for task in ["milton", "author"] {
        let config = root.join(format!("configs/experiments/finetune-{task}.json"));
        // Data paths in the configs are relative to the repository root, where users run them.
        let out = Command::new(common::trainer_bin())
            .current_dir(&root)
            .args([
                "compare",
                "--config",
                config.to_str().unwrap(),
                "--set",
                &format!(
                    "model.checkpoint={}",
                    root.join("tests/fixtures/gpt2-tiny").display()
                ),
                "--set",
                "tokenizer=bytes",
                "--set",
                "data.seq_len=64",
                "--set",
                &format!("out_dir={}", dir.join("runs").display()),
                "--set",
                &format!("name={task}-hf"),
                "--set",
                "steps=2",
                "--set",
                "eval_every=2",
                "--set",
                "eval_batches=2",
                "--set",
                "checkpoint_every=2",
                "--precisions",
                "fp32,fp8-amax-ocp",
            ])
            .output()
            .unwrap();
        assert_ok(&out);
        let report = json(&dir.join(format!("runs/{task}-hf-compare/report.json")));
        assert_eq!(labels(&report), ["fp32", "fp8-amax-ocp"], "{task}");
    }
}
