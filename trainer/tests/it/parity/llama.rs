//! The Llama family against Hugging Face `transformers` on the committed fixtures
//! (tests/fixtures/gen_llama.py: `llama-tiny` with grouped-query attention and an untied head,
//! `llama3-tiny` with multi-query attention, an explicit `head_dim`, llama3 rotary scaling and
//! a tied head, `qwen2-tiny` with q/k/v biases, `mistral-tiny` with a sliding window shorter
//! than the sequence; each in transformers 5's `config.json` and, for the first two, transformers
//! 4's too): the logits and loss through the library, every gradient through `dump-step` in
//! fp32 and in FP8-AMAX against an independent torch + `ml_dtypes` FP8 model
//! (gen_llama_fp8.py), and 20 AdamW steps against `torch.optim.AdamW`
//! (gen_llama_adamw_curve.py).

use std::path::{Path, PathBuf};

use burn::backend::{Autodiff, NdArray};
use burn::tensor::{Int, Tensor, TensorData};
use datasets::{DataLoader, WindowOrder};
use fp8_backend::Fp8;
use serde_json::{json, Value};
use trainer::model::names::param_shapes;
use trainer::train::optimizer::{AdamW, AdamWStep};
use trainer::train::step::{apply_adamw, clip_factor, gradients, Share, StepOptions};
use trainer::{load_checkpoint, ModelOptions};

use crate::common;

type Cpu = Fp8<NdArray<f32>>;
type Train = Autodiff<Cpu>;

/// Must equal `FIXTURE_VERSION` of gen_llama.py, gen_llama_fp8.py and
/// gen_llama_adamw_curve.py.
const FIXTURE_VERSION: u64 = 1;
/// Logits, max |ours - reference|: f32 sums in another order than torch's (measured: at most
/// 2.5e-6 over the four fixtures, largest logit about 3.6). A transposed weight, a missing bias,
/// the wrong key/value head or rotary frequency moves logits by 1e-2 or more.
const LOGITS_ABS_TOL: f32 = 1e-4;
/// Loss, relative: a mean of 128 f32 log-probabilities.
const LOSS_REL_TOL: f64 = 1e-5;
/// Each gradient, max |ours - reference| / max |reference| over the tensor (measured: at most
/// 1.6e-6 in fp32).
const GRAD_REL_TOL: f32 = 1e-4;
/// FP8-AMAX against the independent reference, per tensor as above. The casts are exact on
/// both sides, so only f32 sums outside them differ (measured: at most 7.9e-6, qwen2-tiny's
/// layer-1 o_proj weight); an element rounding to the neighbouring FP8 value, or a scale one
/// power of two off, moves a tensor by 1e-3 or more.
const FP8_REL_TOL: f32 = 1e-4;
/// The 20-step AdamW curve: each step's loss and gradient norm, relative to torch's. The
/// parameters drift apart by f32 rounding step after step (measured: at most 8.5e-7 over the 20
/// steps).
const CURVE_REL_TOL: f64 = 1e-4;

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The fixture's `reference.json`, after checking its version.
fn reference(dir: &Path) -> Value {
    let meta = read_json(&dir.join("reference.json"));
    assert_eq!(
        meta["fixture_version"].as_u64(),
        Some(FIXTURE_VERSION),
        "{} is stale or from another generator; try re-running `python tests/fixtures/gen_llama.py`",
        dir.display()
    );
    meta
}

fn tensor_of(dir: &Path, file: &str, name: &str) -> (Vec<usize>, Vec<f32>) {
    let t = common::read_tensors(&dir.join(file))
        .into_iter()
        .find(|t| t.name == name)
        .unwrap_or_else(|| panic!("{file} has no `{name}`"));
    (t.shape, t.values)
}

/// A copy of fixture `name` whose `config.json` is its `config_v4.json` (transformers 4's
/// spelling of the same architecture).
fn with_v4_config(name: &str) -> PathBuf {
    let dir = common::scratch_dir(&format!("llama-v4-{name}"));
    for file in [
        "model.safetensors",
        "reference.json",
        "reference.safetensors",
    ] {
        std::fs::copy(common::fixture_named(name).join(file), dir.join(file)).unwrap();
    }
    std::fs::copy(
        common::fixture_named(name).join("config_v4.json"),
        dir.join("config.json"),
    )
    .unwrap();
    dir
}

#[test]
fn logits_and_loss_match_transformers_for_every_variant_and_config_style() {
    let dirs = [
        common::fixture_named("llama-tiny"),
        common::fixture_named("llama3-tiny"),
        common::fixture_named("qwen2-tiny"),
        common::fixture_named("mistral-tiny"),
        with_v4_config("llama-tiny"),
        with_v4_config("llama3-tiny"),
    ];
    for dir in dirs {
        let meta = reference(&dir);
        let (b, t) = (
            meta["batch_size"].as_u64().unwrap() as usize,
            meta["seq_len"].as_u64().unwrap() as usize,
        );
        let tokens: Vec<i64> = (meta["tokens"].as_array().unwrap().iter())
            .map(|t| t.as_i64().unwrap())
            .collect();
        let device = Default::default();
        let model = load_checkpoint::<Cpu>(&dir, &ModelOptions::default(), &device).unwrap();
        let ids = |from: usize| {
            let v = tokens[from..from + b * t].to_vec();
            Tensor::<Cpu, 2, Int>::from_data(TensorData::new(v, [b, t]), &device)
        };
        let (loss, logits) = model.forward_loss(ids(0), ids(1));
        let ours = logits.into_data().to_vec::<f32>().unwrap();
        let (shape, theirs) = tensor_of(&dir, "reference.safetensors", "logits");
        assert_eq!(shape, vec![b, t, model.config().vocab_size()]);
        let worst = ours
            .iter()
            .zip(&theirs)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        let loss = f64::from(loss.into_scalar());
        let want = meta["loss"].as_f64().unwrap();
        println!(
            "{}: logits max|diff| {worst:e}, loss {loss} vs {want}",
            dir.display()
        );
        assert!(
            worst < LOGITS_ABS_TOL,
            "{}: logits differ by {worst}",
            dir.display()
        );
        assert!(
            ((loss - want) / want).abs() < LOSS_REL_TOL,
            "{}: loss {loss} vs {want}",
            dir.display()
        );
    }
}

/// `dump-step` of fixture `name`'s batch under `precision`; the dumped tensors.
fn dump_step(name: &str, precision: &str) -> Vec<trainer::checkpoint::NamedTensor> {
    let dir = common::scratch_dir(&format!("llama-dump-{name}-{precision}"));
    let sonnets =
        common::repo_root().join("datasets/data/shakespeare_milton/shakespeare_sonnets.txt");
    let config = json!({
        "name": "dump", "out_dir": dir.join("runs"),
        "model": {"checkpoint": common::fixture_named(name)},
        "tokenizer": "bytes",
        "data": {"train": sonnets, "seq_len": 64, "cache_dir": dir.join("cache")},
        "precision": {"mode": precision},
        "batch_size": 2, "steps": 1
    });
    let path = dir.join("job.json");
    std::fs::write(&path, config.to_string()).unwrap();
    let tokens = common::fixture_named(name).join("reference.json");
    common::read_tensors(&common::jobs::dump_step(&path, &tokens, &dir))
}

/// Every tensor of `reference` (loss, logits, each gradient by its HF name) against the dump,
/// which must hold exactly those tensors in their shapes; the worst relative difference.
fn assert_dump_matches(name: &str, precision: &str, reference: &str, tol: f32) {
    let ours = dump_step(name, precision);
    let theirs = common::read_tensors(&common::fixture_named(name).join(reference));
    let mut names: Vec<&str> = ours.iter().map(|t| t.name.as_str()).collect();
    let mut want: Vec<&str> = theirs.iter().map(|t| t.name.as_str()).collect();
    names.sort_unstable();
    want.sort_unstable();
    assert_eq!(names, want, "{name}: the dump's tensors");
    let mut worst = (0f32, String::new());
    for t in &theirs {
        let o = ours.iter().find(|o| o.name == t.name).unwrap();
        assert_eq!(o.shape, t.shape, "{name}: shape of `{}`", t.name);
        let scale = t
            .values
            .iter()
            .fold(0f32, |m, v| m.max(v.abs()))
            .max(f32::MIN_POSITIVE);
        let diff = o
            .values
            .iter()
            .zip(&t.values)
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        if diff / scale > worst.0 {
            worst = (diff / scale, t.name.clone());
        }
    }
    println!("{name} {precision}: worst `{}` rel {:e}", worst.1, worst.0);
    assert!(
        worst.0 < tol,
        "{name} {precision}: `{}` differs by {:e}",
        worst.1,
        worst.0
    );
}

#[test]
fn dump_step_gradients_match_transformers_in_fp32() {
    for name in ["llama-tiny", "llama3-tiny", "qwen2-tiny", "mistral-tiny"] {
        assert_dump_matches(name, "fp32", "reference.safetensors", GRAD_REL_TOL);
    }
}

#[test]
fn dump_step_gradients_match_the_independent_fp8_amax_reference() {
    for name in ["llama-tiny", "qwen2-tiny"] {
        assert_dump_matches(
            name,
            "fp8-amax",
            "reference_fp8_amax.safetensors",
            FP8_REL_TOL,
        );
    }
}

#[test]
fn twenty_adamw_steps_match_torch() {
    twenty_adamw_steps(false);
}

/// The same curve with each block recomputed in the backward (activation checkpointing).
#[test]
fn twenty_adamw_steps_with_activation_checkpointing_match_torch() {
    twenty_adamw_steps(true);
}

fn twenty_adamw_steps(activation_checkpointing: bool) {
    let dir = common::fixture_named("llama-tiny");
    let curve = read_json(&dir.join("adamw_curve.json"));
    assert_eq!(curve["fixture_version"].as_u64(), Some(FIXTURE_VERSION));
    let (b, t) = (
        curve["batch_size"].as_u64().unwrap() as usize,
        curve["seq_len"].as_u64().unwrap() as usize,
    );
    let stream: Vec<u32> = (curve["token_stream"].as_array().unwrap().iter())
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    let device = Default::default();
    let mut model = load_checkpoint::<Train>(&dir, &ModelOptions::default(), &device).unwrap();
    let mut optimizer = AdamW::<Cpu>::new(param_shapes(&model), &device);
    let mut loader = DataLoader::from_tokens(stream, b, t, WindowOrder::Sequential).unwrap();
    let hyper = AdamWStep {
        lr: curve["lr"].as_f64().unwrap() as f32,
        beta1: curve["betas"][0].as_f64().unwrap() as f32,
        beta2: curve["betas"][1].as_f64().unwrap() as f32,
        eps: curve["eps"].as_f64().unwrap() as f32,
        weight_decay: curve["weight_decay"].as_f64().unwrap() as f32,
    };
    let options = StepOptions {
        grad_accum: 1,
        stats: false,
        loss_factor: None,
        activation_checkpointing,
        seed: 0,
    };
    let max_norm = curve["max_norm"].as_f64().unwrap();
    let mut worst = 0f64;
    for step in curve["steps"].as_array().unwrap() {
        let shares = vec![Share::whole(loader.next_batch())];
        let out = gradients(&model, shares, &options, &device, None);
        let norm = out.global_norm();
        let (want_loss, want_norm) = (
            step["loss"].as_f64().unwrap(),
            step["grad_norm"].as_f64().unwrap(),
        );
        let rel = |a: f64, b: f64| ((a - b) / b).abs();
        let (loss_rel, norm_rel) = (rel(f64::from(out.loss), want_loss), rel(norm, want_norm));
        worst = worst.max(loss_rel).max(norm_rel);
        assert!(
            loss_rel < CURVE_REL_TOL && norm_rel < CURVE_REL_TOL,
            "step {}: loss {} vs {want_loss}, grad norm {norm} vs {want_norm}",
            step["step"],
            out.loss
        );
        let coefficients = optimizer.begin_step(hyper, clip_factor(norm, max_norm));
        model = apply_adamw(model, &mut optimizer, out.grads, &coefficients);
    }
    println!("20 AdamW steps: worst loss / grad norm rel {worst:e}");
}
