//! `fp8-trainer dump-step` on the tiny fixture matches the `transformers` reference: the loss
//! and every parameter gradient, by Hugging Face name, in fp32 (llm.c's parity habit).

mod common;

use std::process::Command;

use serde_json::json;

/// Loss: a mean of 128 f32 log-probabilities (as in gpt2_parity.rs).
const LOSS_REL_TOL: f32 = 1e-5;
/// Each gradient: max |ours - reference| / max |reference| over the tensor (gpt2_parity.rs).
const GRAD_REL_TOL: f32 = 1e-4;

#[test]
fn dump_step_matches_the_reference_gradients_in_fp32() {
    let dir = common::scratch_dir("dump-step");
    let fixture = common::fixture_dir();
    let sonnets =
        common::repo_root().join("datasets/data/shakespeare_milton/shakespeare_sonnets.txt");
    let config = json!({
        "name": "dump", "out_dir": dir.join("runs"),
        "model": {"checkpoint": fixture},
        "tokenizer": "bytes",
        "data": {"train": sonnets, "seq_len": 64, "cache_dir": dir.join("cache")},
        "precision": {"mode": "fp32"},
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
    let reference = common::read_tensors(&fixture.join("reference.safetensors"));
    let find = |name: &str| reference.iter().find(|t| t.name == name);
    let (mut compared, mut worst) = (0, (0.0f32, String::new()));
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
        let tol = if t.name == "loss" {
            LOSS_REL_TOL
        } else {
            GRAD_REL_TOL
        };
        assert!(
            diff / scale < tol,
            "`{}` differs by {:e} relative",
            t.name,
            diff / scale
        );
        if diff / scale > worst.0 {
            worst = (diff / scale, t.name.clone());
        }
        compared += 1;
    }
    let expected = reference.iter().filter(|t| t.name != "logits").count();
    assert_eq!(
        compared, expected,
        "loss + every gradient of the reference is dumped"
    );
    eprintln!(
        "{compared} tensors match; worst `{}` rel {:.3e}",
        worst.1, worst.0
    );
}
