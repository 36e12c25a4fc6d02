//! The `logits` command against the references of the same three tokens: fp32 against
//! `transformers` (and the fp32 reference batch, which starts with them), FP8-AMAX against
//! gen_gpt2_fp8.py's independent FP8 model, and far enough from fp32 to tell FP8 from f32.

use crate::common;
use crate::common::jobs::logits_rows;
use crate::common::max_abs_diff;

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
    let rows = logits_rows(&common::fixture_dir(), &[203, 290, 2], precision, &out);
    assert_eq!(rows.len(), 3, "one row per position");
    for r in &rows {
        assert_eq!(r.len(), 512, "one logit per token of the vocabulary");
    }
    rows.concat()
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
