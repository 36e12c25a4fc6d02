//! Training jobs for the integration tests: a tiny byte-level GPT job on the shipped sonnets,
//! running `fp8-trainer train`, and reading its run directory.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::{json, Value};

/// Metrics columns that must be bit-identical between a resumed and an uninterrupted run
/// (everything except tokens_per_s and elapsed_s, which are timings).
pub const EXACT_COLUMNS: usize = 6;

/// A fresh, empty directory under the system temp dir, named by this process and `name`.
pub fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("fp8-trainer-train-{}-{name}", std::process::id()));
    super::claim(&dir);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The shipped sonnets (plain text, 95,650 bytes).
pub fn sonnets() -> String {
    super::repo_root()
        .join("datasets/data/shakespeare_milton/shakespeare_sonnets.txt")
        .to_string_lossy()
        .into_owned()
}

/// A tiny job writing into `dir/runs/<name>`.
pub fn tiny_job(dir: &Path, name: &str) -> Value {
    json!({
        "name": name,
        "out_dir": dir.join("runs"),
        "model": {"preset": "tiny", "init_seed": 7, "vocab_size": 257, "n_positions": 32,
                  "n_embd": 32, "n_layer": 2, "n_head": 2, "n_inner": 64},
        "tokenizer": "bytes",
        "data": {"train": sonnets(), "validation": {"fraction": 0.1}, "seq_len": 32,
                 "shuffle": true, "seed": 3, "cache_dir": dir.join("cache")},
        "precision": {"mode": "fp8-amax", "stats_every": 3},
        "optimizer": {"lr": 0.003},
        "schedule": {"warmup_steps": 2},
        "batch_size": 4, "steps": 12, "eval_every": 4, "eval_batches": 2,
        "checkpoint_every": 4, "keep_checkpoints": 2, "log_every": 1
    })
}

/// Trains `job` (a [`tiny_job`] named `name`) in fp32 for 3 steps of `batch` x `accum`
/// sequences; its `metrics.csv` rows.
pub fn train_fp32_steps(
    dir: &Path,
    name: &str,
    mut job: Value,
    batch: usize,
    accum: usize,
) -> Vec<Vec<String>> {
    job["precision"] = json!({"mode": "fp32"});
    job["batch_size"] = json!(batch);
    job["grad_accum"] = json!(accum);
    job["steps"] = json!(3);
    let path = write_config(dir, &format!("{name}.json"), &job);
    assert_ok(&train(&path, &[], &[]));
    metrics(&dir.join("runs").join(name))
}

/// `fp8-trainer ARGS`; its output.
pub fn fp8_trainer(args: &[&str]) -> Output {
    Command::new(super::trainer_bin())
        .args(args)
        .output()
        .unwrap()
}

/// `fp8-trainer logits` of `tokens` on `checkpoint` in `precision`, its JSON written to `out`:
/// one row of logits per position.
pub fn logits_rows(
    checkpoint: &Path,
    tokens: &[u32],
    precision: &str,
    out: &Path,
) -> Vec<Vec<f32>> {
    let list: Vec<String> = tokens.iter().map(u32::to_string).collect();
    let run = fp8_trainer(&[
        "logits",
        "--checkpoint",
        checkpoint.to_str().unwrap(),
        "--tokens",
        &list.join(","),
        "--out",
        out.to_str().unwrap(),
        "--precision",
        precision,
    ]);
    assert_ok(&run);
    read_json(out)["logits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| {
            row.as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap() as f32)
                .collect()
        })
        .collect()
}

/// log-softmax (in f64, over the whole vocabulary) of the fixture's logits at each position of
/// `tokens`, from `fp8-trainer logits` (its output file written in `dir`).
pub fn fixture_log_probs(dir: &Path, tokens: &[u32]) -> Vec<Vec<f64>> {
    let rows = logits_rows(
        &super::fixture_dir(),
        tokens,
        "fp32",
        &dir.join("logits.json"),
    );
    rows.iter()
        .map(|row| {
            let row: Vec<f64> = row.iter().map(|&v| f64::from(v)).collect();
            let max = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let log_sum = row.iter().map(|x| (x - max).exp()).sum::<f64>().ln() + max;
            row.iter().map(|x| x - log_sum).collect()
        })
        .collect()
}

/// Writes `config` to `dir/file`; returns its path.
pub fn write_config(dir: &Path, file: &str, config: &Value) -> PathBuf {
    let path = dir.join(file);
    std::fs::write(&path, serde_json::to_string_pretty(config).unwrap()).unwrap();
    path
}

/// `fp8-trainer dump-step` of the job `config` on the batch of `tokens` (a reference.json), into
/// `dir/step.safetensors`, which it returns (the run must succeed).
pub fn dump_step(config: &Path, tokens: &Path, dir: &Path) -> PathBuf {
    let out = dir.join("step.safetensors");
    let run = Command::new(super::trainer_bin())
        .args(["dump-step", "--config"])
        .arg(config)
        .arg("--out")
        .arg(&out)
        .arg("--tokens")
        .arg(tokens)
        .output()
        .unwrap();
    assert_ok(&run);
    out
}

/// `fp8-trainer train --config config EXTRA...` with `env` set; its output.
pub fn train(config: &Path, extra: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(super::trainer_bin())
        .arg("train")
        .arg("--config")
        .arg(config)
        .args(extra)
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

/// The standard error of a finished command.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// metrics.csv of `run` without its header, split into cells.
pub fn metrics(run: &Path) -> Vec<Vec<String>> {
    std::fs::read_to_string(run.join("metrics.csv"))
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| l.split(',').map(str::to_string).collect())
        .collect()
}

/// The columns of `rows` that are not timings.
pub fn exact(rows: &[Vec<String>]) -> Vec<Vec<String>> {
    rows.iter().map(|r| r[..EXACT_COLUMNS].to_vec()).collect()
}

/// Asserts that a command succeeded, showing its stderr otherwise.
pub fn assert_ok(o: &Output) {
    assert!(
        o.status.success(),
        "train failed ({:?}): {}",
        o.status,
        stderr(o)
    );
}

/// |a - b| / |b| of two numbers written in CSV cells.
pub fn rel(a: &str, b: &str) -> f64 {
    let (a, b): (f64, f64) = (a.parse().unwrap(), b.parse().unwrap());
    (a - b).abs() / b.abs().max(1e-12)
}

/// A tiny job of `steps` steps with a checkpoint every `every`.
pub fn short_job(dir: &Path, name: &str, steps: u64, every: u64) -> Value {
    let mut c = tiny_job(dir, name);
    c["steps"] = json!(steps);
    c["checkpoint_every"] = json!(every);
    c["eval_every"] = json!(every);
    c
}

/// A short fp32 job (exact on the CPU) with a checkpoint and an evaluation at every step, so
/// that any step can be resumed from or picked as the best.
pub fn job(dir: &Path, name: &str, steps: u64) -> Value {
    let mut job = tiny_job(dir, name);
    job["precision"] = json!({"mode": "fp32"});
    job["steps"] = json!(steps);
    job["eval_every"] = json!(1);
    job["checkpoint_every"] = json!(1);
    job["keep_checkpoints"] = json!(10);
    job
}

/// A tiny job in `fp8-delayed` with statistics at every step and a short history, so that
/// histories fill, slide and shape the biases within a few steps.
pub fn delayed_job(dir: &Path, name: &str, history: usize) -> Value {
    let mut job = tiny_job(dir, name);
    job["precision"] =
        json!({"mode": "fp8-delayed", "amax_history_len": history, "stats_every": 1});
    job
}

/// The uninterrupted reference run of a job (FP8-AMAX, shuffled data, evaluations).
pub fn reference_metrics(dir: &Path, config: &Value) -> Vec<Vec<String>> {
    let mut reference = config.clone();
    reference["name"] = json!("reference");
    let path = write_config(dir, "reference.json", &reference);
    assert_ok(&train(&path, &[], &[]));
    metrics(&dir.join("runs/reference"))
}

/// `eval` of `checkpoint` on two batches of the sonnets (bytes, 32 tokens) in `precision` on
/// `device`, run in `dir` (its token cache goes to `dir/runs/.token-cache`); the JSON it wrote.
pub fn eval_json(dir: &Path, checkpoint: &Path, precision: &str, device: &str) -> Value {
    let tag = format!("eval-{precision}-{device}");
    let (out, json) = eval_with(
        dir,
        &tag,
        checkpoint,
        &["--precision", precision, "--device", device],
    );
    assert_ok(&out);
    json.expect("eval wrote its JSON")
}

/// `eval` of `checkpoint` on two batches of the sonnets (bytes, 32 tokens) with `args`, run in
/// `dir`, writing `dir/TAG.json`: the process and the JSON it wrote (when it wrote one).
pub fn eval_with(
    dir: &Path,
    tag: &str,
    checkpoint: &Path,
    args: &[&str],
) -> (Output, Option<Value>) {
    let result = dir.join(format!("{tag}.json"));
    let out = Command::new(super::trainer_bin())
        .current_dir(dir)
        .args(["eval", "--checkpoint"])
        .arg(checkpoint)
        .args([
            "--data",
            &sonnets(),
            "--tokenizer",
            "bytes",
            "--seq-len",
            "32",
        ])
        .args(["--max-batches", "2", "--out"])
        .arg(&result)
        .args(args)
        .output()
        .unwrap();
    let json = std::fs::read_to_string(&result)
        .ok()
        .map(|text| serde_json::from_str(&text).unwrap());
    (out, json)
}

/// The text of a file the test expects (its path in the panic otherwise).
pub fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A JSON file the test expects.
pub fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

/// The trainer state (`trainer_state/state.json`) of a training checkpoint.
pub fn state(checkpoint: &Path) -> Value {
    read_json(&checkpoint.join("trainer_state/state.json"))
}

/// The bytes of a checkpoint's `model.safetensors`.
pub fn model_bytes(checkpoint: &Path) -> Vec<u8> {
    std::fs::read(checkpoint.join("model.safetensors")).unwrap()
}
