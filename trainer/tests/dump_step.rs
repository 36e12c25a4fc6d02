//! `fp8-trainer dump-step` on the tiny fixture matches the `transformers` reference: the loss
//! and every parameter gradient, by Hugging Face name, in fp32 (llm.c's parity habit), and in
//! FP8-AMAX against an independent torch + `ml_dtypes` implementation of docs/design.md's FP8 linear.

mod common;

use std::process::Command;

use serde_json::json;

/// Loss: a mean of 128 f32 log-probabilities (as in gpt2_parity.rs).
const LOSS_REL_TOL: f32 = 1e-5;
/// Each gradient: max |ours - reference| / max |reference| over the tensor (gpt2_parity.rs).
const GRAD_REL_TOL: f32 = 1e-4;
/// FP8-AMAX against the independent reference. The casts and scales are exact on both sides, so
/// the step differs only by f32 summation order (measured here: worst gradient 4.7e-7 relative,
/// i.e. no element rounded to a different FP8 value). An f32 input that differs in its last bit
/// can still round to the neighbouring FP8 value on another CPU or BLAS (a 1/8 or 1/4 relative
/// step of that one element, diluted in the GEMM sums), hence the headroom.
const FP8_LOSS_REL_TOL: f32 = 1e-5;
const FP8_GRAD_REL_TOL: f32 = 1e-3;

/// Runs `dump-step` on the fixture's batch in `precision`; returns (name, rel diff) of the loss
/// and every gradient against `reference` (max |ours - ref| / max |ref| over the tensor), after
/// checking that every gradient of the reference was dumped, in the HF layout.
fn dump_step_against(precision: &str, reference: &str) -> Vec<(String, f32)> {
    // One folder per (precision, reference): the tests run in parallel.
    let dir = common::scratch_dir(&format!("dump-step-{precision}-{reference}"));
    let fixture = common::fixture_dir();
    let sonnets =
        common::repo_root().join("datasets/data/shakespeare_milton/shakespeare_sonnets.txt");
    let config = json!({
        "name": "dump", "out_dir": dir.join("runs"),
        "model": {"checkpoint": fixture},
        "tokenizer": "bytes",
        "data": {"train": sonnets, "seq_len": 64, "cache_dir": dir.join("cache")},
        "precision": {"mode": precision},
        "batch_size": 2, "steps": 1
    });
    let config_path = dir.join("job.json");
    std::fs::write(&config_path, config.to_string()).unwrap();
    let out = dir.join("step.safetensors");
    let run = Command::new(env!("CARGO_BIN_EXE_fp8-trainer"))
        .args(["dump-step", "--config"])
        .arg(&config_path)
        .arg("--out")
        .arg(&out)
        .arg("--tokens")
        .arg(fixture.join("reference.json"))
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );

    let ours = common::read_tensors(&out);
    let reference = common::read_tensors(&fixture.join(reference));
    let find = |name: &str| reference.iter().find(|t| t.name == name);
    let mut diffs = Vec::new();
    for t in &ours {
        let r = find(&t.name).unwrap_or_else(|| panic!("`{}` is not in the reference", t.name));
        assert_eq!(t.shape, r.shape, "{} shape (HF layout)", t.name);
        let scale = r
            .values
            .iter()
            .fold(0.0f32, |m, v| m.max(v.abs()))
            .max(1e-30);
        let diff = t
            .values
            .iter()
            .zip(&r.values)
            .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
        diffs.push((t.name.clone(), diff / scale));
    }
    assert_eq!(
        diffs.len(),
        reference.len(),
        "loss, logits and every gradient of the reference are dumped"
    );
    let worst = diffs.iter().fold(
        ("", 0.0f32),
        |w, (n, d)| {
            if *d > w.1 {
                (n.as_str(), *d)
            } else {
                w
            }
        },
    );
    eprintln!(
        "{precision}: {} tensors compared; worst `{}` rel {:.3e}",
        diffs.len(),
        worst.0,
        worst.1
    );
    diffs
}

#[test]
fn dump_step_matches_the_reference_gradients_in_fp32() {
    for (name, rel) in dump_step_against("fp32", "reference.safetensors") {
        let tol = if name == "loss" {
            LOSS_REL_TOL
        } else {
            GRAD_REL_TOL
        };
        assert!(rel < tol, "`{name}` differs by {rel:e} relative");
    }
}

/// FP8-AMAX against an independent implementation: `tests/fixtures/gen_gpt2_fp8.py` patches the
/// projections of the `transformers` model with docs/design.md's FP8 linear (casts by `ml_dtypes`).
#[test]
fn dump_step_matches_the_independent_fp8_amax_reference() {
    let fp32 = dump_step_against("fp32", "reference_fp8_amax.safetensors");
    let fp8 = dump_step_against("fp8-amax", "reference_fp8_amax.safetensors");
    for ((name, rel), (_, rel_fp32)) in fp8.iter().zip(&fp32) {
        let tol = if name == "loss" {
            FP8_LOSS_REL_TOL
        } else {
            FP8_GRAD_REL_TOL
        };
        assert!(rel < &tol, "`{name}` differs by {rel:e} relative");
        // The reference is really FP8: our fp32 step is much farther from it than our FP8 step.
        if name != "loss" {
            assert!(
                *rel_fp32 > 10.0 * rel.max(tol / 10.0),
                "`{name}`: fp32 is {rel_fp32:e} from the FP8 reference, FP8 {rel:e}"
            );
        }
    }
}
