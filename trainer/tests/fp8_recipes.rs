//! FP8 recipes end to end: `fp8-delayed` (amax histories per layer and role, checkpointed and
//! restored on resume, never carried into a new job, untouched by evaluations) and the FP8
//! telemetry warnings, on tiny byte-level jobs over the shipped sonnets.

use std::collections::BTreeMap;
use std::path::Path;

use fp8_backend::{amax_bias, Fp8Format, DEFAULT_GRADIENT_MARGIN};
use serde_json::{json, Value};
use trainer::checkpoint::f32_from_le;

mod common;
use common::jobs::{assert_ok, exact, metrics, scratch, stderr, tiny_job, train, write_config};

/// A tiny job in `fp8-delayed` with statistics at every step and a short history, so that
/// histories fill, slide and shape the biases within a few steps.
fn delayed_job(dir: &Path, name: &str, history: usize) -> Value {
    let mut job = tiny_job(dir, name);
    job["precision"] =
        json!({"mode": "fp8-delayed", "amax_history_len": history, "stats_every": 1});
    job
}

/// One tensor's fp8_stats.csv rows, in step order: (step, amax, bias).
type TensorRows = Vec<(u64, f32, i32)>;

/// fp8_stats.csv rows by (layer, role).
fn stats_by_tensor(run: &Path) -> BTreeMap<(String, String), TensorRows> {
    let text = std::fs::read_to_string(run.join("fp8_stats.csv")).unwrap();
    let mut by = BTreeMap::<_, Vec<_>>::new();
    for line in text.lines().skip(1) {
        let c: Vec<&str> = line.split(',').collect();
        by.entry((c[1].to_string(), c[2].to_string()))
            .or_default()
            .push((
                c[0].parse().unwrap(),
                c[3].parse().unwrap(),
                c[4].parse().unwrap(),
            ));
    }
    by
}

/// The Graphcore format and default margin of a role.
fn format_and_margin(role: &str) -> (Fp8Format, i32) {
    match role {
        "gradient" => (Fp8Format::E5M2Fnuz, DEFAULT_GRADIENT_MARGIN),
        _ => (Fp8Format::E4M3Fnuz, 0),
    }
}

/// Every bias in fp8_stats.csv of a delayed run is the one of the maximum of the previous
/// `history` amaxes of the same tensor (its own amax at step 1), recomputed here from the
/// file's own amax column. One micro-batch per step and statistics at every step: the rows are
/// every training cast, and evaluations (every 2 steps) must add nothing to the histories.
#[test]
fn delayed_biases_follow_each_tensors_amax_history() {
    const HISTORY: usize = 3;
    let dir = scratch("delayed-history");
    let mut job = delayed_job(&dir, "delayed", HISTORY);
    job["steps"] = json!(10);
    job["eval_every"] = json!(2);
    assert_ok(&train(&write_config(&dir, "delayed.json", &job), &[], &[]));
    let by = stats_by_tensor(&dir.join("runs/delayed"));
    assert_eq!(by.len(), 2 * 4 * 3, "2 blocks x 4 projections x 3 roles");
    let mut from_history = 0;
    for ((layer, role), rows) in &by {
        let (format, margin) = format_and_margin(role);
        assert_eq!(rows.len(), 10, "{layer} {role}: one row per step");
        for (k, &(step, amax, bias)) in rows.iter().enumerate() {
            assert_eq!(step, k as u64 + 1);
            let earlier = &rows[k.saturating_sub(HISTORY)..k];
            let a = earlier.iter().map(|r| r.1).fold(0.0f32, f32::max);
            let want = amax_bias(if a > 0.0 { a } else { amax }, format, margin).unwrap();
            assert_eq!(bias, want, "{layer} {role} step {step}: {rows:?}");
            from_history += usize::from(want != amax_bias(amax, format, margin).unwrap());
        }
    }
    // The recipe is not FP8-AMAX under another name: some tensors were scaled from their past.
    assert!(from_history > 0, "no bias differed from the tensor's own");
    let saved =
        dir.join("runs/delayed/checkpoints/step-10/trainer_state/fp8_amax_history.safetensors");
    let bytes = std::fs::read(&saved).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let names = file.names();
    assert_eq!(names.len(), 24);
    assert!(names.contains(&"h.1.mlp.c_proj.gradient"), "{names:?}");
    let h = file.tensor("h.0.attn.c_attn.activation").unwrap();
    let amaxes = f32_from_le(h.data());
    let rows = &by[&("h.0.attn.c_attn".to_string(), "activation".to_string())];
    let last: Vec<f32> = rows[10 - HISTORY..].iter().map(|r| r.1).collect();
    assert_eq!(
        amaxes, last,
        "the checkpoint holds the newest {HISTORY} amaxes, oldest first"
    );
}

/// A delayed run resumed from its step-4 checkpoint redoes steps 5-12 exactly as it first ran
/// them: the metrics and every FP8 statistic (amaxes and biases) bit for bit.
#[test]
fn resuming_a_delayed_run_restores_its_histories() {
    let dir = scratch("delayed-resume");
    let mut job = delayed_job(&dir, "resumed", 6);
    job["keep_checkpoints"] = json!(3);
    let path = write_config(&dir, "resumed.json", &job);
    assert_ok(&train(&path, &[], &[]));
    let run = dir.join("runs/resumed");
    let stats = || std::fs::read_to_string(run.join("fp8_stats.csv")).unwrap();
    let (first, first_stats) = (metrics(&run), stats());
    let step4 = run.join("checkpoints/step-4");
    let out = train(
        &path,
        &["--resume", step4.to_str().unwrap(), "--overwrite"],
        &[],
    );
    assert_ok(&out);
    assert_eq!(exact(&metrics(&run)), exact(&first));
    assert_eq!(stats(), first_stats, "fp8_stats.csv after the resume");
}

/// Evaluating (here at every step, against only at the end) changes nothing in training.
#[test]
fn evaluations_leave_delayed_training_alone() {
    let dir = scratch("delayed-eval");
    let train_losses = |name: &str, eval_every: u64| {
        let mut job = delayed_job(&dir, name, 4);
        job["eval_every"] = json!(eval_every);
        assert_ok(&train(
            &write_config(&dir, &format!("{name}.json"), &job),
            &[],
            &[],
        ));
        let rows = metrics(&dir.join("runs").join(name));
        rows.iter().map(|r| r[2].clone()).collect::<Vec<_>>()
    };
    assert_eq!(train_losses("every", 1), train_losses("end", 0));
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

/// A history naming a layer the job does not quantize is refused on resume, naming the file.
#[test]
fn a_history_of_a_layer_that_is_not_fp8_is_refused_on_resume() {
    let dir = scratch("delayed-filter");
    let path = write_config(&dir, "filtered.json", &delayed_job(&dir, "filtered", 4));
    assert_ok(&train(&path, &[], &[]));
    let out = train(
        &path,
        &["--resume", "--set", "precision.layers=[\"h.1.*\"]"],
        &[],
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("fp8_amax_history.safetensors")
            && err.contains("`h.0.")
            && err.contains("is not an FP8 layer of this job (`precision.layers`)"),
        "{err}"
    );
}

/// A tensor whose saturation crosses `precision.warn_saturation` is named in a warning once;
/// with the threshold at 1 nothing is said.
#[test]
fn saturating_tensors_are_warned_about() {
    let dir = scratch("telemetry");
    let run_with = |name: &str, warn: f64| {
        let mut job = tiny_job(&dir, name);
        // 2^12 times every value: weights and activations far beyond E4's 240.
        job["precision"] = json!({"mode": "fp8-cscale", "cscale_bias": 12, "stats_every": 1,
                                  "warn_saturation": warn});
        job["steps"] = json!(3);
        assert_ok(&train(
            &write_config(&dir, &format!("{name}.json"), &job),
            &[],
            &[],
        ));
        std::fs::read_to_string(dir.join("runs").join(name).join("log.txt")).unwrap()
    };
    let log = run_with("warned", 0.01);
    let warnings: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("FP8 saturation in the"))
        .collect();
    assert!(
        warnings
            .iter()
            .any(|l| l.contains("step 1: FP8 saturation in the activation of h.0.attn.c_attn")),
        "{log}"
    );
    let once = warnings
        .iter()
        .filter(|l| l.contains("activation of h.0.attn.c_attn:"))
        .count();
    assert_eq!(once, 1, "said once while it stays over: {warnings:?}");
    assert!(!run_with("quiet", 1.0).contains("FP8 saturation"));
}
