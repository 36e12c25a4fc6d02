//! `fp8-delayed` end to end, on tiny byte-level jobs over the shipped sonnets: every bias in
//! `fp8_stats.csv` is the one of its tensor's amax history (kept per layer and role, the newest
//! amaxes saved in the checkpoint), and evaluations leave the histories, so training, alone.
//! (The histories across a resume: resume.rs; in a new job: fine_tuning.rs.)

use std::collections::BTreeMap;
use std::path::Path;

use fp8_backend::{amax_bias, Fp8Format, DEFAULT_GRADIENT_MARGIN};
use serde_json::json;
use trainer::checkpoint::f32_from_le;

use crate::common::jobs::{assert_ok, delayed_job, metrics, scratch, train, write_config};

/// One tensor's fp8_stats.csv rows, in step order: (step, amax, bias).
pub(crate) type TensorRows = Vec<(u64, f32, i32)>;

/// fp8_stats.csv rows by (layer, role).
pub(crate) fn stats_by_tensor(run: &Path) -> BTreeMap<(String, String), TensorRows> {
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
pub(crate) fn format_and_margin(role: &str) -> (Fp8Format, i32) {
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
