//! Reliability, round two (issue 28): the cases an outside red team found on 77546ca, each
//! driven through the binary as they found it. A tampered checkpoint claiming a billion layers
//! exits 2 at once in little memory; counts that cannot fit exit 2 naming the field; FIFOs and
//! devices where a file is read are refused without blocking; `--resume` checks the state it
//! loads; a first signal while the data is prepared stops the job at once; a checkpoint write
//! that fails leaves no half-written folder; and the small bad inputs of the list exit 2 (or
//! warn) naming what is wrong. (Template fuel, FIFO templates and chat settings on other data:
//! datasets/tests/it/chat.rs; the second Ctrl-C's message: signals.rs.)

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use serde_json::json;

use crate::common;
use crate::common::jobs::*;
use crate::common::process::{assert_exit, child_stderr, peak_rss_kib, signal, wait_at_most};

/// Longer than anything here takes when it works (each case is well under a second of work);
/// only a command that blocks or runs unbounded reaches it.
const HANG: Duration = Duration::from_secs(60);

/// The issue's bound on a refused checkpoint: the binary's own start-up is ~20 MB.
const REFUSAL_RSS_KB: i64 = 100 * 1024;

/// Address space a child may map: a regression that allocates what a tampered file claims
/// aborts at this size instead of taking the machine down.
const CHILD_ADDRESS_SPACE: u64 = 8 << 30;

/// `fp8-trainer` with its address space capped at [`CHILD_ADDRESS_SPACE`] (`sh`'s `ulimit -v`,
/// then `exec`), to be given its arguments and run by [`run_measured`].
fn limited() -> Command {
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(format!(
            "ulimit -v {} && exec \"$0\" \"$@\"",
            CHILD_ADDRESS_SPACE / 1024
        ))
        .arg(common::trainer_bin());
    cmd
}

/// Runs `cmd` (from [`limited`]); its output and its peak resident memory in KiB, as the
/// trainer reports it (`FP8_TRAINER_REPORT_PEAK_RSS`: its own `VmHWM`; `wait4`'s `ru_maxrss`
/// would count the image of this test process that the child was started from).
fn run_measured(cmd: &mut Command) -> (Output, i64) {
    let out = cmd
        .env("FP8_TRAINER_REPORT_PEAK_RSS", "1")
        .output()
        .unwrap();
    let kib = peak_rss_kib("the trainer", &out);
    (out, kib)
}

/// A job fine-tuning the checkpoint `checkpoint` on the sonnets with the bytes tokenizer.
fn checkpoint_job(dir: &Path, name: &str, checkpoint: &Path) -> serde_json::Value {
    let mut job = tiny_job(dir, name);
    job["model"] = json!({"checkpoint": checkpoint});
    job
}

#[test]
fn a_checkpoint_claiming_a_billion_layers_exits_2_at_once_in_little_memory() {
    let dir = scratch("billion-layers");
    let checkpoint = common::fixture_with_config("billion-layers-ckpt", |c| {
        c["n_layer"] = json!(1_000_000_000u64);
    });
    let config = checkpoint.join("config.json");
    let mut generate = limited();
    generate.args(GENERATE_ONE_TOKEN).arg(&checkpoint);
    let job = write_config(&dir, "job.json", &checkpoint_job(&dir, "big", &checkpoint));
    let mut train = limited();
    train.args(["train", "--config"]).arg(&job);
    for (what, cmd) in [("generate", &mut generate), ("train", &mut train)] {
        let (out, rss_kb) = run_measured(cmd);
        println!("{what}: peak RSS {rss_kb} KiB");
        let config = config.display().to_string();
        assert_exit(
            what,
            &out,
            2,
            &[&config, "field `n_layer`", "more than this machine"],
        );
        assert!(rss_kb < REFUSAL_RSS_KB, "{what}: peak RSS {rss_kb} KiB");
    }
    assert!(!dir.join("runs/big").exists(), "nothing written");
}

#[test]
fn counts_that_cannot_fit_in_memory_exit_2_naming_the_field() {
    let dir = scratch("huge-counts");
    for (field, value) in [
        ("grad_accum", json!(1_000_000_000_000u64)),
        ("batch_size", json!(1_000_000_000u64)),
    ] {
        let mut job = tiny_job(&dir, field);
        job[field] = value;
        let path = write_config(&dir, &format!("{field}.json"), &job);
        let (out, _) = run_measured(limited().args(["train", "--config"]).arg(&path));
        assert_exit(field, &out, 2, &[&format!("field `{field}`"), "memory"]);
    }
    // Within the machine, but one micro-batch's logits would not be: named as well.
    let mut job = tiny_job(&dir, "logits");
    job["batch_size"] = json!(20_000_000u64);
    job["data"]["seq_len"] = json!(32);
    let path = write_config(&dir, "logits.json", &job);
    let (out, _) = run_measured(limited().args(["train", "--config"]).arg(&path));
    assert_exit("logits", &out, 2, &["field `batch_size`", "logits"]);
}

/// `generate` of one token after `1,2`, on the checkpoint that follows.
const GENERATE_ONE_TOKEN: [&str; 6] = [
    "generate",
    "--max-new-tokens",
    "1",
    "--tokens",
    "1,2",
    "--checkpoint",
];

/// `generate` on `checkpoint`, stopped after [`HANG`]; its exit code and stderr.
fn generate_on(checkpoint: &Path) -> (Option<i32>, String) {
    let mut child = Command::new(common::trainer_bin())
        .args(GENERATE_ONE_TOKEN)
        .arg(checkpoint)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let waited = wait_at_most(&mut child, HANG);
    let err = child_stderr(&mut child);
    let (status, _) = waited.unwrap_or_else(|| panic!("generate blocked: {err}"));
    (status.code(), err)
}

fn mkfifo(path: &Path) {
    let _ = std::fs::remove_file(path);
    let made = Command::new("mkfifo").arg(path).status().unwrap();
    assert!(made.success(), "mkfifo {}", path.display());
}

#[test]
fn fifos_and_devices_where_files_are_read_exit_2_without_blocking() {
    // A checkpoint's config.json that is a FIFO (no writer: opening it would wait forever) or
    // a link to /dev/urandom (reading it would never end).
    let fifo = common::fixture_with_config("config-fifo", |_| {});
    mkfifo(&fifo.join("config.json"));
    let device = common::fixture_with_config("config-urandom", |_| {});
    std::fs::remove_file(device.join("config.json")).unwrap();
    std::os::unix::fs::symlink("/dev/urandom", device.join("config.json")).unwrap();
    for (checkpoint, kind) in [(&fifo, "FIFO"), (&device, "character device")] {
        let (code, err) = generate_on(checkpoint);
        assert_eq!(code, Some(2), "{kind}: {err}");
        assert!(
            err.contains("config.json") && err.contains(kind),
            "{kind}: {err}"
        );
        assert!(!err.contains("panicked"), "{err}");
    }
    // A generation_config.json that is a FIFO, beside a good checkpoint.
    let generation = common::fixture_with_config("generation-fifo", |_| {});
    mkfifo(&generation.join("generation_config.json"));
    let (code, err) = generate_on(&generation);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("generation_config.json") && err.contains("FIFO"),
        "{err}"
    );

    // The job config itself, and a data file.
    let dir = scratch("fifo-inputs");
    let config = dir.join("job.json");
    mkfifo(&config);
    let mut child = Command::new(common::trainer_bin())
        .args(["train", "--config"])
        .arg(&config)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let waited = wait_at_most(&mut child, HANG);
    let err = child_stderr(&mut child);
    let (status, _) = waited.unwrap_or_else(|| panic!("train blocked on a FIFO config: {err}"));
    assert_eq!(status.code(), Some(2), "{err}");
    assert!(err.contains("job.json") && err.contains("FIFO"), "{err}");
    let data = dir.join("corpus.txt");
    mkfifo(&data);
    let mut job = tiny_job(&dir, "fifo-data");
    job["data"]["train"] = json!(data);
    let path = write_config(&dir, "data.json", &job);
    let out = train(&path, &[], &[]);
    assert_exit("FIFO data", &out, 2, &["corpus.txt", "FIFO"]);
}

/// Trains `name` for 4 steps with a checkpoint at step 4; its run directory.
fn run_with_checkpoint(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let config = short_job(dir, name, 4, 4);
    let path = write_config(dir, &format!("{name}.json"), &config);
    assert_ok(&train(&path, &[], &[]));
    (path, dir.join("runs").join(name))
}

#[test]
fn resume_refuses_a_state_that_does_not_match_its_checkpoint() {
    let dir = scratch("tampered-state");
    let (path, run) = run_with_checkpoint(&dir, "tampered");
    let state_dir = run.join("checkpoints/step-4/trainer_state");
    let rows = metrics(&run).len();
    let resume = |what: &str, needles: &[&str]| {
        // --set steps=8: the run has steps left to run.
        let out = train(&path, &["--resume", "--set", "steps=8"], &[]);
        assert_exit(what, &out, 2, needles);
        assert_eq!(metrics(&run).len(), rows, "{what}: no row written");
    };

    // The step of another checkpoint: resuming would run steps 2-4 again.
    let state_path = state_dir.join("state.json");
    let original = read(&state_path);
    let mut state: serde_json::Value = serde_json::from_str(&original).unwrap();
    state["step"] = json!(1);
    std::fs::write(&state_path, state.to_string()).unwrap();
    resume(
        "step 1 in step-4",
        &["state.json", "`step` is 1", "`step-4`"],
    );
    std::fs::write(&state_path, &original).unwrap();

    // AdamW moments full of NaN: every step would be skipped.
    let moments = state_dir.join("optimizer.safetensors");
    let saved = std::fs::read(&moments).unwrap();
    let mut tensors = common::read_tensors(&moments);
    tensors[0].values[3] = f32::NAN;
    trainer::checkpoint::write_safetensors(&moments, &tensors).unwrap();
    resume(
        "NaN moment",
        &["optimizer.safetensors", &tensors[0].name, "NaN"],
    );

    // No optimizer state at all.
    std::fs::remove_file(&moments).unwrap();
    resume("missing moments", &["optimizer.safetensors", "missing"]);
    std::fs::write(&moments, &saved).unwrap();

    // Put back, the run resumes.
    assert_ok(&train(&path, &["--resume", "--set", "steps=8"], &[]));
}

#[test]
fn a_checkpoint_write_that_fails_leaves_no_half_written_folder() {
    let dir = scratch("checkpoint-disk-full");
    // A first run: the token cache exists, and the sizes of a checkpoint's files are known.
    let (_, first) = run_with_checkpoint(&dir, "sizes");
    let step = first.join("checkpoints/step-4");
    let model = std::fs::metadata(step.join("model.safetensors"))
        .unwrap()
        .len();
    let moments = std::fs::metadata(step.join("trainer_state/optimizer.safetensors"))
        .unwrap()
        .len();
    // A limit the model file fits under and the optimizer state (twice its size) does not.
    let limit = model + 4096;
    assert!(moments > limit, "moments {moments} B, limit {limit} B");
    // The checkpoint at step 4 of 8 with no evaluation before it: the plots an evaluation
    // draws (~400 KB PNGs) would hit the limit first.
    let mut config = short_job(&dir, "full", 8, 4);
    config["eval_every"] = json!(0);
    let path = write_config(&dir, "full.json", &config);
    let mut cmd = Command::new(common::trainer_bin());
    cmd.args(["train", "--config"]).arg(&path);
    let out = common::process::with_file_size_limit(&mut cmd, limit)
        .output()
        .unwrap();
    assert_exit(
        "disk full in a checkpoint",
        &out,
        1,
        &["optimizer.safetensors"],
    );
    let left: Vec<String> = std::fs::read_dir(dir.join("runs/full/checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn a_first_signal_while_the_data_is_prepared_stops_the_job_at_once() {
    let dir = scratch("signal-preparing");
    // Chat data whose template takes ~0.1-0.5 s a rendering (3 million empty iterations, well
    // inside the template budget): preparing 300 conversations takes minutes.
    let template = dir.join("slow.jinja");
    std::fs::write(
        &template,
        "{% for i in range(3000) %}{% for j in range(1000) %}{% endfor %}{% endfor %}\
         {% for m in messages %}{{ m.content }}{% endfor %}",
    )
    .unwrap();
    let record = json!({"messages": [{"role": "user", "content": "Hi"},
                                     {"role": "assistant", "content": "Hello"}]});
    let data = dir.join("chat.jsonl");
    std::fs::write(
        &data,
        (0..300).map(|_| format!("{record}\n")).collect::<String>(),
    )
    .unwrap();
    let mut job = tiny_job(&dir, "preparing");
    job["data"]["train"] = json!(data);
    job["data"]["chat"] = json!({"template": {"path": template}});
    let path = write_config(&dir, "job.json", &job);
    let mut child = Command::new(common::trainer_bin())
        .args(["train", "--config"])
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Past start-up and into the rendering (the run directory is made only after it).
    std::thread::sleep(Duration::from_millis(1500));
    signal(&child, libc::SIGTERM);
    let waited = wait_at_most(&mut child, HANG);
    let err = child_stderr(&mut child);
    let (status, took) = waited.unwrap_or_else(|| panic!("SIGTERM ignored while preparing: {err}"));
    println!("stopped {took:?} after SIGTERM");
    assert_eq!(status.code(), Some(130), "{err}");
    assert!(err.contains("being prepared"), "{err}");
    assert!(!dir.join("runs/preparing").exists(), "no run directory");
}

#[test]
fn a_cscale_bias_outside_the_job_configs_range_exits_2() {
    // As `precision.cscale_bias` is checked in a job config.
    let data = common::repo_root().join("datasets/data/shakespeare_milton/shakespeare_sonnets.txt");
    let out = fp8_trainer(&[
        "eval",
        "--checkpoint",
        &common::fixture(),
        "--data",
        data.to_str().unwrap(),
        "--tokenizer",
        "bytes",
        "--cscale-biases",
        "0,99",
    ]);
    assert_exit(
        "--cscale-biases 99",
        &out,
        2,
        &["--cscale-biases", "99", "-31 ..= 31"],
    );
}

#[test]
fn dump_step_tokens_longer_than_one_batch_exit_2() {
    // Refused, not cut to the first B*T+1 without a word.
    let dir = scratch("dump-many-tokens");
    let mut config = short_job(&dir, "dump", 1, 1);
    config["batch_size"] = json!(1);
    config["data"]["seq_len"] = json!(4);
    let path = write_config(&dir, "dump.json", &config);
    let tokens = dir.join("many.json");
    std::fs::write(
        &tokens,
        serde_json::to_string(&vec![1u32; 100_000]).unwrap(),
    )
    .unwrap();
    let out = Command::new(common::trainer_bin())
        .args(["dump-step", "--config"])
        .arg(&path)
        .arg("--tokens")
        .arg(&tokens)
        .arg("--out")
        .arg(dir.join("step.safetensors"))
        .output()
        .unwrap();
    assert_exit(
        "100,000 tokens for 1 x 4",
        &out,
        2,
        &["many.json", "100000 tokens", "= 5"],
    );
}

#[test]
fn an_eos_token_id_outside_the_vocabulary_exits_2() {
    // In generation_config.json, beside a model of 512 tokens.
    let checkpoint = common::fixture_with_config("eos-outside", |_| {});
    std::fs::write(
        checkpoint.join("generation_config.json"),
        r#"{"eos_token_id": 70000}"#,
    )
    .unwrap();
    let (code, err) = generate_on(&checkpoint);
    assert_eq!(code, Some(2), "{err}");
    for needle in [
        "generation_config.json",
        "eos_token_id",
        "70000",
        "vocab_size = 512",
    ] {
        assert!(err.contains(needle), "{needle}: {err}");
    }
}

#[test]
fn a_nul_byte_in_the_name_exits_2() {
    // Was: exit 1, when the run's folder could not be made.
    let dir = scratch("nul-name");
    let mut job = tiny_job(&dir, "a\u{0}b");
    job["steps"] = json!(1);
    let path = write_config(&dir, "nul.json", &job);
    assert_exit(
        "NUL in name",
        &train(&path, &[], &[]),
        2,
        &["field `name`", "NUL"],
    );
}

#[test]
fn bench_with_no_timed_steps_exits_2() {
    // Was: a panic (the median of no step times).
    let dir = scratch("bench-no-steps");
    let path = write_config(&dir, "bench.json", &tiny_job(&dir, "bench"));
    let out = fp8_trainer(&["bench", "--config", path.to_str().unwrap(), "--steps", "0"]);
    assert_exit("bench --steps 0", &out, 2, &["--steps"]);
}

#[test]
fn an_unknown_log_level_is_warned_about() {
    let out = Command::new(common::trainer_bin())
        .args(GENERATE_ONE_TOKEN)
        .arg(common::fixture())
        .env("FP8_TRAINER_LOG", "bogus")
        .output()
        .unwrap();
    assert_ok(&out);
    let err = stderr(&out);
    assert!(
        err.contains("FP8_TRAINER_LOG=\"bogus\" is not a log level"),
        "{err}"
    );
}

#[test]
fn an_eval_batch_that_cannot_fit_or_is_empty_exits_2() {
    // Its logits (10^8 rows x 64 positions x 512 entries) would abort the process.
    let data = common::repo_root().join("datasets/data/shakespeare_milton/shakespeare_sonnets.txt");
    for size in ["100000000", "0"] {
        let mut cmd = limited();
        cmd.args([
            "eval",
            "--checkpoint",
            &common::fixture(),
            "--tokenizer",
            "bytes",
        ])
        .arg("--data")
        .arg(&data)
        .args(["--batch-size", size]);
        let out = cmd.output().unwrap();
        assert_exit(&format!("--batch-size {size}"), &out, 2, &["--batch-size"]);
    }
}
