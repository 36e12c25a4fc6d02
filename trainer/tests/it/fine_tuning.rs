//! A new run from a checkpoint (`model.checkpoint`, a fine-tune) takes over what the job asks
//! for and nothing else: AdamW's moments and step count from one of our checkpoints only with
//! `optimizer_state: from_checkpoint` (a folder without our training state is then refused), and
//! never an `fp8-delayed` run's amax histories (its first casts scale from their own amax).

use fp8_backend::amax_bias;
use serde_json::json;

use crate::common;
use crate::common::jobs::*;
use crate::delayed_scaling::{format_and_margin, stats_by_tensor};

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

/// A new job from a delayed run's checkpoint starts with empty histories: its first step's
/// biases are the tensors' own (FP8-AMAX's), not the stale ones of the other run's last steps.
#[test]
fn a_new_job_from_a_delayed_checkpoint_starts_with_empty_histories() {
    let dir = scratch("delayed-new-job");
    assert_ok(&train(
        &write_config(&dir, "first.json", &delayed_job(&dir, "first", 8)),
        &[],
        &[],
    ));
    let checkpoint = dir.join("runs/first/checkpoints/step-12");
    assert!(checkpoint
        .join("trainer_state/fp8_amax_history.safetensors")
        .is_file());
    let mut job = delayed_job(&dir, "second", 8);
    job["model"] = json!({"checkpoint": checkpoint});
    job["steps"] = json!(2);
    let out = train(&write_config(&dir, "second.json", &job), &[], &[]);
    assert_ok(&out);
    let log = String::from_utf8_lossy(&out.stdout);
    assert!(log.contains("amax histories start empty"), "{log}");
    for ((layer, role), rows) in stats_by_tensor(&dir.join("runs/second")) {
        let (format, margin) = format_and_margin(&role);
        let (step, amax, bias) = rows[0];
        assert_eq!(step, 1);
        assert_eq!(
            bias,
            amax_bias(amax, format, margin).unwrap(),
            "{layer} {role}"
        );
    }
}
