//! Bad input is refused, never crashed on: a job config with an unknown or mistyped key, a bad
//! value (also through `--set`), a checkpoint with shape overrides, a preset too large for the
//! machine, or a top-level value that is not an object; bad `--tokens` of `logits` and
//! `dump-step`; `eval --data` that is not there; data whose validation fraction leaves a split
//! empty. Each exits with code 2 and a message that names the file (the config file once) and
//! the field, flag or value; a failure that is not the user's input (a token cache that cannot be
//! written) exits 1. None panics or aborts. (Generated bad input for the same parsers:
//! parser_fuzz.rs; bad checkpoints: bad_checkpoints.rs; bad `generate` flags: generate.rs.)

use std::path::Path;
use std::process::{Command, Output};

use serde_json::{json, Value};

use crate::common;
use crate::common::fixture;
use crate::common::jobs::*;
use crate::common::process::{assert_exit, with_file_size_limit};

#[test]
fn config_errors_exit_2_naming_the_field() {
    let dir = scratch("config-errors");
    type Edit = Box<dyn Fn(&mut Value)>;
    let cases: [(&str, Edit, &[&str]); 3] = [
        (
            "unknown key",
            Box::new(|c| {
                c["optimizer"] = json!({"lrr": 0.1});
            }),
            &["optimizer.lrr", "did you mean `optimizer.lr`"],
        ),
        (
            "wrong type",
            Box::new(|c| c["batch_size"] = json!("eight")),
            &["batch_size", "invalid type"],
        ),
        (
            "missing data file",
            Box::new(|c| c["data"]["train"] = json!("/nonexistent/corpus.txt")),
            &["data", "/nonexistent/corpus.txt"],
        ),
    ];
    for (what, edit, needles) in cases {
        let mut config = tiny_job(&dir, "errors");
        edit(&mut config);
        let path = write_config(&dir, "job.json", &config);
        let out = train(&path, &[], &[]);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{what}: {err}");
        assert!(err.contains("job.json"), "{what}: the file is named: {err}");
        for needle in needles {
            assert!(err.contains(needle), "{what}: `{needle}` in: {err}");
        }
        assert!(!err.contains("panicked"), "{what}: no panic: {err}");
    }
    // --set goes through the same checks.
    let path = write_config(&dir, "job.json", &tiny_job(&dir, "errors"));
    let out = train(&path, &["--set", "schedule.kind=linear"], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("schedule.kind"), "{}", stderr(&out));
}

#[test]
fn bad_optimizer_and_precision_settings_exit_2_naming_the_field() {
    let dir = scratch("bad-settings");
    let path = write_config(&dir, "job.json", &short_job(&dir, "bad", 2, 2));
    for (set, field) in [
        ("optimizer.eps=0", "optimizer.eps"),
        ("optimizer.eps=-1e-8", "optimizer.eps"),
        ("optimizer.weight_decay=-0.1", "optimizer.weight_decay"),
        ("precision.layers=[]", "precision.layers"),
    ] {
        let out = train(&path, &["--set", set], &[]);
        assert_exit(set, &out, 2, &["job.json", field]);
    }
    assert!(!dir.join("runs/bad").exists());
}

#[test]
fn a_checkpoint_with_shape_overrides_is_refused() {
    let dir = scratch("checkpoint-overrides");
    let mut config = short_job(&dir, "ckpt", 2, 2);
    config["model"] = json!({"checkpoint": fixture(), "n_layer": 6, "n_embd": 64});
    let path = write_config(&dir, "job.json", &config);
    let out = train(&path, &[], &[]);
    assert_exit(
        "checkpoint + n_layer",
        &out,
        2,
        &["job.json", "model.n_layer", "model.n_embd"],
    );
}

#[test]
fn a_preset_of_1e12_embeddings_or_positions_exits_2() {
    let dir = scratch("huge-preset");
    let path = write_config(&dir, "job.json", &short_job(&dir, "huge", 2, 2));
    for field in ["model.vocab_size", "model.n_positions"] {
        let out = train(&path, &["--set", &format!("{field}=1000000000000")], &[]);
        assert_exit(field, &out, 2, &["job.json", field]);
        assert!(!dir.join("runs/huge").exists(), "{field}: nothing written");
    }
}

#[test]
fn a_job_config_that_is_an_array_says_so() {
    let dir = scratch("array-config");
    let path = dir.join("job.json");
    let job = short_job(&dir, "array", 2, 2);
    std::fs::write(&path, serde_json::to_string(&json!([job])).unwrap()).unwrap();
    let out = train(&path, &[], &[]);
    let err = stderr(&out);
    assert_exit("top-level array", &out, 2, &["job.json", "array", "object"]);
    assert!(!err.contains("`[0]`"), "{err}");
}

fn occurrences(haystack: &str, needle: &str) -> usize {
    haystack.matches(needle).count()
}

#[test]
fn a_config_error_names_the_config_file_once() {
    let dir = scratch("named-once");
    let path = write_config(&dir, "job.json", &short_job(&dir, "once", 2, 2));
    let out = train(&path, &["--set", "model.n_head=3"], &[]);
    let err = stderr(&out);
    assert_exit("n_head 3", &out, 2, &["model.n_head"]);
    assert_eq!(occurrences(&err, "job.json"), 1, "{err}");
}

#[test]
fn a_validation_fraction_leaving_a_split_empty_says_so() {
    let dir = scratch("fraction");
    let data = dir.join("two.txt");
    std::fs::write(&data, "ab").unwrap();
    let mut config = short_job(&dir, "fraction", 2, 2);
    config["data"]["train"] = json!(data);
    let path = write_config(&dir, "job.json", &config);
    let out = train(&path, &[], &[]);
    let err = stderr(&out);
    assert_exit(
        "fraction of 3 tokens",
        &out,
        2,
        &["two.txt", "validation", "0.1"],
    );
    assert!(!err.contains("one window needs"), "{err}");
}

#[test]
fn eval_data_errors_name_the_flag_not_a_config_field() {
    let dir = scratch("eval-data-errors");
    let missing = dir.join("missing.txt");
    let out = fp8_trainer(&[
        "eval",
        "--checkpoint",
        &fixture(),
        "--tokenizer",
        "bytes",
        "--data",
        missing.to_str().unwrap(),
    ]);
    let err = stderr(&out);
    assert_exit("eval --data missing", &out, 2, &["--data", "missing.txt"]);
    assert!(!err.contains("field `data`"), "{err}");
    assert_eq!(occurrences(&err, "missing.txt"), 1, "named once: {err}");
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

fn dump_step(config: &Path, tokens: &Path, out: &Path) -> Output {
    Command::new(common::trainer_bin())
        .args(["dump-step", "--config"])
        .arg(config)
        .arg("--tokens")
        .arg(tokens)
        .arg("--out")
        .arg(out)
        .output()
        .unwrap()
}

#[test]
fn dump_step_tokens_outside_the_vocabulary_missing_or_not_utf8_exit_2() {
    let dir = scratch("dump-tokens");
    let mut config = short_job(&dir, "dump", 1, 1);
    config["batch_size"] = json!(1);
    config["data"]["seq_len"] = json!(4);
    let path = write_config(&dir, "job.json", &config);
    let out = dir.join("step.safetensors");
    let outside = dir.join("outside.json");
    std::fs::write(&outside, "[1, 2, 300, 4, 5]").unwrap();
    let o = dump_step(&path, &outside, &out);
    assert_exit("token 300 of 257", &o, 2, &["outside.json", "300"]);
    let o = dump_step(&path, &dir.join("missing.json"), &out);
    assert_exit("missing --tokens file", &o, 2, &["missing.json"]);
    let latin1 = dir.join("latin1.json");
    std::fs::write(&latin1, b"[1, 2, 3, 4, 5] \xe9").unwrap();
    let o = dump_step(&path, &latin1, &out);
    assert_exit("non-UTF-8 --tokens file", &o, 2, &["latin1.json"]);
    assert!(!out.exists());
}

#[test]
fn a_token_cache_that_cannot_be_written_exits_1() {
    let dir = scratch("cache-unwritable");
    // /sys refuses new entries even to root (a read-only folder does not stop root).
    let mut config = short_job(&dir, "ro", 2, 2);
    config["data"]["cache_dir"] = json!("/sys/fp8-trainer-token-cache");
    let path = write_config(&dir, "ro.json", &config);
    let out = train(&path, &[], &[]);
    assert_exit("read-only cache dir", &out, 1, &["fp8-trainer-token-cache"]);

    // A full disk: the cache of the sonnets (about 190 KB) does not fit in 64 KB.
    let path = write_config(&dir, "full.json", &short_job(&dir, "full", 2, 2));
    let mut cmd = Command::new(common::trainer_bin());
    cmd.args(["train", "--config"]).arg(&path);
    let out = with_file_size_limit(&mut cmd, 64 * 1024).output().unwrap();
    assert_exit("disk full while caching", &out, 1, &["cache"]);
}

/// An `FP8_CPU_GEMM` that is not `bf16`, `f32` or `auto` is bad input, named before anything runs.
#[test]
fn an_unknown_fp8_cpu_gemm_exits_2_naming_it() {
    let out = common::scratch_dir("cli-bad-cpu-gemm").join("logits.json");
    let output = Command::new(common::trainer_bin())
        .env("FP8_CPU_GEMM", "fp16")
        .args(["logits", "--checkpoint", &fixture(), "--tokens", "1,2"])
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert_exit(
        "FP8_CPU_GEMM=fp16",
        &output,
        2,
        &["FP8_CPU_GEMM", "\"fp16\""],
    );
    assert!(!out.exists(), "nothing written");
}

/// Likewise an `FP8_GPU_GEMM` that is not `auto` or `f32`, in any build (the variable only
/// matters to builds with `fp8-mma`, but a misspelling should not wait for a GPU to show).
#[test]
fn an_unknown_fp8_gpu_gemm_exits_2_naming_it() {
    let out = common::scratch_dir("cli-bad-gpu-gemm").join("logits.json");
    let output = Command::new(common::trainer_bin())
        .env("FP8_GPU_GEMM", "fp8")
        .args(["logits", "--checkpoint", &fixture(), "--tokens", "1,2"])
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert_exit("FP8_GPU_GEMM=fp8", &output, 2, &["FP8_GPU_GEMM", "\"fp8\""]);
    assert!(!out.exists(), "nothing written");
}
