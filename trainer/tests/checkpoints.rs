//! Checkpoints as users of Hugging Face tools expect them (issue 13): self-contained folders
//! (tokenizer and generation config beside the weights), `metrics.jsonl` beside `metrics.csv`,
//! `--resume` from a named checkpoint, a new run that takes over AdamW's state, the best
//! checkpoint and early stopping, each across a resume.

mod common;

use std::path::Path;

use common::jobs::*;
use serde_json::{json, Value};

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

fn state(checkpoint: &Path) -> Value {
    read_json(&checkpoint.join("trainer_state/state.json"))
}

fn model_bytes(checkpoint: &Path) -> Vec<u8> {
    std::fs::read(checkpoint.join("model.safetensors")).unwrap()
}

/// A short fp32 job (exact on the CPU) with a checkpoint and an evaluation at every step.
fn job(dir: &Path, name: &str, steps: u64) -> Value {
    let mut job = tiny_job(dir, name);
    job["precision"] = json!({"mode": "fp32"});
    job["steps"] = json!(steps);
    job["eval_every"] = json!(1);
    job["checkpoint_every"] = json!(1);
    job["keep_checkpoints"] = json!(10);
    job
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

/// `metrics.jsonl` holds the rows of `metrics.csv`, every column named, empty cells as null,
/// also after a resume that cut the files back to a checkpoint.
#[test]
fn metrics_jsonl_has_the_rows_of_metrics_csv_across_a_resume() {
    let dir = scratch("jsonl");
    let path = write_config(&dir, "job.json", &job(&dir, "j", 4));
    assert_ok(&train(&path, &[], &[]));
    let run = dir.join("runs/j");
    let ckpt = run.join("checkpoints/step-2");
    assert_ok(&train(
        &path,
        &["--resume", ckpt.to_str().unwrap(), "--overwrite"],
        &[],
    ));
    let text = std::fs::read_to_string(run.join("metrics.csv")).unwrap();
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let csv: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    let jsonl = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let objects: Vec<Value> = jsonl
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(objects.len(), csv.len(), "{jsonl}");
    assert_eq!(csv.len(), 5, "step 0 and steps 1..=4");
    for (row, object) in csv.iter().zip(&objects) {
        assert_eq!(object.as_object().unwrap().len(), header.len());
        for (name, cell) in header.iter().zip(row) {
            let value = &object[*name];
            if cell.is_empty() {
                assert!(value.is_null(), "{name}: {value}");
            } else {
                let parsed: f64 = cell.parse().unwrap();
                assert_eq!(value.as_f64(), Some(parsed), "{name}: {cell} vs {value}");
            }
        }
    }
}

/// `--resume DIR` continues from that checkpoint: refused while later checkpoints are in the
/// way, and with `--overwrite` it ends where the uninterrupted run ended, bit for bit.
#[test]
fn resume_from_a_named_checkpoint_equals_the_uninterrupted_run() {
    let dir = scratch("resume-named");
    let path = write_config(&dir, "job.json", &job(&dir, "r", 4));
    assert_ok(&train(&path, &[], &[]));
    let run = dir.join("runs/r");
    let uninterrupted = (
        model_bytes(&run.join("checkpoints/step-4")),
        exact(&metrics(&run)),
    );

    let step2 = run.join("checkpoints/step-2");
    let out = train(&path, &["--resume", step2.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("step-3, step-4") && err.contains("--overwrite"),
        "{err}"
    );
    assert!(
        run.join("checkpoints/step-4").is_dir(),
        "nothing deleted on a refusal"
    );

    let out = train(
        &path,
        &["--resume", step2.to_str().unwrap(), "--overwrite"],
        &[],
    );
    assert_ok(&out);
    let log = std::fs::read_to_string(run.join("log.txt")).unwrap();
    assert!(
        log.contains(&format!("resumed from {}", step2.display())),
        "{log}"
    );
    assert_eq!(
        model_bytes(&run.join("checkpoints/step-4")),
        uninterrupted.0
    );
    assert_eq!(exact(&metrics(&run)), uninterrupted.1);

    // Not a checkpoint, another run's checkpoint, the newest one with --overwrite: exit 2.
    let not_one = dir.join("runs");
    let other = dir.join("other");
    std::fs::create_dir_all(&other).unwrap();
    std::process::Command::new("cp")
        .args(["-r", step2.to_str().unwrap(), other.to_str().unwrap()])
        .status()
        .unwrap();
    for (resume, needle) in [
        (
            not_one.to_str().unwrap().to_string(),
            "is not a training checkpoint",
        ),
        (
            other.join("step-2").to_str().unwrap().to_string(),
            "is not a checkpoint of this run",
        ),
    ] {
        let out = train(&path, &["--resume", &resume], &[]);
        assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
        let err = stderr(&out);
        assert!(err.contains(needle) && err.contains(&resume), "{err}");
    }
    let out = train(&path, &["--resume", "--overwrite"], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}

/// A new run from an earlier run's checkpoint: `optimizer_state: from_checkpoint` carries
/// AdamW's step count (and moments: the weights differ from a fresh optimizer's), `fresh`
/// starts it at 0; `from_checkpoint` on a folder without our training state exits 2.
#[test]
fn a_new_run_takes_over_adamw_state_only_when_asked() {
    let dir = scratch("init-from");
    let path = write_config(&dir, "first.json", &job(&dir, "first", 3));
    assert_ok(&train(&path, &[], &[]));
    let source = dir.join("runs/first/checkpoints/step-3");
    assert_eq!(state(&source)["adam_t"], 3);

    let mut models = Vec::new();
    for (name, choice, adam_t) in [("fresh", "fresh", 1), ("carried", "from_checkpoint", 4)] {
        let mut next = job(&dir, name, 1);
        next["model"] = json!({"checkpoint": source, "optimizer_state": choice});
        let path = write_config(&dir, &format!("{name}.json"), &next);
        assert_ok(&train(&path, &[], &[]));
        let ckpt = dir.join("runs").join(name).join("checkpoints/step-1");
        assert_eq!(state(&ckpt)["step"], 1);
        assert_eq!(state(&ckpt)["adam_t"], adam_t, "{name}");
        models.push(model_bytes(&ckpt));
    }
    assert_ne!(
        models[0], models[1],
        "the carried moments change the update"
    );

    let mut bad = job(&dir, "bad", 1);
    bad["model"] =
        json!({"checkpoint": common::fixture_dir(), "optimizer_state": "from_checkpoint"});
    let path = write_config(&dir, "bad.json", &bad);
    let out = train(&path, &[], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("model.optimizer_state") && err.contains("bad.json"),
        "{err}"
    );
}

/// Validation losses of a run's evaluations after step 0, by step.
fn val_losses(run: &Path) -> Vec<(u64, f64)> {
    metrics(run)
        .iter()
        .filter(|r| r[0] != "0" && !r[3].is_empty())
        .map(|r| (r[0].parse().unwrap(), r[3].parse().unwrap()))
        .collect()
}

/// `checkpoints/best` is the evaluation with the lowest validation loss (found here from the
/// run's own metrics.csv), and is not pruned by `keep_checkpoints`.
#[test]
fn the_best_checkpoint_is_the_lowest_validation_loss() {
    let dir = scratch("best");
    let mut config = job(&dir, "b", 6);
    config["keep_checkpoints"] = json!(1);
    config["keep_best_checkpoint"] = json!(true);
    // A learning rate high enough that the validation loss goes up again within six steps.
    config["optimizer"] = json!({"lr": 0.05});
    config["schedule"] = json!({"kind": "constant"});
    let path = write_config(&dir, "job.json", &config);
    assert_ok(&train(&path, &[], &[]));
    let run = dir.join("runs/b");
    let losses = val_losses(&run);
    assert_eq!(losses.len(), 6);
    let (best_step, best_loss) =
        losses
            .iter()
            .copied()
            .fold((0, f64::INFINITY), |a, b| if b.1 < a.1 { b } else { a });
    let best = run.join("checkpoints/best");
    assert_eq!(state(&best)["step"], best_step, "{losses:?}");
    let recorded = state(&best)["best_score"].as_f64().unwrap();
    assert!(
        (recorded - best_loss).abs() <= 1e-6 * best_loss,
        "{recorded} vs {best_loss}"
    );
    assert!(best.join("tokenizer.json").is_file());
    assert!(run.join("checkpoints/step-6").is_dir());
    assert!(
        !run.join("checkpoints/step-5").exists(),
        "keep_checkpoints 1"
    );
    if best_step != 6 {
        // The best model is the one of its step, not the last one.
        assert_ne!(
            model_bytes(&best),
            model_bytes(&run.join("checkpoints/step-6"))
        );
    }
}

/// Early stopping after `patience` evaluations without an improvement of more than
/// `min_delta` (here so large that only the first evaluation counts): the run ends at step 3
/// with a checkpoint, a resumed run from step 2 stops at the same step (the count is in the
/// checkpoint), and resuming the stopped run does nothing.
#[test]
fn early_stopping_ends_the_run_and_survives_a_resume() {
    let dir = scratch("early");
    let mut config = job(&dir, "e", 10);
    config["early_stopping"] = json!({"patience": 2, "min_delta": 100.0});
    let path = write_config(&dir, "job.json", &config);
    assert_ok(&train(&path, &[], &[]));
    let run = dir.join("runs/e");
    let log = std::fs::read_to_string(run.join("log.txt")).unwrap();
    assert!(log.contains("stopped early at step 3 of 10"), "{log}");
    let rows = exact(&metrics(&run));
    assert_eq!(rows.last().unwrap()[0], "3");
    let step3 = run.join("checkpoints/step-3");
    assert_eq!(state(&step3)["stopped_early"], true);
    assert_eq!(
        state(&run.join("checkpoints/step-2"))["evals_since_best"],
        1
    );

    let stopped_model = model_bytes(&step3);
    let step2 = run.join("checkpoints/step-2");
    assert_ok(&train(
        &path,
        &["--resume", step2.to_str().unwrap(), "--overwrite"],
        &[],
    ));
    assert_eq!(exact(&metrics(&run)), rows);
    assert_eq!(model_bytes(&step3), stopped_model);

    assert_ok(&train(&path, &["--resume"], &[]));
    assert_eq!(exact(&metrics(&run)), rows, "nothing left to do");
    assert!(!run.join("checkpoints/step-4").exists());

    // Bad settings name the field.
    let mut bad = config.clone();
    bad["early_stopping"] = json!({"patience": 0});
    let path = write_config(&dir, "bad.json", &bad);
    let out = train(&path, &[], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("early_stopping.patience"),
        "{}",
        stderr(&out)
    );
}

/// Classification data (the shipped author lines): `val_accuracy` in metrics.csv at every
/// evaluation equals what `eval` computes on that step's checkpoint with the same batches, and
/// with `best_metric: val_accuracy` the best checkpoint is the evaluation of highest accuracy
/// (the first of equals: only a strict improvement replaces it).
#[test]
fn val_accuracy_is_logged_and_ranks_the_best_checkpoint() {
    let dir = scratch("accuracy");
    let author = common::repo_root().join("datasets/data/author");
    let mut config = job(&dir, "acc", 4);
    config["model"] = json!({"checkpoint": common::fixture_dir()});
    config["data"] = json!({
        "train": author.join("train.tsv"),
        "validation": {"paths": author.join("validation.tsv")},
        "seq_len": 64, "cache_dir": dir.join("cache"),
        "csv": {"template": "Line: {sentence}\nAuthor:",
                "verbalizer": {"0": " Shakespeare", "1": " Milton"}}
    });
    config["eval_batches"] = json!(3);
    config["keep_best_checkpoint"] = json!(true);
    config["best_metric"] = json!("val_accuracy");
    config["optimizer"] = json!({"lr": 0.01});
    let path = write_config(&dir, "job.json", &config);
    assert_ok(&train(&path, &[], &[]));
    let run = dir.join("runs/acc");
    let text = std::fs::read_to_string(run.join("metrics.csv")).unwrap();
    assert_eq!(
        text.lines().next().unwrap().split(',').nth(8),
        Some("val_accuracy")
    );
    let accuracies: Vec<(u64, f64)> = metrics(&run)
        .iter()
        .filter(|r| r[0] != "0")
        .map(|r| (r[0].parse().unwrap(), r[8].parse().unwrap()))
        .collect();
    assert_eq!(accuracies.len(), 4, "{text}");
    for (step, accuracy) in &accuracies {
        let ckpt = run.join(format!("checkpoints/step-{step}"));
        let out_file = dir.join(format!("eval-{step}.json"));
        let out = fp8_trainer(&[
            "eval",
            "--checkpoint",
            ckpt.to_str().unwrap(),
            "--config",
            path.to_str().unwrap(),
            "--batch-size",
            "4",
            "--max-batches",
            "3",
            "--out",
            out_file.to_str().unwrap(),
        ]);
        assert!(out.status.success(), "{}", stderr(&out));
        let result = read_json(&out_file);
        assert_eq!(result["examples"], 12);
        assert_eq!(
            result["accuracy"].as_f64(),
            Some(*accuracy),
            "step {step}: {result}"
        );
    }
    let best = accuracies
        .iter()
        .copied()
        .fold((0, f64::NEG_INFINITY), |a, b| if b.1 > a.1 { b } else { a });
    let best_dir = run.join("checkpoints/best");
    assert_eq!(state(&best_dir)["step"], best.0, "{accuracies:?}");
    assert_eq!(state(&best_dir)["best_score"].as_f64(), Some(-best.1));

    // val_accuracy on language-model data names the field.
    let mut lm = job(&dir, "lm", 1);
    lm["keep_best_checkpoint"] = json!(true);
    lm["best_metric"] = json!("val_accuracy");
    let path = write_config(&dir, "lm.json", &lm);
    let out = train(&path, &[], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("best_metric"), "{}", stderr(&out));
}

/// On chat data the checkpoint's `tokenizer_config.json` carries the job's chat template (where
/// `transformers` looks for it), so a new fine-tune from that checkpoint renders with it by
/// default (`chat.template: "checkpoint"`), with the same loss as naming the template.
#[test]
fn a_chat_checkpoint_carries_its_template() {
    let dir = scratch("chat-template");
    let chat_data = common::repo_root().join("datasets/data/chat_example");
    let mut first = job(&dir, "chat-first", 1);
    first["model"]["n_positions"] = json!(128);
    first["data"] = json!({
        "train": chat_data, "validation": {"fraction": 0.1}, "seq_len": 128,
        "cache_dir": dir.join("cache"), "chat": {"template": "chatml"}
    });
    let path = write_config(&dir, "first.json", &first);
    assert_ok(&train(&path, &[], &[]));
    let ckpt = dir.join("runs/chat-first/checkpoints/step-1");
    let tok_config = read_json(&ckpt.join("tokenizer_config.json"));
    assert_eq!(tok_config["chat_template"], datasets::chat::CHATML);
    assert_eq!(tok_config["fp8_trainer_tokenizer"], "bytes");

    // The same second job with the template taken from the checkpoint and named: same rows.
    let mut losses = Vec::new();
    for (name, template) in [
        ("from-ckpt", json!("checkpoint")),
        ("named", json!("chatml")),
    ] {
        let mut next = job(&dir, name, 1);
        next["model"] = json!({"checkpoint": ckpt});
        next["tokenizer"] = Value::Null;
        next["data"] = first["data"].clone();
        next["data"]["chat"] = json!({"template": template});
        let path = write_config(&dir, &format!("{name}.json"), &next);
        assert_ok(&train(&path, &[], &[]));
        losses.push(exact(&metrics(&dir.join("runs").join(name))));
    }
    assert_eq!(losses[0], losses[1]);
}
