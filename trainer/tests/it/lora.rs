//! LoRA (the job's `lora` section, `trainer/src/model/lora.rs`) against PEFT: adapters that
//! PEFT saved load to PEFT's logits and take PEFT's gradients (`tests/fixtures/gen_lora.py`:
//! gpt2-tiny-lora, llama-tiny-lora); a LoRA job trains the adapters alone, writes PEFT adapter
//! folders, resumes exactly, and its adapters evaluate, generate and merge; bad settings and bad
//! adapter folders exit 2 naming the field or tensor.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::common::jobs::{
    assert_ok, dump_step, exact, fp8_trainer, logits_rows, metrics, read_json, scratch, sonnets,
    train, write_config,
};
use crate::common::{self, max_abs_diff, process::assert_exit, read_tensors};

/// Logits of base + adapter against PEFT's, max |ours - ref| / max |ref|: the same f32
/// operations (base GEMM, then A, B and the scaling, as PEFT's forward orders them) summed in
/// another order; the base checkpoints alone agree with `transformers` to about 1e-6 (parity
/// tests), so 1e-5 leaves ten times that.
const LOGITS_REL_TOL: f32 = 1e-5;
/// Loss: a mean of 128 f32 log-probabilities (as in parity::dump_step).
const LOSS_REL_TOL: f32 = 1e-5;
/// Each adapter gradient, max |ours - ref| / max |ref| (as the full-model gradients of
/// parity::dump_step, whose worst measured is 8e-7).
const GRAD_REL_TOL: f32 = 1e-4;

/// Two peers against one device with adapters (data_parallel's job, LoRA r 2 on every
/// projection): losses agree to 1e-6 at every step, but AdamW's normalised update of the small
/// adapter gradients turns f32 rounding into whole-step differences, and the gradient norm of
/// step 6 drifts to 1.3e-5 (measured; the full-model job's stays below 5e-7). What the bound
/// guards against is far larger: a peer's update left out moves the step-2 loss by 7e-3
/// (data_parallel's measurement).
const LORA_PEER_TOLERANCE: f64 = 1e-4;

/// The LoRA settings `gen_lora.py` gave each fixture adapter (as a job's `lora` section).
fn fixture_lora(base: &str) -> Value {
    match base {
        "gpt2-tiny" => json!({"r": 4, "lora_alpha": 8, "target_modules": ["c_attn", "c_proj"]}),
        "llama-tiny" => {
            json!({"r": 4, "lora_alpha": 6, "target_modules": "all-linear", "use_rslora": true})
        }
        other => panic!("no adapter fixture for {other}"),
    }
}

/// The fixture batch's tokens (reference.json).
fn fixture_tokens(adapter: &Path) -> Vec<u32> {
    read_json(&adapter.join("reference.json"))["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_u64().unwrap() as u32)
        .collect()
}

/// max |a - b| / max |b|.
fn rel(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    max_abs_diff(a, b) / b.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-30)
}

#[test]
fn peft_adapters_load_to_peft_logits() {
    for base in ["gpt2-tiny", "llama-tiny"] {
        let dir = scratch(&format!("lora-logits-{base}"));
        let adapter = common::fixture_named(&format!("{base}-lora"));
        let reference = read_tensors(&adapter.join("reference.safetensors"));
        let logits = &reference.iter().find(|t| t.name == "logits").unwrap();
        let (seq, vocab) = (logits.shape[1], logits.shape[2]);
        // The first row of the fixture batch.
        let tokens = &fixture_tokens(&adapter)[..seq];
        let ours: Vec<f32> = logits_rows(&adapter, tokens, "fp32", &dir.join("a.json")).concat();
        let expected = &logits.values[..seq * vocab];
        let r = rel(&ours, expected);
        eprintln!("{base}: adapter logits rel {r:.3e}");
        assert!(r <= LOGITS_REL_TOL, "{base}: logits rel {r:e}");
        // The adapter is applied: the base alone is far from these logits.
        let base_logits: Vec<f32> = logits_rows(
            &common::fixture_named(base),
            tokens,
            "fp32",
            &dir.join("b.json"),
        )
        .concat();
        assert!(
            rel(&base_logits, expected) > 1e-3,
            "{base}: the adapter changes the logits"
        );
    }
}

/// `dump-step` of a job that trains the fixture adapter further, on the fixture batch.
fn dump_adapter_step(base: &str, precision: &str, dir: &Path) -> PathBuf {
    let adapter = common::fixture_named(&format!("{base}-lora"));
    std::fs::create_dir_all(dir).unwrap();
    let config = json!({
        "name": "dump", "out_dir": dir.join("runs"),
        "model": {"checkpoint": adapter},
        "lora": fixture_lora(base),
        "tokenizer": "bytes",
        "data": {"train": sonnets(), "seq_len": 64, "cache_dir": dir.join("cache")},
        "precision": {"mode": precision},
        "batch_size": 2, "steps": 1
    });
    let path = write_config(dir, "job.json", &config);
    dump_step(&path, &adapter.join("reference.json"), dir)
}

#[test]
fn adapter_gradients_equal_peft_with_the_base_frozen() {
    for base in ["gpt2-tiny", "llama-tiny"] {
        let dir = scratch(&format!("lora-grads-{base}"));
        let ours = read_tensors(&dump_adapter_step(base, "fp32", &dir));
        let reference = read_tensors(&common::fixture_named(&format!(
            "{base}-lora/reference.safetensors"
        )));
        // Exactly the reference's tensors: loss, logits and one gradient per adapter factor
        // (none for the frozen base).
        let names = peft_names(&ours);
        let mut sorted = names.clone();
        let mut expected: Vec<String> = reference.iter().map(|t| t.name.clone()).collect();
        sorted.sort();
        expected.sort();
        assert_eq!(sorted, expected, "{base}: the dumped tensors");
        let mut worst = 0.0f32;
        for (t, name) in ours.iter().zip(names) {
            let r = reference.iter().find(|x| x.name == name).unwrap();
            assert_eq!(t.shape, r.shape, "{base}: {name}");
            let d = rel(&t.values, &r.values);
            let tol = match name.as_str() {
                "loss" => LOSS_REL_TOL,
                "logits" => LOGITS_REL_TOL,
                _ => GRAD_REL_TOL,
            };
            assert!(d <= tol, "{base}: {name} rel {d:e}");
            worst = worst.max(d);
        }
        eprintln!("{base}: worst adapter tensor rel {worst:.3e}");
    }
}

/// PEFT's names of the dumped tensors (ours: `{module}.lora_a.weight`), in the dump's order.
fn peft_names(ours: &[trainer::checkpoint::NamedTensor]) -> Vec<String> {
    ours.iter()
        .map(|t| match t.name.as_str() {
            "loss" | "logits" => t.name.clone(),
            name => {
                assert!(
                    name.contains(".lora_a.") || name.contains(".lora_b."),
                    "{name}"
                );
                format!(
                    "base_model.model.{}",
                    name.replace(".lora_a.", ".lora_A.")
                        .replace(".lora_b.", ".lora_B.")
                )
            }
        })
        .collect()
}

#[test]
fn fp8_adapter_steps_differ_from_fp32_only_in_the_base_casts() {
    // Under FP8-AMAX the base projections compute on FP8 operands, the adapters in f32: the
    // step runs, and its adapter gradients move from the fp32 ones by the casts' error
    // (visibly, but far less than the gradients' own size).
    let dir = scratch("lora-grads-fp8");
    let fp32 = read_tensors(&dump_adapter_step("llama-tiny", "fp32", &dir.join("a")));
    let fp8 = read_tensors(&dump_adapter_step("llama-tiny", "fp8-amax", &dir.join("b")));
    for (a, b) in fp32.iter().zip(&fp8) {
        assert_eq!(a.name, b.name);
        if a.name == "loss" {
            continue;
        }
        let d = rel(&b.values, &a.values);
        assert!(d > 0.0 && d < 0.5, "{}: fp8 vs fp32 rel {d}", a.name);
    }
}

/// A LoRA job on the GPT-2 fixture: every projection adapted (r 2), FP8-AMAX base.
fn lora_job(dir: &Path, name: &str, steps: u64) -> Value {
    json!({
        "name": name,
        "out_dir": dir.join("runs"),
        "model": {"checkpoint": common::fixture_dir()},
        "lora": {"r": 2, "lora_alpha": 4, "lora_dropout": 0.1, "target_modules": "all-linear"},
        "tokenizer": "bytes",
        "data": {"train": sonnets(), "validation": {"fraction": 0.1}, "seq_len": 32,
                 "shuffle": true, "seed": 3, "cache_dir": dir.join("cache")},
        "precision": {"mode": "fp8-amax"},
        "optimizer": {"lr": 0.01},
        "schedule": {"warmup_steps": 1},
        "batch_size": 4, "steps": steps, "eval_every": 2, "eval_batches": 2,
        "checkpoint_every": 2, "keep_checkpoints": 2, "log_every": 1
    })
}

#[test]
fn a_lora_job_trains_the_adapters_alone_writes_peft_folders_and_resumes_exactly() {
    let dir = scratch("lora-job");
    let path = write_config(&dir, "job.json", &lora_job(&dir, "l", 4));
    assert_ok(&train(&path, &[], &[]));
    let run = dir.join("runs/l");
    let step4 = run.join("checkpoints/step-4");

    // A PEFT adapter folder: its config, the factors by PEFT's names, the tokenizer; no base.
    for file in [
        "adapter_config.json",
        "adapter_model.safetensors",
        "tokenizer.json",
    ] {
        assert!(step4.join(file).is_file(), "{file}");
    }
    for file in ["config.json", "model.safetensors"] {
        assert!(!step4.join(file).exists(), "{file} is not written");
    }
    let config = read_json(&step4.join("adapter_config.json"));
    assert_eq!(config["peft_type"], "LORA");
    assert_eq!(config["r"], 2);
    assert_eq!(config["lora_alpha"], 4.0);
    assert_eq!(config["target_modules"], "all-linear");
    assert_eq!(config["fan_in_fan_out"], true, "GPT-2's Conv1D");
    let base = PathBuf::from(config["base_model_name_or_path"].as_str().unwrap());
    assert!(
        base.is_absolute() && base.join("config.json").is_file(),
        "{base:?}"
    );
    let factors = read_tensors(&step4.join("adapter_model.safetensors"));
    assert_eq!(
        factors.len(),
        2 * 4 * 2,
        "2 layers x 4 projections x (A, B)"
    );
    for t in &factors {
        let name = &t.name;
        assert!(
            name.starts_with("base_model.model.transformer.h."),
            "{name}"
        );
        // The fixture: width 64, MLP 192.
        let (d_in, d_out) = match name.split('.').nth(6).unwrap() {
            "c_attn" => (64, 192),
            "c_fc" => (64, 192),
            "c_proj" if name.contains(".mlp.") => (192, 64),
            _ => (64, 64),
        };
        let shape = if name.ends_with("lora_A.weight") {
            vec![2, d_in]
        } else {
            vec![d_out, 2]
        };
        assert_eq!(t.shape, shape, "{name}");
        assert!(
            t.values.iter().any(|v| *v != 0.0),
            "{name} trained (B starts at zero)"
        );
    }
    // AdamW moments for the factors alone.
    let moments = read_tensors(&step4.join("trainer_state/optimizer.safetensors"));
    assert_eq!(moments.len(), 2 * factors.len());
    assert!(
        moments.iter().all(|m| m.name.contains(".lora_")),
        "moments of the base"
    );
    let rows = metrics(&run);
    let val: Vec<f64> = rows
        .iter()
        .filter(|r| !r[3].is_empty())
        .map(|r| r[3].parse().unwrap())
        .collect();
    assert!(
        val.len() >= 2 && val[val.len() - 1] < val[0],
        "training lowers the loss: {val:?}"
    );

    // Resumed from step 2: the same adapters and metrics.
    let uninterrupted = (
        std::fs::read(step4.join("adapter_model.safetensors")).unwrap(),
        exact(&rows),
    );
    let step2 = run.join("checkpoints/step-2");
    assert_ok(&train(
        &path,
        &["--resume", step2.to_str().unwrap(), "--overwrite"],
        &[],
    ));
    assert_eq!(
        std::fs::read(step4.join("adapter_model.safetensors")).unwrap(),
        uninterrupted.0,
        "resumed adapters"
    );
    assert_eq!(exact(&metrics(&run)), uninterrupted.1, "resumed metrics");

    // Resuming with other LoRA settings, or without them, is refused.
    let mut other = lora_job(&dir, "l", 4);
    other["lora"]["r"] = json!(3);
    let other = write_config(&dir, "other.json", &other);
    let out = train(
        &other,
        &["--resume", step2.to_str().unwrap(), "--overwrite"],
        &[],
    );
    assert_exit("resume with another r", &out, 2, &["lora.r"]);
    let mut full = lora_job(&dir, "l", 4);
    full.as_object_mut().unwrap().remove("lora");
    let full = write_config(&dir, "full.json", &full);
    let out = train(
        &full,
        &["--resume", step2.to_str().unwrap(), "--overwrite"],
        &[],
    );
    assert_exit("resume without lora", &out, 2, &["lora", "LoRA adapter"]);

    // The adapter folder evaluates, generates and merges; the merged checkpoint has the
    // adapter's logits, and every tensor the adapters do not touch is the base's, bit for bit.
    let eval = fp8_trainer(&[
        "eval",
        "--checkpoint",
        step4.to_str().unwrap(),
        "--config",
        path.to_str().unwrap(),
        "--max-batches",
        "2",
    ]);
    assert_ok(&eval);
    let generate = fp8_trainer(&[
        "generate",
        "--checkpoint",
        step4.to_str().unwrap(),
        "--prompt",
        "Shall I",
        "--max-new-tokens",
        "4",
        "--temperature",
        "0",
    ]);
    assert_ok(&generate);
    let merged = dir.join("merged");
    let out = fp8_trainer(&[
        "merge",
        "--adapter",
        step4.to_str().unwrap(),
        "--out",
        merged.to_str().unwrap(),
    ]);
    assert_ok(&out);
    assert!(merged.join("tokenizer.json").is_file());
    let tokens: Vec<u32> = "Shall I compare thee".bytes().map(u32::from).collect();
    let adapted = logits_rows(&step4, &tokens, "fp32", &dir.join("a.json")).concat();
    let whole = logits_rows(&merged, &tokens, "fp32", &dir.join("m.json")).concat();
    let r = rel(&whole, &adapted);
    assert!(r <= LOGITS_REL_TOL, "merged logits rel {r:e}");
    let base_tensors = read_tensors(&common::fixture_dir().join("model.safetensors"));
    let merged_tensors = read_tensors(&merged.join("model.safetensors"));
    for t in &merged_tensors {
        let b = base_tensors.iter().find(|b| b.name == t.name).unwrap();
        let projection = t.name.ends_with(".weight")
            && ["c_attn", "c_proj", "c_fc"]
                .iter()
                .any(|p| t.name.contains(p));
        assert_eq!(t.values == b.values, !projection, "{}: merged", t.name);
    }
    // A second merge into the same folder needs --overwrite.
    let again = fp8_trainer(&[
        "merge",
        "--adapter",
        step4.to_str().unwrap(),
        "--out",
        merged.to_str().unwrap(),
    ]);
    assert_exit(
        "merge onto an existing folder",
        &again,
        2,
        &["--out", "--overwrite"],
    );

    // An adapter folder as PEFT saves it has no tokenizer files: the base's are used (here the
    // merged folder serves as a base that has them).
    let bare = dir.join("bare");
    std::fs::create_dir_all(&bare).unwrap();
    let mut config = read_json(&step4.join("adapter_config.json"));
    config["base_model_name_or_path"] = json!(merged);
    std::fs::write(bare.join("adapter_config.json"), config.to_string()).unwrap();
    std::fs::copy(
        step4.join("adapter_model.safetensors"),
        bare.join("adapter_model.safetensors"),
    )
    .unwrap();
    let generate = fp8_trainer(&[
        "generate",
        "--checkpoint",
        bare.to_str().unwrap(),
        "--prompt",
        "Shall I",
        "--max-new-tokens",
        "2",
    ]);
    assert_ok(&generate);
}

#[test]
fn bad_lora_settings_exit_2_naming_the_field() {
    let dir = scratch("lora-bad-settings");
    let cases: [(&str, Value, &[&str]); 5] = [
        ("r0", json!({"r": 0}), &["lora.r", "at least 1"]),
        (
            "dropout",
            json!({"r": 2, "lora_dropout": 1.0}),
            &["lora.lora_dropout"],
        ),
        (
            "no-such-module",
            json!({"r": 2, "target_modules": ["c_attn", "q_proj"]}),
            &["lora.target_modules", "`q_proj`", "h.0.attn.c_attn"],
        ),
        (
            "regex",
            json!({"r": 2, "target_modules": ".*attn.*"}),
            &["lora.target_modules", "all-linear"],
        ),
        (
            "typo",
            json!({"r": 2, "lora_alpah": 4}),
            &["lora.lora_alpah", "lora_alpha"],
        ),
    ];
    for (name, lora, needles) in cases {
        let mut job = lora_job(&dir, name, 2);
        job["lora"] = lora;
        let path = write_config(&dir, &format!("{name}.json"), &job);
        let out = train(&path, &[], &[]);
        assert_exit(name, &out, 2, needles);
        assert!(
            !dir.join("runs").join(name).join("checkpoints").exists(),
            "{name}"
        );
    }

    // An adapter folder as model.checkpoint: trained further only with its own settings.
    let adapter = common::fixture_named("gpt2-tiny-lora");
    let mut job = lora_job(&dir, "adapter-without-lora", 2);
    job["model"]["checkpoint"] = json!(adapter);
    job.as_object_mut().unwrap().remove("lora");
    let out = train(&write_config(&dir, "a.json", &job), &[], &[]);
    assert_exit(
        "adapter without lora",
        &out,
        2,
        &["model.checkpoint", "merge"],
    );
    job["lora"] = fixture_lora("gpt2-tiny");
    job["lora"]["lora_alpha"] = json!(16);
    let out = train(&write_config(&dir, "b.json", &job), &[], &[]);
    assert_exit("adapter with another alpha", &out, 2, &["lora.lora_alpha"]);
    job["lora"] = fixture_lora("gpt2-tiny");
    job["lora"]["target_modules"] = json!(["c_attn"]);
    let out = train(&write_config(&dir, "c.json", &job), &[], &[]);
    assert_exit(
        "adapter with other targets",
        &out,
        2,
        &["lora.target_modules"],
    );
}

/// A copy of the GPT-2 fixture adapter in `dir/name` whose config went through `edit` and
/// whose factors went through `tensors`.
fn edited_adapter(
    dir: &Path,
    name: &str,
    edit: impl FnOnce(&mut Value),
    tensors: impl FnOnce(&mut Vec<trainer::checkpoint::NamedTensor>),
) -> PathBuf {
    let from = common::fixture_named("gpt2-tiny-lora");
    let to = dir.join(name);
    std::fs::create_dir_all(&to).unwrap();
    let mut config = read_json(&from.join("adapter_config.json"));
    config["base_model_name_or_path"] = json!(common::fixture_dir());
    edit(&mut config);
    std::fs::write(to.join("adapter_config.json"), config.to_string()).unwrap();
    let mut factors = read_tensors(&from.join("adapter_model.safetensors"));
    tensors(&mut factors);
    trainer::checkpoint::write_safetensors(&to.join("adapter_model.safetensors"), &factors)
        .unwrap();
    to
}

#[test]
fn bad_adapter_folders_exit_2_naming_the_key_or_tensor() {
    let dir = scratch("lora-bad-adapters");
    let keep = |_: &mut Vec<trainer::checkpoint::NamedTensor>| {};
    let first = "base_model.model.transformer.h.0.attn.c_attn.lora_A.weight";
    let cases: Vec<(&str, PathBuf, Vec<&str>)> = vec![
        (
            "dora",
            edited_adapter(&dir, "dora", |c| c["use_dora"] = json!(true), keep),
            vec!["adapter_config.json", "`use_dora`"],
        ),
        (
            "prompt tuning",
            edited_adapter(
                &dir,
                "prompt",
                |c| c["peft_type"] = json!("PROMPT_TUNING"),
                keep,
            ),
            vec!["`peft_type`", "LORA"],
        ),
        (
            "no base",
            edited_adapter(
                &dir,
                "nobase",
                |c| c["base_model_name_or_path"] = json!("models/not-here"),
                keep,
            ),
            vec!["base_model_name_or_path", "models/not-here"],
        ),
        (
            "missing factor",
            edited_adapter(&dir, "missing", |_| {}, |t| t.retain(|t| t.name != first)),
            vec!["adapter_model.safetensors", first, "missing"],
        ),
        (
            "foreign tensor",
            edited_adapter(
                &dir,
                "foreign",
                |_| {},
                |t| {
                    t.push(trainer::checkpoint::NamedTensor {
                        name: "base_model.model.transformer.wte.weight".into(),
                        shape: vec![1],
                        values: vec![0.0],
                    })
                },
            ),
            vec!["transformer.wte.weight", "not a LoRA factor"],
        ),
        (
            "wrong rank",
            edited_adapter(&dir, "rank", |c| c["r"] = json!(3), keep),
            vec![first, "shape"],
        ),
        (
            "nan",
            edited_adapter(&dir, "nan", |_| {}, |t| t[0].values[1] = f32::NAN),
            vec!["non-finite"],
        ),
    ];
    for (what, adapter, needles) in cases {
        let out = fp8_trainer(&[
            "logits",
            "--checkpoint",
            adapter.to_str().unwrap(),
            "--tokens",
            "1,2,3",
            "--out",
            dir.join("l.json").to_str().unwrap(),
        ]);
        assert_exit(what, &out, 2, &needles);
    }
}

#[test]
fn two_peers_train_the_adapters_one_device_trains() {
    use crate::data_parallel as dp;
    let dir = scratch("lora-dp");
    let with_lora = |mut job: Value| {
        job["lora"] = json!({"r": 2, "lora_alpha": 4, "target_modules": "all-linear"});
        job
    };
    let one = dp::run(&dir, &with_lora(dp::job(&dir, "one", "fp8-amax", 1)));
    let two = dp::run(&dir, &with_lora(dp::job(&dir, "two", "fp8-amax", 2)));
    dp::assert_same_training_to(&two, &one, LORA_PEER_TOLERANCE);
    let adapters = |name: &str| {
        read_tensors(&dir.join(format!(
            "runs/{name}/checkpoints/step-6/adapter_model.safetensors"
        )))
    };
    let (a, b) = (adapters("two"), adapters("one"));
    assert_eq!(a.len(), 16);
    let mut worst = 0.0f32;
    for (a, b) in a.iter().zip(&b) {
        assert_eq!(a.name, b.name);
        worst = worst.max(max_abs_diff(&a.values, &b.values));
    }
    assert!(worst < dp::WEIGHT_TOLERANCE, "adapters differ by {worst}");
}

#[test]
fn compare_sweeps_lora_jobs_and_reuses_their_runs() {
    let dir = scratch("lora-compare");
    let path = write_config(&dir, "job.json", &lora_job(&dir, "c", 2));
    let sweep = || {
        fp8_trainer(&[
            "compare",
            "--config",
            path.to_str().unwrap(),
            "--precisions",
            "fp32,fp8-amax",
        ])
    };
    assert_ok(&sweep());
    let report = std::fs::read_to_string(dir.join("runs/c-compare/report.md")).unwrap();
    assert!(report.contains("| fp8-amax |"), "{report}");
    for recipe in ["fp32", "fp8-amax"] {
        let step2 = dir.join(format!("runs/c-{recipe}/checkpoints/step-2"));
        assert!(
            step2.join("adapter_model.safetensors").is_file(),
            "{recipe}"
        );
    }
    let again = sweep();
    assert_ok(&again);
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&again.stdout),
        String::from_utf8_lossy(&again.stderr)
    );
    assert!(said.contains("reused, not trained again"), "{said}");
}
