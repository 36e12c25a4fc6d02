//! The `fp8-trainer` binary end to end: `logits` against the reference, `generate` with token
//! ids and with text, and the exit codes of refused requests.

mod common;

use std::process::{Command, Output};

fn fp8_trainer(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fp8-trainer"))
        .args(args)
        .output()
        .unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn fixture() -> String {
    common::fixture_dir().to_str().unwrap().to_string()
}

/// Per-element bound for logits read back from JSON (written as shortest round-trip f32, so
/// only the reference's own ~1e-6 difference remains; see gpt2_parity.rs).
const LOGITS_ABS_TOL: f32 = 1e-4;
/// FP8 (E4, 3 mantissa bits: relative rounding error up to 2^-4 per operand, two operands per
/// GEMM, eight GEMMs deep in the tiny fixture) moves the logits (measured worst: 0.25 absolute);
/// a quarter of the largest logit is far beyond f32 noise and still catches a broken cast or
/// scale (a bias wrong by several powers of two saturates or underflows whole tensors).
const FP8_LOGITS_REL_TOL: f32 = 0.25;

#[test]
fn logits_match_the_reference_and_fp8_stays_close() {
    let out = common::scratch_dir("cli-logits").join("logits.json");
    let run = |precision: &str| {
        fp8_trainer(&[
            "logits",
            "--checkpoint",
            &fixture(),
            "--tokens",
            "203,290,2",
            "--out",
            out.to_str().unwrap(),
            "--precision",
            precision,
        ])
    };
    let output = run("fp32");
    assert!(output.status.success(), "{}", stderr(&output));
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let rows = json["logits"].as_array().unwrap();
    assert_eq!((rows.len(), rows[0].as_array().unwrap().len()), (3, 512));

    // The reference batch starts with the same three tokens; with causal attention the first
    // three positions' logits do not depend on what follows.
    let reference = common::read_tensors(&common::fixture_dir().join("reference.safetensors"));
    let logits = &reference
        .iter()
        .find(|t| t.name == "logits")
        .unwrap()
        .values;
    for (position, row) in rows.iter().enumerate() {
        for (i, v) in row.as_array().unwrap().iter().enumerate() {
            let diff = (v.as_f64().unwrap() as f32 - logits[position * 512 + i]).abs();
            assert!(
                diff <= LOGITS_ABS_TOL,
                "position {position} token {i}: {diff}"
            );
        }
    }

    // FP8-AMAX: different logits (the projections are quantized), but close to f32.
    let output = run("fp8-amax");
    assert!(output.status.success(), "{}", stderr(&output));
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let fp8: Vec<f32> = json["logits"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| {
            r.as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap() as f32)
        })
        .collect();
    let worst = fp8
        .iter()
        .zip(logits)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    let scale = logits[..fp8.len()]
        .iter()
        .map(|x| x.abs())
        .fold(0f32, f32::max);
    assert!(
        worst > 0.0,
        "fp8-amax gave f32 logits: the decorator was not used"
    );
    assert!(
        worst <= FP8_LOGITS_REL_TOL * scale,
        "fp8-amax logits off by {worst} (largest |logit| {scale})"
    );
}

#[test]
fn bad_token_arguments_exit_2() {
    let out = common::scratch_dir("cli-bad-tokens").join("logits.json");
    for tokens in ["1,x", "512", ""] {
        let output = fp8_trainer(&[
            "logits",
            "--checkpoint",
            &fixture(),
            "--tokens",
            tokens,
            "--out",
            out.to_str().unwrap(),
        ]);
        assert_eq!(
            output.status.code(),
            Some(2),
            "--tokens {tokens:?}: {}",
            stderr(&output)
        );
        assert!(stderr(&output).contains("--tokens"), "{}", stderr(&output));
    }
}

#[test]
fn generate_is_deterministic_for_a_seed() {
    let run = |seed: &str| {
        let output = fp8_trainer(&[
            "generate",
            "--checkpoint",
            &fixture(),
            "--tokens",
            "1,2,3",
            "--max-new-tokens",
            "8",
            "--temperature",
            "1.0",
            "--top-k",
            "50",
            "--seed",
            seed,
        ]);
        assert!(output.status.success(), "{}", stderr(&output));
        String::from_utf8(output.stdout).unwrap()
    };
    let first = run("7");
    assert_eq!(first, run("7"));
    assert_ne!(first, run("8"));
    assert_eq!(first.trim().split(',').count(), 8, "{first}");
}

#[test]
fn generate_continues_a_text_prompt() {
    let checkpoint = fixture();
    let base = [
        "generate",
        "--checkpoint",
        &checkpoint,
        "--prompt",
        "Hello",
        "--max-new-tokens",
        "5",
    ];
    // The fixture's 512-token vocabulary holds the 257 byte tokens.
    let output =
        fp8_trainer(&[&base[..], &["--tokenizer", "bytes", "--temperature", "0"]].concat());
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(String::from_utf8_lossy(&output.stdout).starts_with("Hello"));

    // No tokenizer in the folder and not GPT-2's vocabulary: bad input, named.
    let output = fp8_trainer(&base);
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("--tokenizer") && stderr(&output).contains("gpt2-tiny"),
        "{}",
        stderr(&output)
    );
}
