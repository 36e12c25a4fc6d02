//! FP8-stored base weights (`"precision": {"base_storage": "fp8"}`) train what the same LoRA job
//! trains from the f32 base, bit for bit: metrics (the validation loss comes from the logits),
//! `fp8_stats.csv` (the stored weights report the cast they are), adapter weights, AdamW moments
//! and amax histories. Covered: GPT-2 and a Llama under FP8-AMAX, `fp8-delayed` with gradient
//! accumulation and activation checkpointing, a layer filter (filtered layers stay f32), two
//! data-parallel peers. And the setting is refused where it means nothing (no `lora`, no FP8).
//!
//! In inference (`eval` and `generate` with `--base-storage fp8`), any checkpoint's projections
//! load as their FP8 cast, and the commands print what they print from the f32 weights: a
//! GPT-2, a Qwen2 and a Llama adapter folder, FP8-AMAX in both families and FP8-CSCALE; refused
//! where the forward would not make that cast.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::{json, Value};

use crate::common::jobs::{eval_with, exact, fp8_trainer, scratch, stderr, write_config};
use crate::common::process::{assert_exit, peak_rss_kib};
use crate::data_parallel::{job, run};

const LLAMA: fn() -> Value = || {
    json!({"preset": "llama-tiny", "init_seed": 7, "vocab_size": 257, "n_positions": 32,
        "n_embd": 32, "n_layer": 2, "n_head": 4, "n_inner": 48})
};

/// Runs `job` (a LoRA job) from the f32 base and from the FP8-stored base; compares what they
/// wrote.
fn both(tag: &str, job: impl Fn(&Path, &str) -> Value) {
    let dir = scratch(&format!("base-storage-{tag}"));
    let f32_base = run(&dir, &job(&dir, "f32"));
    let mut stored = job(&dir, "fp8");
    stored["precision"]["base_storage"] = json!("fp8");
    let stored = run(&dir, &stored);
    assert_eq!(exact(&stored), exact(&f32_base), "metrics");
    assert_ne!(
        f32_base[1][2],
        f32_base.last().unwrap()[2],
        "the job trained"
    );
    let log = std::fs::read_to_string(dir.join("runs/fp8/log.txt")).unwrap();
    assert!(
        log.contains("frozen projection weights as their FP8 cast"),
        "{log}"
    );
    let at = |run: &str, file: &str| dir.join(format!("runs/{run}/checkpoints/step-6/{file}"));
    for file in [
        "adapter_model.safetensors",
        "trainer_state/optimizer.safetensors",
        "trainer_state/fp8_amax_history.safetensors",
    ] {
        match (
            std::fs::read(at("f32", file)),
            std::fs::read(at("fp8", file)),
        ) {
            (Ok(a), Ok(b)) => assert!(a == b, "{tag}: {file} differs"),
            (Err(_), Err(_)) => {}
            (a, b) => panic!(
                "{tag}: {file} written by one run only ({} / {})",
                a.is_ok(),
                b.is_ok()
            ),
        }
    }
    let stats = |run: &str| std::fs::read_to_string(dir.join(format!("runs/{run}/fp8_stats.csv")));
    let want = stats("f32").unwrap();
    assert!(
        want.contains("weight"),
        "statistics of the weights were sampled"
    );
    assert_eq!(stats("fp8").unwrap(), want, "{tag}: fp8_stats.csv");
}

fn lora(dir: &Path, name: &str, mode: &str, peers: usize) -> Value {
    let mut job = job(dir, name, mode, peers);
    job["lora"] = json!({"r": 4, "lora_alpha": 8, "target_modules": "all-linear"});
    job
}

#[test]
fn fp8_stored_base_trains_what_the_f32_base_trains_gpt2() {
    both("gpt2", |dir, name| lora(dir, name, "fp8-amax", 1));
}

#[test]
fn fp8_stored_base_trains_what_the_f32_base_trains_llama() {
    both("llama", |dir, name| {
        let mut job = lora(dir, name, "fp8-amax", 1);
        job["model"] = LLAMA();
        job["precision"]["family"] = json!("ocp");
        job
    });
}

#[test]
fn fp8_stored_base_trains_what_the_f32_base_trains_delayed_checkpointed_filtered() {
    both("delayed", |dir, name| {
        let mut job = lora(dir, name, "fp8-delayed", 1);
        job["model"] = LLAMA();
        job["precision"]["amax_compute_algo"] = json!("most_recent");
        job["precision"]["amax_history_len"] = json!(4);
        // The MLPs stay f32 (no site, nothing stored): a mixed model.
        job["precision"]["layers"] = json!(["*", "!*.mlp.*"]);
        job["batch_size"] = json!(4);
        job["grad_accum"] = json!(2);
        job["activation_checkpointing"] = json!(true);
        job
    });
}

#[test]
fn fp8_stored_base_trains_what_the_f32_base_trains_two_peers() {
    both("peers", |dir, name| lora(dir, name, "fp8-amax", 2));
}

#[test]
fn fp8_base_storage_is_refused_without_lora_or_without_fp8() {
    let dir = scratch("base-storage-refused");
    let cases = [
        (
            "full",
            job(&dir, "full", "fp8-amax", 1),
            "no `lora` section",
        ),
        ("fp32", lora(&dir, "fp32", "fp32", 1), "\"fp32\" makes none"),
        ("bf16", lora(&dir, "bf16", "bf16", 1), "\"bf16\" makes none"),
    ];
    for (name, mut config, want) in cases {
        config["precision"]["base_storage"] = json!("fp8");
        let path = write_config(&dir, &format!("{name}.json"), &config);
        let out = fp8_trainer(&["train", "--config", path.to_str().unwrap()]);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{name}: {err}");
        for needle in [&format!("{name}.json"), "precision.base_storage", want] {
            assert!(err.contains(needle), "{name}: {needle}: {err}");
        }
        assert!(
            !dir.join("runs").join(name).exists(),
            "{name}: nothing written"
        );
    }
    let mut config = lora(&dir, "typo", "fp8-amax", 1);
    config["precision"]["base_storage"] = json!("e4m3");
    let path = write_config(&dir, "typo.json", &config);
    let out = fp8_trainer(&["train", "--config", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("base_storage"), "{}", stderr(&out));
}

/// From checkpoint files: each base weight is cast as it is read (`load_checkpoint_storing`).
#[test]
fn fp8_stored_base_trains_what_the_f32_base_trains_from_a_checkpoint() {
    both("checkpoint", |dir, name| {
        let mut job = lora(dir, name, "fp8-amax", 1);
        job["model"] = json!({"checkpoint": crate::common::fixture_named("qwen2-tiny")});
        job
    });
}

/// An adapter folder trained further: its base (the folder `base_model_name_or_path` names)
/// loads stored, then the adapter goes on it.
#[test]
fn fp8_stored_base_trains_what_the_f32_base_trains_from_an_adapter_folder() {
    both("adapter", |dir, name| {
        let mut job = lora(dir, name, "fp8-amax", 1);
        job["model"] = json!({"checkpoint": crate::common::fixture_named("llama-tiny-lora")});
        job["lora"] = json!({"r": 4, "lora_alpha": 6, "target_modules": "all-linear",
            "use_rslora": true});
        job
    });
}

/// `compare` of a LoRA job with an FP8-stored base: the FP8 run stores it, the fp32 run (which
/// refuses the setting on its own) holds the base in f32.
#[test]
fn compare_stores_the_base_for_the_fp8_runs_only() {
    let dir = scratch("base-storage-compare");
    let mut config = lora(&dir, "cmp", "fp8-amax", 1);
    config["precision"]["base_storage"] = json!("fp8");
    config["steps"] = json!(3);
    config["checkpoint_every"] = json!(0);
    let path = write_config(&dir, "cmp.json", &config);
    let out = fp8_trainer(&[
        "compare",
        "--config",
        path.to_str().unwrap(),
        "--precisions",
        "fp32,fp8-amax",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let log = |run: &str| std::fs::read_to_string(dir.join(format!("runs/{run}/log.txt"))).unwrap();
    assert!(log("cmp-fp8-amax").contains("frozen projection weights as their FP8 cast"));
    assert!(!log("cmp-fp32").contains("base storage"));
}

// Inference (`eval`, `generate` with `--base-storage fp8`): every weight is frozen, so any
// checkpoint's FP8 projections can load as their cast, and what the commands print must be
// what they print from the f32 weights.

/// What a command printed, both streams (its log lines go to one or the other).
fn printed(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(out))
}

/// The log line of `count` stored projection weights; absent from every f32 run.
fn assert_stored(what: &str, out: &Output, count: Option<usize>) {
    let text = printed(out);
    match count {
        Some(n) => assert!(
            text.contains(&format!(
                "base storage: {n} projection weights as their FP8 cast"
            )),
            "{what}: {n} stored weights in: {text}"
        ),
        None => assert!(
            !text.contains("base storage"),
            "{what}: nothing stored: {text}"
        ),
    }
}

/// `generate` of 24 sampled tokens (temperature 1, so that every logit bit matters to the
/// draws) after a fixed prompt, with `args`.
fn generate_with(checkpoint: &Path, args: &[&str]) -> Output {
    let checkpoint = checkpoint.to_str().unwrap();
    let fixed = [
        "generate",
        "--checkpoint",
        checkpoint,
        "--tokens",
        "3,41,5,92,6",
        "--max-new-tokens",
        "24",
        "--temperature",
        "1",
        "--top-k",
        "512",
        "--seed",
        "11",
        "--ignore-eos",
    ];
    fp8_trainer(&[&fixed[..], args].concat())
}

/// The checkpoints of the inference tests, with their FP8 projections' count: a GPT-2
/// (Conv1D, `[in, out]`), a Qwen2 (`nn.Linear`, biases on q/k/v) and a Llama adapter folder
/// (the base loads stored, the adapter's f32 factors go on it).
fn inference_checkpoints() -> [(&'static str, PathBuf, usize); 3] {
    let named = crate::common::fixture_named;
    [
        ("gpt2", named("gpt2-tiny"), 8),
        ("qwen2", named("qwen2-tiny"), 14),
        ("llama-adapter", named("llama-tiny-lora"), 14),
    ]
}

#[test]
fn eval_from_the_fp8_stored_base_gives_the_f32_weights_result() {
    let dir = scratch("base-storage-eval");
    for (name, checkpoint, count) in inference_checkpoints() {
        for recipe in ["fp8-amax", "fp8-amax-ocp", "fp8-cscale"] {
            let what = format!("{name} {recipe}");
            let precision = ["--precisions", recipe];
            let (f32_out, f32_json) = eval_with(&dir, "f32", &checkpoint, &precision);
            assert_eq!(
                f32_out.status.code(),
                Some(0),
                "{what}: {}",
                stderr(&f32_out)
            );
            assert_stored(&what, &f32_out, None);
            let stored = [&precision[..], &["--base-storage", "fp8"]].concat();
            let (out, json) = eval_with(&dir, "fp8", &checkpoint, &stored);
            assert_eq!(out.status.code(), Some(0), "{what}: {}", stderr(&out));
            assert_stored(&what, &out, Some(count));
            let (want, got) = (f32_json.unwrap(), json.unwrap());
            let loss = |v: &Value| v["recipes"][0]["loss"].as_f64();
            assert!(loss(&want).is_some_and(f64::is_finite), "{what}: {want}");
            assert_eq!(loss(&got), loss(&want), "{what}: the loss, bit for bit");
            assert_eq!(got, want, "{what}: the whole result");
        }
    }
}

#[test]
fn generate_from_the_fp8_stored_base_draws_the_f32_weights_tokens() {
    for (name, checkpoint, count) in inference_checkpoints() {
        for precision in ["fp8-amax", "fp8-cscale"] {
            let what = format!("{name} {precision}");
            let f32_out = generate_with(&checkpoint, &["--precision", precision]);
            assert_eq!(
                f32_out.status.code(),
                Some(0),
                "{what}: {}",
                stderr(&f32_out)
            );
            assert_stored(&what, &f32_out, None);
            let out = generate_with(
                &checkpoint,
                &["--precision", precision, "--base-storage", "fp8"],
            );
            assert_eq!(out.status.code(), Some(0), "{what}: {}", stderr(&out));
            assert_stored(&what, &out, Some(count));
            let tokens = String::from_utf8(out.stdout.clone()).unwrap();
            assert_eq!(tokens.trim().split(',').count(), 24, "{what}: {tokens}");
            assert_eq!(tokens, String::from_utf8(f32_out.stdout).unwrap(), "{what}");
        }
    }
}

/// The FP8 cast of a stored weight is what the forward casts only where it is the weight's own
/// (not fp32 or bf16, which cast nothing, nor `fp8-delayed`, whose bias comes from the
/// checkpoint's histories), and one table holds one recipe: refused naming the flag, exit 2.
#[test]
fn fp8_base_storage_in_inference_is_refused_where_it_is_not_the_forwards_cast() {
    let dir = scratch("base-storage-inference-refused");
    let gpt2 = crate::common::fixture_dir();
    for (precision, want) in [
        ("fp32", "fp32 makes none"),
        ("bf16", "bf16 makes none"),
        ("fp8-delayed", "amax history"),
    ] {
        let out = generate_with(&gpt2, &["--precision", precision, "--base-storage", "fp8"]);
        assert_exit(
            &format!("generate {precision}"),
            &out,
            2,
            &["--base-storage", want],
        );
        assert!(out.stdout.is_empty(), "generate {precision}: nothing drawn");
        let (out, json) = eval_with(
            &dir,
            precision,
            &gpt2,
            &["--precision", precision, "--base-storage", "fp8"],
        );
        assert_exit(
            &format!("eval {precision}"),
            &out,
            2,
            &["--base-storage", want],
        );
        assert!(json.is_none(), "eval {precision}: nothing written");
    }
    for (tag, args) in [
        ("two", &["--precisions", "fp32,fp8-amax"][..]),
        (
            "sweep",
            &["--precisions", "fp8-amax", "--cscale-biases", "0,4"][..],
        ),
    ] {
        let stored = [args, &["--base-storage", "fp8"]].concat();
        let (out, json) = eval_with(&dir, tag, &gpt2, &stored);
        assert_exit(
            &format!("eval {tag}"),
            &out,
            2,
            &["--base-storage", "one recipe"],
        );
        assert!(json.is_none(), "eval {tag}: nothing written");
    }
    let out = generate_with(
        &gpt2,
        &["--precision", "fp8-amax", "--base-storage", "e4m3"],
    );
    assert_exit("generate e4m3", &out, 2, &["--base-storage", "f32, fp8"]);
}

/// Width, blocks and MLP width of [`wide_gpt2`].
const WIDE: (usize, usize, usize) = (768, 8, 3072);

/// What a stored projection weight saves: 3 of its 4 bytes a parameter.
fn wide_projection_savings() -> i64 {
    let (c, layers, inner) = WIDE;
    let per_block = c * 3 * c + c * c + 2 * c * inner;
    (3 * layers * per_block) as i64
}

/// A GPT-2 checkpoint of [`WIDE`]'s shape (vocabulary 257, 64 positions; values from a fixed
/// xorshift sequence, scaled as an initialisation): 56.6M projection parameters, 226 MB in
/// f32, 57 MB as FP8 codes.
fn wide_gpt2(name: &str) -> PathBuf {
    let (c, layers, inner) = WIDE;
    let dir = crate::common::scratch_dir(name);
    let fixture = crate::common::fixture_dir();
    let mut config: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture.join("config.json")).unwrap())
            .unwrap();
    for (key, value) in [
        ("n_embd", c),
        ("n_layer", layers),
        ("n_head", 12),
        ("n_inner", inner),
        ("vocab_size", 257),
        ("n_positions", 64),
        ("bos_token_id", 256),
        ("eos_token_id", 256),
    ] {
        config[key] = json!(value);
    }
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let mut tensor = |name: String, shape: Vec<usize>, scale: f32| {
        let values = (0..shape.iter().product::<usize>())
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * scale
            })
            .collect();
        trainer::checkpoint::NamedTensor {
            name,
            shape,
            values,
        }
    };
    let mut tensors = vec![
        tensor("transformer.wte.weight".into(), vec![257, c], 0.04),
        tensor("transformer.wpe.weight".into(), vec![64, c], 0.02),
        tensor("transformer.ln_f.weight".into(), vec![c], 0.1),
        tensor("transformer.ln_f.bias".into(), vec![c], 0.1),
    ];
    for i in 0..layers {
        let p = format!("transformer.h.{i}");
        for (name, shape) in [
            ("ln_1.weight", vec![c]),
            ("ln_1.bias", vec![c]),
            ("attn.c_attn.weight", vec![c, 3 * c]),
            ("attn.c_attn.bias", vec![3 * c]),
            ("attn.c_proj.weight", vec![c, c]),
            ("attn.c_proj.bias", vec![c]),
            ("ln_2.weight", vec![c]),
            ("ln_2.bias", vec![c]),
            ("mlp.c_fc.weight", vec![c, inner]),
            ("mlp.c_fc.bias", vec![inner]),
            ("mlp.c_proj.weight", vec![inner, c]),
            ("mlp.c_proj.bias", vec![c]),
        ] {
            tensors.push(tensor(format!("{p}.{name}"), shape, 0.04));
        }
    }
    trainer::checkpoint::write_safetensors(&dir.join("model.safetensors"), &tensors).unwrap();
    dir
}

/// The least a stored base must save of [`wide_projection_savings`] in `generate`'s peak RSS:
/// half. The rest is slack for what the allocator keeps of freed blocks (mimalloc retains
/// memory) and for the one f32 weight alive while it is cast.
const LEAST_SAVED_FRACTION: f64 = 0.5;

/// `generate --base-storage fp8` holds the projections in a quarter of their f32 bytes: its peak
/// RSS is below the f32 weights' run by at least half of the 170 MB the codes save. And the
/// checkpoint's pages are released as its tensors are read (`WeightFiles::read_f32`): the
/// stored run peaks below the size of the file it read, where holding the file's pages would
/// put it above the file and the codes together.
#[test]
fn generate_from_the_fp8_stored_base_peaks_lower_by_the_projections_savings() {
    let checkpoint = wide_gpt2("base-storage-wide-gpt2");
    let peak = |storage: &str| {
        let out = Command::new(crate::common::trainer_bin())
            .env("FP8_TRAINER_REPORT_PEAK_RSS", "1")
            .args(["generate", "--checkpoint"])
            .arg(&checkpoint)
            .args([
                "--tokens",
                "1,2,3",
                "--max-new-tokens",
                "2",
                "--temperature",
                "0",
            ])
            .args(["--precision", "fp8-amax", "--base-storage", storage])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{storage}: {}", stderr(&out));
        let kib = peak_rss_kib(storage, &out);
        (out, kib * 1024)
    };
    let (f32_out, f32_peak) = peak("f32");
    let (out, fp8_peak) = peak("fp8");
    assert_stored("wide", &out, Some(4 * WIDE.1));
    assert_eq!(out.stdout, f32_out.stdout, "the same tokens");
    let saved = f32_peak - fp8_peak;
    println!(
        "peak RSS: f32 weights {} MB, stored {} MB, saved {} MB of {} MB",
        f32_peak >> 20,
        fp8_peak >> 20,
        saved >> 20,
        wide_projection_savings() >> 20
    );
    assert!(
        saved as f64 >= LEAST_SAVED_FRACTION * wide_projection_savings() as f64,
        "saved {saved} bytes of {}",
        wide_projection_savings()
    );
    let file = std::fs::metadata(checkpoint.join("model.safetensors"))
        .unwrap()
        .len() as i64;
    assert!(
        fp8_peak < file,
        "the stored run peaked at {fp8_peak} bytes, above the {file} of the file it read"
    );
}
