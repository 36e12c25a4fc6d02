//! The `fp8-trainer` binary end to end: `logits` against the reference, `generate` with token
//! ids and with text, and the exit codes of refused requests.

mod common;

use std::process::Output;

use common::jobs::fp8_trainer;

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn fixture() -> String {
    common::fixture_dir().to_str().unwrap().to_string()
}

/// Per-element bound for logits read back from JSON (shortest round-trip f32, so exact) against
/// the references of the same three tokens: `fp32` against transformers' (and the first three
/// positions of `reference.safetensors`), `fp8-amax` against gen_gpt2_fp8.py's independent FP8
/// model. Only f32 summation order differs (the FP8 casts are exact): measured here 1.3e-6 /
/// 1.7e-6 (fp32) and 6.0e-7 / 7.2e-7 (fp8-amax) absolute with the ndarray / flex CPU backend,
/// on logits of magnitude up to 2.6 (an f32 ulp there: 2.4e-7).
/// Measured on broken builds: a weight bias one too high (margin -1: the largest weights
/// saturate) moves them by 0.61, which the former bound of a quarter of the largest logit let
/// pass; four too low (more small weights flushed to zero) by 1.4e-5. Margins that flush nothing
/// more leave FP8-AMAX's values unchanged (docs/design.md): dump_step.rs checks the biases.
const LOGITS_ABS_TOL: f32 = 1e-5;
/// The FP8-AMAX logits must differ from the fp32 ones by at least this many LOGITS_ABS_TOL, so
/// that the comparison above tells FP8 from f32 (measured: 0.25, i.e. 25000 of them).
const FP8_VS_FP32_FACTOR: f32 = 100.0;

/// `logits` of tokens 203,290,2 in `precision`, as one flat [3 * 512] vector.
fn logits_of(precision: &str) -> Vec<f32> {
    let out = common::scratch_dir(&format!("cli-logits-{precision}")).join("logits.json");
    let output = fp8_trainer(&[
        "logits",
        "--checkpoint",
        &fixture(),
        "--tokens",
        "203,290,2",
        "--out",
        out.to_str().unwrap(),
        "--precision",
        precision,
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let rows = json["logits"].as_array().unwrap();
    assert_eq!(rows.len(), 3, "one row per position");
    rows.iter()
        .flat_map(|r| {
            let r = r.as_array().unwrap();
            assert_eq!(r.len(), 512, "one logit per token of the vocabulary");
            r.iter().map(|v| v.as_f64().unwrap() as f32)
        })
        .collect()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max)
}

/// The tensor `name` of a fixture file.
fn fixture_tensor(file: &str, name: &str) -> Vec<f32> {
    let tensors = common::read_tensors(&common::fixture_dir().join(file));
    let t = tensors.into_iter().find(|t| t.name == name);
    t.unwrap_or_else(|| panic!("{file} has no `{name}`")).values
}

#[test]
fn logits_match_the_fp32_and_fp8_references() {
    let file = "reference_fp8_logits.safetensors";
    let metadata = common::safetensors_metadata(&common::fixture_dir().join(file));
    assert_eq!(
        metadata.get("fixture_version").map(String::as_str),
        Some("2"),
        "{file} is stale: try re-running tests/fixtures/gen_gpt2_fp8.py"
    );
    assert_eq!(
        metadata.get("tokens").map(String::as_str),
        Some("[203, 290, 2]")
    );

    let fp32 = logits_of("fp32");
    let diff = max_abs_diff(&fp32, &fixture_tensor(file, "fp32"));
    eprintln!("fp32 logits: max |ours - reference| {diff:e}");
    assert!(diff <= LOGITS_ABS_TOL, "fp32 logits off by {diff}");
    // The fp32 reference batch starts with the same three tokens; with causal attention the
    // first three positions' logits do not depend on what follows.
    let batch = fixture_tensor("reference.safetensors", "logits");
    let diff = max_abs_diff(&fp32, &batch[..fp32.len()]);
    assert!(
        diff <= LOGITS_ABS_TOL,
        "fp32 logits off by {diff} from reference.safetensors"
    );

    let fp8 = logits_of("fp8-amax");
    let diff = max_abs_diff(&fp8, &fixture_tensor(file, "amax"));
    eprintln!("fp8-amax logits: max |ours - reference| {diff:e}");
    assert!(diff <= LOGITS_ABS_TOL, "fp8-amax logits off by {diff}");
    let moved = max_abs_diff(&fp8, &fp32);
    assert!(
        moved > FP8_VS_FP32_FACTOR * LOGITS_ABS_TOL,
        "fp8-amax logits are only {moved} from fp32: the projections were not quantized"
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

/// The greedy continuation of `prompt` computed with `logits` alone: the argmax (first of equal
/// maxima, as `generate` takes it) of the last row, appended, `max_new` times or until `eos`.
/// `tag` names the scratch folder (the tests run in parallel).
fn iterated_argmax(
    tag: &str,
    checkpoint: &str,
    prompt: &[u32],
    max_new: usize,
    eos: u32,
) -> Vec<u32> {
    let out = common::scratch_dir(&format!("cli-argmax-{tag}")).join("logits.json");
    let mut tokens = prompt.to_vec();
    let mut new = Vec::new();
    while new.len() < max_new {
        let list: Vec<String> = tokens.iter().map(u32::to_string).collect();
        let output = fp8_trainer(&[
            "logits",
            "--checkpoint",
            checkpoint,
            "--tokens",
            &list.join(","),
            "--out",
            out.to_str().unwrap(),
        ]);
        assert!(output.status.success(), "{}", stderr(&output));
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
        let rows = json["logits"].as_array().unwrap();
        let last: Vec<f64> = rows[rows.len() - 1]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        let best = (0..last.len()).fold(0, |b, i| if last[i] > last[b] { i } else { b }) as u32;
        tokens.push(best);
        new.push(best);
        if best == eos {
            break;
        }
    }
    new
}

/// `generate --tokens IDS --temperature 0 --max-new-tokens N` on `checkpoint`: the new ids.
fn greedy(checkpoint: &str, prompt: &str, max_new: usize) -> Vec<u32> {
    let output = fp8_trainer(&[
        "generate",
        "--checkpoint",
        checkpoint,
        "--tokens",
        prompt,
        "--temperature",
        "0",
        "--max-new-tokens",
        &max_new.to_string(),
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    let text = String::from_utf8(output.stdout).unwrap();
    text.trim().split(',').map(|t| t.parse().unwrap()).collect()
}

/// Greedy generation is the iterated argmax of the model's logits, N new tokens exactly (the
/// fixture's eos_token_id 511 never wins here: no stop).
#[test]
fn greedy_generate_is_the_iterated_argmax_of_the_logits() {
    const N: usize = 12;
    let new = greedy(&fixture(), "1,2,3", N);
    assert_eq!(new.len(), N, "{new:?}");
    assert!(!new.contains(&511), "{new:?}");
    assert_eq!(new, iterated_argmax("n", &fixture(), &[1, 2, 3], N, 511));
}

/// With `eos_token_id` set to a token the greedy continuation produces, `generate --tokens`
/// stops right after emitting it.
#[test]
fn greedy_generate_stops_at_the_eos_token() {
    const N: usize = 12;
    let full = iterated_argmax("eos", &fixture(), &[1, 2, 3], N, 511);
    // The second new token, so that the stop cuts a longer continuation short.
    let eos = full[1];
    let stop_at = full.iter().position(|&t| t == eos).unwrap();
    let dir = common::fixture_with_config("cli-eos", |config| {
        config["eos_token_id"] = serde_json::json!(eos)
    });

    let new = greedy(dir.to_str().unwrap(), "1,2,3", N);
    assert_eq!(new, full[..=stop_at], "stops after eos {eos}");
    assert!(new.len() < N);
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
