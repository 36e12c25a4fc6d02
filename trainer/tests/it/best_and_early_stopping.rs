//! Checkpoints chosen by evaluation: `checkpoints/best` holds the evaluation with the best
//! `best_metric` (the lowest validation loss, or the highest `val_accuracy` on classification
//! data, which `metrics.csv` logs as `eval` computes it), whatever `keep_checkpoints` prunes;
//! early stopping ends the run after `patience` evaluations without an improvement, and stops at
//! the same step after a resume. Bad settings name their field.

use std::path::Path;

use serde_json::json;

use crate::common;
use crate::common::jobs::*;

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
