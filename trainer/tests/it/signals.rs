//! Signals stop a running job cleanly (docs/design.md "CLI", exit codes): Ctrl-C (SIGINT),
//! SIGTERM and SIGHUP save a checkpoint of the last completed step and exit 130, and `--resume`
//! then ends where the uninterrupted run ends (the timing columns aside); Ctrl-C during an
//! evaluation stops it within seconds, and during a step that is due for an evaluation leaves
//! that evaluation pending in the checkpoint, done first on resume; a second Ctrl-C ends the
//! process at once, saving nothing more. (SIGKILL, which no process can catch: resume.rs.)

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};

use crate::common::jobs::*;
use crate::common::process::{
    child_stderr, signal, spawn_train, spawn_until_step, wait_at_most, wait_for_log_line,
};

#[test]
fn ctrl_c_saves_a_checkpoint_and_resume_continues_exactly() {
    let dir = scratch("ctrl-c");
    let mut config = tiny_job(&dir, "interrupted");
    config["steps"] = json!(40);
    config["checkpoint_every"] = json!(100); // only the interrupt and the end write checkpoints
    let expected = reference_metrics(&dir, &config);
    let path = write_config(&dir, "interrupted.json", &config);
    let run = dir.join("runs/interrupted");

    let mut child = spawn_until_step(&path, &run, 3);
    // SAFETY: plain kill(2) on our own child's pid.
    let sent = unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
    assert_eq!(sent, 0, "SIGINT delivered");
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "interrupted runs exit 130");
    let last = metrics(&run).last().unwrap()[0].parse::<u64>().unwrap();
    assert!(last < 40, "stopped early (step {last})");
    assert!(run
        .join(format!("checkpoints/step-{last}/trainer_state/state.json"))
        .is_file());

    // A setting changed for the resumed part is reported (log_every leaves the metrics alone).
    let out = train(&path, &["--resume", "--set", "log_every=2"], &[]);
    assert_ok(&out);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("config changed since the last run: log_every: 1 -> 2"),
        "{stdout}"
    );
    assert!(
        !stdout.contains("config changed since the last run: name"),
        "{stdout}"
    );
    assert_eq!(exact(&metrics(&run)), exact(&expected));
}

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
    // No checkpoint exists yet: `--resume` would have nothing to continue from.
    assert!(err.contains("nothing to resume"), "{err}");
    assert!(!err.contains("--resume"), "{err}");
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
