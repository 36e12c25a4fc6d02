//! Issue 12: a run directory that never loses work, and no bad input that panics. One test (or
//! a few) per defect of the red-team report, each reproducing it through the binary: what
//! `--overwrite` may delete and when, the run-directory lock, symbolic links planted in the run
//! directory, failed and killed writes, SIGTERM / SIGHUP / a second Ctrl-C / Ctrl-C during an
//! evaluation, model-shape changes on `--resume`, and bad input that used to panic, abort, pass
//! silently, get the wrong exit code or a poor message.

mod common;

use std::path::Path;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use common::jobs::*;
use serde_json::{json, Value};

fn fixture() -> String {
    common::fixture_dir().to_str().unwrap().to_string()
}

fn no_panic(what: &str, out: &Output) {
    let err = stderr(out);
    assert!(!err.contains("panicked"), "{what}: no panic: {err}");
    assert!(
        !err.contains("memory allocation"),
        "{what}: no allocation abort: {err}"
    );
}

/// Asserts exit code `code`, no panic, and every needle in stderr.
fn assert_exit(what: &str, out: &Output, code: i32, needles: &[&str]) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(code), "{what}: {err}");
    no_panic(what, out);
    for needle in needles {
        assert!(err.contains(needle), "{what}: `{needle}` in: {err}");
    }
}

/// A child process that is killed when the test ends, passed or failed (a failed assertion
/// must not leave a long job running).
struct Job(Child);

impl std::ops::Deref for Job {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Job {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Job {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `train --config path EXTRA` in the background.
fn spawn_train(path: &Path, extra: &[&str]) -> Job {
    Job(Command::new(common::trainer_bin())
        .args(["train", "--config"])
        .arg(path)
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap())
}

/// Waits until `run/log.txt` has a line starting with `prefix` (panics after 120 s).
fn wait_for_log_line(run: &Path, prefix: &str) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !std::fs::read_to_string(run.join("log.txt"))
        .unwrap_or_default()
        .lines()
        .any(|l| l.starts_with(prefix))
    {
        assert!(Instant::now() < deadline, "no log line `{prefix}`");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Waits for `child` at most `limit`; kills it when it is still running. The status and the
/// time it took, or `None` when it had to be killed.
fn wait_at_most(child: &mut Child, limit: Duration) -> Option<(ExitStatus, Duration)> {
    let started = Instant::now();
    while started.elapsed() < limit {
        if let Some(status) = child.try_wait().unwrap() {
            return Some((status, started.elapsed()));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

fn child_stderr(child: &mut Child) -> String {
    use std::io::Read;
    let mut text = String::new();
    if let Some(mut err) = child.stderr.take() {
        let _ = err.read_to_string(&mut text);
    }
    text
}

fn signal(child: &Child, sig: libc::c_int) {
    // SAFETY: plain kill(2) on our own child's pid.
    let sent = unsafe { libc::kill(child.id() as libc::pid_t, sig) };
    assert_eq!(sent, 0, "signal {sig} delivered");
}

/// A command run with its file size limit at `bytes` (`RLIMIT_FSIZE`) and SIGXFSZ ignored, so a
/// write past it fails with EFBIG, as on a full disk.
fn with_file_size_limit(cmd: &mut Command, bytes: u64) -> &mut Command {
    use std::os::unix::process::CommandExt;
    // SAFETY: setrlimit and signal are async-signal-safe; nothing else runs in the child.
    unsafe {
        cmd.pre_exec(move || {
            let limit = libc::rlimit {
                rlim_cur: bytes as libc::rlim_t,
                rlim_max: bytes as libc::rlim_t,
            };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            Ok(())
        })
    }
}

/// A tiny job of `steps` steps with a checkpoint every `every`.
fn short_job(dir: &Path, name: &str, steps: u64, every: u64) -> Value {
    let mut c = tiny_job(dir, name);
    c["steps"] = json!(steps);
    c["checkpoint_every"] = json!(every);
    c["eval_every"] = json!(every);
    c
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

// ---- 1. `--overwrite` deletes nothing before the job is built -----------------------------

#[test]
fn overwrite_with_a_bad_config_deletes_nothing() {
    let dir = scratch("overwrite-bad");
    let path = write_config(&dir, "job.json", &short_job(&dir, "kept", 4, 2));
    assert_ok(&train(&path, &[], &[]));
    let run = dir.join("runs/kept");
    let (metrics_before, config_before) = (
        read(&run.join("metrics.csv")),
        read(&run.join("config.json")),
    );
    let typos: [(&str, &str); 5] = [
        ("data.seq_len=128", "data.seq_len"),
        ("model.n_head=3", "n_head"),
        ("precision.layers=[\"h.9.*\"]", "precision.layers"),
        ("precision.amax_history_len=0", "precision.amax_history_len"),
        ("precision.warn_underflow=2", "precision.warn_underflow"),
    ];
    for (set, field) in typos {
        let out = train(&path, &["--overwrite", "--set", set], &[]);
        assert_exit(set, &out, 2, &[field]);
        for step in [2, 4] {
            let state = run.join(format!("checkpoints/step-{step}/trainer_state/state.json"));
            assert!(state.is_file(), "{set}: checkpoint {step} kept");
        }
        assert_eq!(read(&run.join("metrics.csv")), metrics_before, "{set}");
        assert_eq!(read(&run.join("config.json")), config_before, "{set}");
    }
    // The run can still be resumed, and a good --overwrite still starts over.
    assert_ok(&train(&path, &["--resume", "--set", "steps=6"], &[]));
    assert_ok(&train(&path, &["--overwrite"], &[]));
    assert_eq!(metrics(&run).len(), 5, "row 0 and 4 steps");
}

// ---- 2. one job per run directory -----------------------------------------------------------

#[test]
fn a_second_job_in_a_running_jobs_directory_is_refused_and_a_stale_lock_is_not() {
    let dir = scratch("lock");
    let mut config = short_job(&dir, "locked", 100_000, 3);
    config["eval_every"] = json!(0);
    config["keep_checkpoints"] = json!(1);
    let path = write_config(&dir, "job.json", &config);
    let run = dir.join("runs/locked");
    let mut first = spawn_train(&path, &[]);
    wait_for_log_line(&run, "step 3/");
    let pid = first.id().to_string();
    for extra in [
        &["--set", "steps=3"][..],
        &["--overwrite", "--set", "steps=3"],
    ] {
        let out = train(&path, extra, &[]);
        assert_exit(
            &format!("{extra:?}"),
            &out,
            2,
            &[&pid, run.to_str().unwrap()],
        );
    }
    assert!(
        first.try_wait().unwrap().is_none(),
        "the first job still runs"
    );
    let ckpts = std::fs::read_dir(run.join("checkpoints")).unwrap().count();
    assert!(ckpts >= 1, "its checkpoints are where they were");
    first.kill().unwrap(); // SIGKILL: the lock file stays, the lock goes with the process
    first.wait().unwrap();
    assert!(run.join(".lock").is_file());
    assert_ok(&train(&path, &["--overwrite", "--set", "steps=2"], &[]));
    assert_eq!(metrics(&run).len(), 3, "row 0 and 2 steps");
}

// ---- 3. no output follows a symbolic link planted in the run directory ----------------------

const OUTPUTS: [&str; 7] = [
    "metrics.csv",
    "fp8_stats.csv",
    "log.txt",
    "loss.png",
    "loss.svg",
    "fp8_stats.png",
    "fp8_stats.svg",
];

#[test]
fn outputs_do_not_follow_symlinks_planted_in_the_run_directory() {
    let dir = scratch("symlinks");
    let path = write_config(&dir, "job.json", &short_job(&dir, "planted", 3, 3));
    assert_ok(&train(&path, &[], &[]));
    let run = dir.join("runs/planted");
    let outside = dir.join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    for name in OUTPUTS {
        let target = outside.join(name);
        std::fs::write(&target, "not yours").unwrap();
        std::fs::remove_file(run.join(name)).unwrap();
        std::os::unix::fs::symlink(&target, run.join(name)).unwrap();
    }
    assert_ok(&train(&path, &["--overwrite"], &[]));
    for name in OUTPUTS {
        assert_eq!(
            read(&outside.join(name)),
            "not yours",
            "{name} outside untouched"
        );
        let meta = std::fs::symlink_metadata(run.join(name)).unwrap();
        assert!(meta.is_file(), "{name} is a file of the run again");
    }
    assert_eq!(metrics(&run).len(), 4);
}

#[test]
fn resume_refuses_to_append_through_a_symlinked_log() {
    let dir = scratch("symlink-log");
    let path = write_config(&dir, "job.json", &short_job(&dir, "planted", 3, 3));
    assert_ok(&train(&path, &[], &[]));
    let run = dir.join("runs/planted");
    let target = dir.join("elsewhere.txt");
    std::fs::write(&target, "not yours").unwrap();
    std::fs::remove_file(run.join("log.txt")).unwrap();
    std::os::unix::fs::symlink(&target, run.join("log.txt")).unwrap();
    let out = train(&path, &["--resume", "--set", "steps=4"], &[]);
    assert_exit("symlinked log.txt", &out, 2, &["log.txt", "symbolic link"]);
    assert_eq!(read(&target), "not yours");
}

// ---- 4. failed writes keep the old file; temporaries of killed writes are removed ------------

#[test]
fn a_failed_write_keeps_the_previous_output() {
    let dir = scratch("failed-write");
    let out_path = dir.join("logits.json");
    std::fs::write(&out_path, "previous").unwrap();
    let mut cmd = Command::new(common::trainer_bin());
    cmd.args([
        "logits",
        "--checkpoint",
        &fixture(),
        "--tokens",
        "1,2,3",
        "--out",
    ])
    .arg(&out_path);
    let out = with_file_size_limit(&mut cmd, 1000).output().unwrap();
    assert_exit("logits on a full disk", &out, 1, &["logits.json"]);
    assert_eq!(read(&out_path), "previous", "the previous file is intact");
    let names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["logits.json"], "no temporary left");
}

#[test]
fn temporaries_of_killed_writes_are_removed_at_the_next_start() {
    let dir = scratch("stale-temps");
    let config = short_job(&dir, "temps", 4, 2);
    let path = write_config(&dir, "job.json", &config);
    assert_ok(&train(&path, &["--set", "steps=2"], &[]));
    let run = dir.join("runs/temps");
    let cache = dir.join("cache");
    // What a process killed in the middle of each write leaves behind.
    let stale = [
        run.join(".metrics.csv.a1b2c3.tmp"),
        run.join(".config.json.d4e5f6.tmp"),
        run.join(".loss.png.g7h8i9.tmp"),
        cache.join(".shakespeare_sonnets-0123456789abcdef.tok.m4n5o6.tmp"),
    ];
    for file in &stale {
        std::fs::write(file, "half written").unwrap();
    }
    let stale_dirs = [
        run.join("checkpoints/.step-4.tmp"),
        run.join("checkpoints/.step-2.old"),
    ];
    for d in &stale_dirs {
        std::fs::create_dir_all(d.join("trainer_state")).unwrap();
    }
    let out = train(&path, &["--resume", "--set", "steps=3"], &[]);
    assert_ok(&out);
    for p in stale.iter().chain(&stale_dirs) {
        assert!(!p.exists(), "{} removed", p.display());
    }
}

// ---- 5. SIGTERM, SIGHUP, a second Ctrl-C, Ctrl-C during an evaluation ------------------------

#[test]
fn sigterm_saves_a_checkpoint_and_resume_continues_exactly() {
    let dir = scratch("sigterm");
    let mut config = tiny_job(&dir, "terminated");
    config["steps"] = json!(40);
    config["checkpoint_every"] = json!(100); // only the signal and the end write checkpoints
    let mut reference = config.clone();
    reference["name"] = json!("reference");
    assert_ok(&train(
        &write_config(&dir, "reference.json", &reference),
        &[],
        &[],
    ));
    let expected = metrics(&dir.join("runs/reference"));
    let path = write_config(&dir, "terminated.json", &config);
    let run = dir.join("runs/terminated");

    let mut child = spawn_train(&path, &[]);
    wait_for_log_line(&run, "step 3/");
    signal(&child, libc::SIGTERM);
    let status = child.wait().unwrap();
    let err = child_stderr(&mut child);
    assert_eq!(status.code(), Some(130), "SIGTERM exits like Ctrl-C: {err}");
    assert!(err.contains("--resume"), "{err}");
    let last = metrics(&run).last().unwrap()[0].parse::<u64>().unwrap();
    assert!(last < 40, "stopped early (step {last})");
    assert!(run
        .join(format!("checkpoints/step-{last}/trainer_state/state.json"))
        .is_file());
    assert_ok(&train(&path, &["--resume"], &[]));
    assert_eq!(exact(&metrics(&run)), exact(&expected), "resumed exactly");
}

#[test]
fn sighup_saves_a_checkpoint() {
    let dir = scratch("sighup");
    let mut config = tiny_job(&dir, "hungup");
    config["steps"] = json!(100_000);
    config["checkpoint_every"] = json!(1_000_000);
    config["eval_every"] = json!(0);
    let path = write_config(&dir, "job.json", &config);
    let run = dir.join("runs/hungup");
    let mut child = spawn_train(&path, &[]);
    wait_for_log_line(&run, "step 3/");
    signal(&child, libc::SIGHUP);
    let (status, _) = wait_at_most(&mut child, Duration::from_secs(30)).expect("stops");
    assert_eq!(status.code(), Some(130), "{}", child_stderr(&mut child));
    let last = metrics(&run).last().unwrap()[0].parse::<u64>().unwrap();
    assert!(run
        .join(format!("checkpoints/step-{last}/trainer_state/state.json"))
        .is_file());
}

/// A model big enough that one evaluation batch or training step takes a while on a CPU.
fn slow_job(dir: &Path, name: &str) -> Value {
    let mut c = tiny_job(dir, name);
    c["model"] = json!({"preset": "tiny", "init_seed": 7, "vocab_size": 257, "n_positions": 128,
                        "n_embd": 384, "n_layer": 6, "n_head": 6, "n_inner": 1536});
    c["data"]["seq_len"] = json!(128);
    c["precision"] = json!({"mode": "fp32"});
    c["batch_size"] = json!(8);
    c["steps"] = json!(5);
    c
}

#[test]
fn ctrl_c_during_a_long_evaluation_stops_within_seconds() {
    let dir = scratch("ctrl-c-eval");
    let mut config = slow_job(&dir, "evaluating");
    // The initial evaluation reads 90% of the sonnets: tens of seconds here.
    config["data"]["validation"] = json!({"fraction": 0.9});
    config["eval_batches"] = json!(0);
    let path = write_config(&dir, "job.json", &config);
    let run = dir.join("runs/evaluating");
    let mut child = spawn_train(&path, &[]);
    wait_for_log_line(&run, "starting evaluating");
    std::thread::sleep(Duration::from_millis(500));
    signal(&child, libc::SIGINT);
    let waited = wait_at_most(&mut child, Duration::from_secs(10));
    let err = child_stderr(&mut child);
    let (status, took) = waited.expect("Ctrl-C honoured during the evaluation");
    println!("stopped {took:?} after Ctrl-C");
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert_eq!(status.code(), Some(130), "{err}");
    assert!(err.contains("nothing saved"), "{err}");
}

#[test]
fn a_second_ctrl_c_stops_at_once() {
    let dir = scratch("ctrl-c-twice");
    let mut config = slow_job(&dir, "twice");
    config["data"]["validation"] = json!("none");
    config["batch_size"] = json!(64); // one step: seconds
    let path = write_config(&dir, "job.json", &config);
    let run = dir.join("runs/twice");
    let mut child = spawn_train(&path, &[]);
    wait_for_log_line(&run, "starting twice");
    std::thread::sleep(Duration::from_millis(300)); // inside step 1
    signal(&child, libc::SIGINT);
    std::thread::sleep(Duration::from_millis(200));
    signal(&child, libc::SIGINT);
    let waited = wait_at_most(&mut child, Duration::from_secs(30));
    let err = child_stderr(&mut child);
    let (status, took) = waited.expect("stops");
    println!("stopped {took:?} after the second Ctrl-C: {err}");
    assert!(took < Duration::from_secs(2), "at once: {took:?}");
    assert_eq!(status.code(), Some(130), "{err}");
    assert!(err.contains("second"), "{err}");
    assert!(err.contains("not saved"), "says the truth: {err}");
    assert!(!run.join("checkpoints/step-1").exists(), "{err}");
}

/// Ctrl-C during a step that is due for an evaluation: the evaluation stops at once and is not
/// recorded, the checkpoint marks it pending, and the resumed run does it first, so metrics.csv
/// equals that of the uninterrupted run.
#[test]
fn ctrl_c_before_a_due_evaluation_resumes_to_the_same_metrics() {
    let dir = scratch("ctrl-c-due-eval");
    let mut config = slow_job(&dir, "due");
    config["batch_size"] = json!(8); // one step: about a second or more on a CPU
    config["steps"] = json!(2);
    config["eval_every"] = json!(1);
    config["eval_batches"] = json!(1);
    config["checkpoint_every"] = json!(100);
    let mut reference = config.clone();
    reference["name"] = json!("reference");
    assert_ok(&train(
        &write_config(&dir, "reference.json", &reference),
        &[],
        &[],
    ));
    let expected = metrics(&dir.join("runs/reference"));
    let path = write_config(&dir, "due.json", &config);
    let run = dir.join("runs/due");
    let mut child = spawn_train(&path, &[]);
    wait_for_log_line(&run, "step 0: val loss");
    std::thread::sleep(Duration::from_millis(300)); // inside step 1, which is due
    signal(&child, libc::SIGINT);
    let (status, _) = wait_at_most(&mut child, Duration::from_secs(60)).expect("stops");
    let err = child_stderr(&mut child);
    assert_eq!(status.code(), Some(130), "{err}");
    let rows = metrics(&run);
    assert_eq!(rows.len(), 2, "row 0 and step 1: {rows:?}");
    assert_eq!(rows[1][3], "", "the interrupted evaluation is not recorded");
    let state = read(&run.join("checkpoints/step-1/trainer_state/state.json"));
    assert!(state.contains("\"eval_pending\": true"), "{state}");
    assert_ok(&train(&path, &["--resume"], &[]));
    assert_eq!(exact(&metrics(&run)), exact(&expected), "resumed exactly");
}

// ---- 6. the model shape on --resume, checkpoint + shape overrides ----------------------------

#[test]
fn resume_refuses_a_changed_model_shape() {
    let dir = scratch("resume-shape");
    let path = write_config(&dir, "job.json", &short_job(&dir, "shaped", 2, 2));
    assert_ok(&train(&path, &[], &[]));
    let run = dir.join("runs/shaped");
    let config_before = read(&run.join("config.json"));
    let out = train(
        &path,
        &[
            "--resume",
            "--set",
            "steps=4",
            "--set",
            "model.n_layer=6",
            "--set",
            "model.n_head=4",
        ],
        &[],
    );
    assert_exit(
        "n_layer 2 -> 6",
        &out,
        2,
        &["model.n_layer", "model.n_head", "--resume"],
    );
    assert_eq!(read(&run.join("config.json")), config_before);
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

// ---- 7. panics and aborts on bad input ---------------------------------------------------

#[test]
fn generate_with_top_k_0_or_a_bad_temperature_exits_2() {
    for (flag, value) in [
        ("--top-k", "0"),
        ("--temperature", "NaN"),
        ("--temperature", "-1"),
    ] {
        let out = fp8_trainer(&[
            "generate",
            "--checkpoint",
            &fixture(),
            "--tokens",
            "1,2",
            "--max-new-tokens",
            "3",
            &format!("{flag}={value}"), // `--temperature=-1`: not read as a flag
        ]);
        assert_exit(&format!("{flag} {value}"), &out, 2, &[flag]);
    }
}

#[test]
fn generate_with_a_huge_max_new_tokens_does_not_abort() {
    let mut child = Job(Command::new(common::trainer_bin())
        .args(["generate", "--checkpoint", &fixture(), "--tokens", "1,2"])
        .args(["--max-new-tokens", "1000000000000", "--temperature", "0"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap());
    // Generating that many tokens takes forever; what matters is that it starts.
    match wait_at_most(&mut child, Duration::from_secs(3)) {
        None => {}
        Some((status, _)) => {
            let err = child_stderr(&mut child);
            assert!(
                status.code().is_some(),
                "killed by a signal: {status:?}: {err}"
            );
            assert!(!err.contains("memory allocation"), "{err}");
        }
    }
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

// ---- 8. exit codes of failures that are not the user's input --------------------------------

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

// ---- 9. accepted silently --------------------------------------------------------------------

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
fn a_checkpoint_with_nan_weights_exits_2_naming_the_tensor() {
    let dir = common::edited_fixture("reliability-nan-weights", |tensors| {
        let t = tensors
            .iter_mut()
            .find(|t| t.name.ends_with("h.1.mlp.c_fc.weight"))
            .unwrap();
        t.values[5] = f32::NAN;
    });
    let out_path = dir.join("logits.json");
    let out = fp8_trainer(&[
        "logits",
        "--checkpoint",
        dir.to_str().unwrap(),
        "--tokens",
        "1,2,3",
        "--out",
        out_path.to_str().unwrap(),
    ]);
    assert_exit(
        "NaN weight",
        &out,
        2,
        &["model.safetensors", "h.1.mlp.c_fc.weight"],
    );
    assert!(!out_path.exists());
}

// ---- 10. messages ---------------------------------------------------------------------------

fn occurrences(haystack: &str, needle: &str) -> usize {
    haystack.matches(needle).count()
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
fn a_bad_safetensors_header_is_described_in_words() {
    let dir = common::scratch_dir("reliability-bad-header");
    std::fs::copy(
        common::fixture_dir().join("config.json"),
        dir.join("config.json"),
    )
    .unwrap();
    // Offsets that do not match the shape: 4 f32 need 16 bytes, the header declares 12.
    let header =
        br#"{"transformer.wte.weight":{"dtype":"F32","shape":[2,2],"data_offsets":[0,12]}}"#;
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header);
    bytes.extend_from_slice(&[0u8; 12]);
    std::fs::write(dir.join("model.safetensors"), bytes).unwrap();
    let out_path = dir.join("logits.json");
    let out = fp8_trainer(&[
        "logits",
        "--checkpoint",
        dir.to_str().unwrap(),
        "--tokens",
        "1",
        "--out",
        out_path.to_str().unwrap(),
    ]);
    let err = stderr(&out);
    assert_exit(
        "bad offsets",
        &out,
        2,
        &["model.safetensors", "transformer.wte.weight"],
    );
    assert!(!err.contains("TensorInvalidInfo"), "{err}");
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
