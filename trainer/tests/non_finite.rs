//! The non-finite policy (docs/design.md "Training loop") beyond one NaN loss with FP8 on
//! (train_jobs.rs): an infinite loss in fp32, a non-finite FP8 activation named by layer and
//! role, and what `skip` leaves untouched (weights, AdamW's step count), across a `--resume`.

mod common;

use std::path::Path;

use common::jobs::*;
use serde_json::{json, Value};

/// `fp32`: the injected +inf loss is reported as a non-finite loss, with no FP8 event (there is
/// no FP8 cast to see it), and the job stops at that step with exit code 1.
#[test]
fn an_infinite_loss_in_fp32_stops_the_job() {
    let dir = scratch("inf-fp32");
    let mut config = tiny_job(&dir, "inf");
    config["precision"] = json!({"mode": "fp32"});
    config["non_finite"] = json!("stop");
    let path = write_config(&dir, "inf.json", &config);
    let out = train(&path, &[], &[("FP8_TRAINER_INJECT_INF_STEP", "2")]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("stopped at step 2: non-finite loss (inf)"),
        "{err}"
    );
    assert!(!err.contains("FP8 amax"), "fp32 has no FP8 casts: {err}");
    let rows = metrics(&dir.join("runs/inf"));
    assert_eq!(rows.last().unwrap()[0], "1", "step 2 was not logged");
}

/// The fixture with h.0.ln_1's gain set to 3e38 (finite, so the checkpoint loads: loading
/// refuses non-finite weights): the normalised row times the gain overflows to infinity
/// wherever |x^| > 1.13, so the layer norm's output, the input of the first FP8 projection,
/// is infinite. (A huge embedding no longer does this: the fused layer norm sums its row
/// statistics in f64, where 64 x 3e38 does not overflow.)
fn fixture_with_a_huge_layer_norm_gain(name: &str) -> std::path::PathBuf {
    common::edited_fixture(name, |tensors| {
        let gain = tensors
            .iter_mut()
            .find(|t| t.name == "transformer.h.0.ln_1.weight")
            .unwrap();
        gain.values.fill(3e38);
    })
}

/// A job on an edited fixture checkpoint (bytes tokenizer, the sonnets).
fn fixture_job(dir: &Path, name: &str, checkpoint: &Path) -> Value {
    json!({
        "name": name, "out_dir": dir.join("runs"),
        "model": {"checkpoint": checkpoint},
        "tokenizer": "bytes",
        "data": {"train": sonnets(), "seq_len": 64, "cache_dir": dir.join("cache")},
        "precision": {"mode": "fp8-amax"},
        "non_finite": "stop",
        "batch_size": 2, "steps": 3, "checkpoint_every": 1
    })
}

/// A non-finite activation is caught at the first FP8 cast that sees it: policy `stop` names the
/// role and the layer, and no checkpoint is written.
#[test]
fn a_non_finite_activation_names_its_layer() {
    let dir = scratch("nan-activation");
    let checkpoint = fixture_with_a_huge_layer_norm_gain("huge-ln-gain");
    let path = write_config(&dir, "job.json", &fixture_job(&dir, "act", &checkpoint));
    let out = train(&path, &[], &[]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("stopped at step 1"), "{err}");
    assert!(
        err.contains("in the activation of layer h.0.attn.c_attn"),
        "names the first FP8 layer and the role: {err}"
    );
    assert!(!dir.join("runs/act/checkpoints/step-1").exists(), "{err}");

    // The same job on the unedited fixture trains.
    let mut config = fixture_job(&dir, "unedited", &common::fixture_dir());
    config["steps"] = json!(1);
    let path = write_config(&dir, "unedited.json", &config);
    assert_ok(&train(&path, &[], &[]));
}

/// The trainer state of checkpoint `step` of `run`.
fn state(run: &Path, step: u64) -> Value {
    let path = run.join(format!("checkpoints/step-{step}/trainer_state/state.json"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn model_bytes(run: &Path, step: u64) -> Vec<u8> {
    std::fs::read(run.join(format!("checkpoints/step-{step}/model.safetensors"))).unwrap()
}

/// `skip` leaves the weights and AdamW (moments and step count) as they were: the checkpoints of
/// the steps before and after the skipped one hold the same model, byte for byte, and the same
/// `adam_t`. A run resumed from the skipped step's checkpoint continues exactly as the
/// uninterrupted run with the same injection did (so `adam_t` and `skipped_steps`, not the step
/// number, drive AdamW's bias correction after a resume).
#[test]
fn skip_leaves_weights_and_optimizer_unchanged_across_a_resume() {
    let dir = scratch("skip-state");
    let mut config = tiny_job(&dir, "skip");
    config["steps"] = json!(6);
    config["checkpoint_every"] = json!(1);
    config["keep_checkpoints"] = json!(100);
    let path = write_config(&dir, "skip.json", &config);
    let nan_at_3 = [("FP8_TRAINER_INJECT_NAN_STEP", "3")];
    assert_ok(&train(&path, &[], &nan_at_3));
    let run = dir.join("runs/skip");
    let uninterrupted = metrics(&run);

    assert!(
        model_bytes(&run, 2) == model_bytes(&run, 3),
        "the skipped step 3 changed the weights"
    );
    assert!(
        model_bytes(&run, 3) != model_bytes(&run, 4),
        "step 4 trains again"
    );
    let optimizer = |step: u64| {
        std::fs::read(run.join(format!(
            "checkpoints/step-{step}/trainer_state/optimizer.safetensors"
        )))
        .unwrap()
    };
    assert!(optimizer(2) == optimizer(3), "the moments did not move");
    let (s2, s3, s6) = (state(&run, 2), state(&run, 3), state(&run, 6));
    assert_eq!(
        (&s2["adam_t"], &s2["skipped_steps"]),
        (&json!(2), &json!(0))
    );
    assert_eq!(
        (&s3["adam_t"], &s3["skipped_steps"]),
        (&json!(2), &json!(1))
    );
    assert_eq!(
        (&s6["adam_t"], &s6["skipped_steps"]),
        (&json!(5), &json!(1))
    );
    assert_eq!(s3["step"], json!(3));

    // Lose everything after step 3, then resume there (no injection left to run).
    for step in 4..=6 {
        std::fs::remove_dir_all(run.join(format!("checkpoints/step-{step}"))).unwrap();
    }
    let out = train(&path, &["--resume"], &[]);
    assert_ok(&out);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("(step 3)"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(exact(&metrics(&run)), exact(&uninterrupted));
    let resumed = state(&run, 6);
    for key in ["step", "tokens", "skipped_steps", "adam_t", "loader"] {
        assert_eq!(resumed[key], s6[key], "state.json `{key}` after the resume");
    }
}
