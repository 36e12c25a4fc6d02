//! `--resume` continues a run as if it had never stopped (docs/design.md "Run directory"): the
//! metrics, the FP8 statistics and the weights end where the uninterrupted run's end. After a
//! SIGKILL; after a crash while a checkpoint was half written (the last complete checkpoint is
//! used, the half-written one never counts); from a named checkpoint (later ones refused
//! unless `--overwrite`); with data-parallel peers; under `fp8-delayed` (the amax histories
//! restored); after a skipped non-finite step (AdamW's step count, not the step number, drives
//! the update). `metrics.csv` and `metrics.jsonl` are cut back to the checkpoint. A resume that
//! would change the model's shape, names a folder that is not a checkpoint of this run, or finds
//! an amax history of a layer that is not FP8 in the job is refused (exit 2). (Resuming after a
//! signal: signals.rs; a new run from a checkpoint: fine_tuning.rs; a sweep continuing its
//! unfinished runs: compare.rs.)

use std::path::Path;

use serde_json::{json, Value};

use crate::common::jobs::{self, *};
use crate::common::process::{assert_exit, spawn_until_step};
use crate::data_parallel;

#[test]
fn sigkill_then_resume_equals_the_uninterrupted_run() {
    let dir = scratch("sigkill");
    let mut config = tiny_job(&dir, "killed");
    config["steps"] = json!(40);
    config["checkpoint_every"] = json!(5);
    let expected = reference_metrics(&dir, &config);
    let path = write_config(&dir, "killed.json", &config);
    let run = dir.join("runs/killed");

    // Kill after step 7 is logged: checkpoint 5 exists, steps 6-7 must be redone on resume.
    let mut child = spawn_until_step(&path, &run, 7);
    child.kill().unwrap(); // SIGKILL on Unix
    child.wait().unwrap();
    let before = metrics(&run);
    let last = before.last().unwrap()[0].parse::<u64>().unwrap();
    println!("killed after step {last}");
    // Steps take milliseconds: the kill lands before step 10 (the next checkpoint) is logged.
    assert!(
        (7..10).contains(&last),
        "killed after step 7, before 10: {last}"
    );
    assert_eq!(
        exact(&before),
        exact(&expected[..before.len()]),
        "each step once up to the kill"
    );
    let ckpts = run.join("checkpoints");
    assert!(ckpts.join("step-5/trainer_state/state.json").is_file());
    assert!(!ckpts.join("step-10").exists());

    let out = train(&path, &["--resume"], &[]);
    assert_ok(&out);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!(
            "resumed from {} (step 5)",
            ckpts.join("step-5").display()
        )),
        "{stdout}"
    );
    // Steps 6..=last ran before the kill and again after it; step 5 and the steps after the
    // kill ran once. (The kill may land between the metrics row of `last` and its log line.)
    // metrics.csv holds each step once, as the uninterrupted run wrote it.
    for step in [5, last + 1, 40] {
        assert_eq!(step_log_lines(&run, step, 40), 1, "step {step} logged once");
    }
    for step in 6..=last {
        let lines = step_log_lines(&run, step, 40);
        let allowed = if step == last && last > 7 {
            1..=2
        } else {
            2..=2
        };
        assert!(
            allowed.contains(&lines),
            "step {step} redone once: {lines} lines"
        );
    }
    let after = metrics(&run);
    let steps: Vec<String> = after.iter().map(|r| r[0].clone()).collect();
    let once: Vec<String> = (0..=40).map(|s| s.to_string()).collect();
    assert_eq!(steps, once, "every step once, in order");
    assert_eq!(
        exact(&after),
        exact(&expected),
        "metrics after resume differ"
    );
    // fp8_stats.csv too: step 6 (sampled) was written before the kill and again after it.
    let stats = |run: &Path| std::fs::read_to_string(run.join("fp8_stats.csv")).unwrap();
    assert_eq!(
        stats(&run),
        stats(&dir.join("runs/reference")),
        "fp8_stats.csv after resume differs"
    );
}

/// How many `step N/TOTAL:` lines `log.txt` of `run` holds for `step` (the log is appended to
/// on `--resume`, so a step done twice shows twice).
fn step_log_lines(run: &Path, step: u64, total: u64) -> usize {
    let log = std::fs::read_to_string(run.join("log.txt")).unwrap();
    let line = format!("step {step}/{total}: ");
    log.lines().filter(|l| l.starts_with(&line)).count()
}

#[test]
fn crash_while_writing_a_checkpoint_keeps_the_last_good_one() {
    let dir = scratch("crash-write");
    let config = tiny_job(&dir, "crash");
    let expected = reference_metrics(&dir, &config);
    let path = write_config(&dir, "crash.json", &config);
    let run = dir.join("runs/crash");

    let out = train(&path, &[], &[("FP8_TRAINER_FAIL_CHECKPOINT_AT", "8")]);
    assert!(
        !out.status.success(),
        "the injected fault aborts the process"
    );
    let ckpts = run.join("checkpoints");
    assert!(ckpts.join("step-4/trainer_state/state.json").is_file());
    assert!(
        ckpts.join(".step-8.tmp").is_dir(),
        "the half-written checkpoint is left as a temporary"
    );
    assert!(!ckpts.join("step-8").exists(), "and never becomes step-8");

    let out = train(&path, &["--resume"], &[]);
    assert_ok(&out);
    assert!(String::from_utf8_lossy(&out.stdout).contains("(step 4)"));
    assert!(
        !ckpts.join(".step-8.tmp").exists(),
        "stale temporaries are cleaned up"
    );
    assert_eq!(exact(&metrics(&run)), exact(&expected));
    // keep_checkpoints = 2
    let mut kept: Vec<String> = std::fs::read_dir(&ckpts)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    kept.sort();
    assert_eq!(kept, ["step-12", "step-8"]);
}

/// `--resume DIR` continues from that checkpoint: refused while later checkpoints are in the
/// way, and with `--overwrite` it ends where the uninterrupted run ended, bit for bit.
#[test]
fn resume_from_a_named_checkpoint_equals_the_uninterrupted_run() {
    let dir = scratch("resume-named");
    let path = write_config(&dir, "job.json", &job(&dir, "r", 4));
    assert_ok(&train(&path, &[], &[]));
    let run = dir.join("runs/r");
    let uninterrupted = (
        jobs::model_bytes(&run.join("checkpoints/step-4")),
        exact(&metrics(&run)),
    );

    let step2 = run.join("checkpoints/step-2");
    let out = train(&path, &["--resume", step2.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("step-3, step-4") && err.contains("--overwrite"),
        "{err}"
    );
    assert!(
        run.join("checkpoints/step-4").is_dir(),
        "nothing deleted on a refusal"
    );

    let out = train(
        &path,
        &["--resume", step2.to_str().unwrap(), "--overwrite"],
        &[],
    );
    assert_ok(&out);
    let log = std::fs::read_to_string(run.join("log.txt")).unwrap();
    assert!(
        log.contains(&format!("resumed from {}", step2.display())),
        "{log}"
    );
    assert_eq!(
        jobs::model_bytes(&run.join("checkpoints/step-4")),
        uninterrupted.0
    );
    assert_eq!(exact(&metrics(&run)), uninterrupted.1);

    // Not a checkpoint, another run's checkpoint, the newest one with --overwrite: exit 2.
    let not_one = dir.join("runs");
    let other = dir.join("other");
    std::fs::create_dir_all(&other).unwrap();
    std::process::Command::new("cp")
        .args(["-r", step2.to_str().unwrap(), other.to_str().unwrap()])
        .status()
        .unwrap();
    for (resume, needle) in [
        (
            not_one.to_str().unwrap().to_string(),
            "is not a training checkpoint",
        ),
        (
            other.join("step-2").to_str().unwrap().to_string(),
            "is not a checkpoint of this run",
        ),
    ] {
        let out = train(&path, &["--resume", &resume], &[]);
        assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
        let err = stderr(&out);
        assert!(err.contains(needle) && err.contains(&resume), "{err}");
    }
    let out = train(&path, &["--resume", "--overwrite"], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}

/// `metrics.jsonl` holds the rows of `metrics.csv`, every column named, empty cells as null,
/// also after a resume that cut the files back to a checkpoint.
#[test]
fn metrics_jsonl_has_the_rows_of_metrics_csv_across_a_resume() {
    let dir = scratch("jsonl");
    let path = write_config(&dir, "job.json", &job(&dir, "j", 4));
    assert_ok(&train(&path, &[], &[]));
    let run = dir.join("runs/j");
    let ckpt = run.join("checkpoints/step-2");
    assert_ok(&train(
        &path,
        &["--resume", ckpt.to_str().unwrap(), "--overwrite"],
        &[],
    ));
    let text = std::fs::read_to_string(run.join("metrics.csv")).unwrap();
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let csv: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    let jsonl = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let objects: Vec<Value> = jsonl
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(objects.len(), csv.len(), "{jsonl}");
    assert_eq!(csv.len(), 5, "step 0 and steps 1..=4");
    for (row, object) in csv.iter().zip(&objects) {
        assert_eq!(object.as_object().unwrap().len(), header.len());
        for (name, cell) in header.iter().zip(row) {
            let value = &object[*name];
            if cell.is_empty() {
                assert!(value.is_null(), "{name}: {value}");
            } else {
                let parsed: f64 = cell.parse().unwrap();
                assert_eq!(value.as_f64(), Some(parsed), "{name}: {cell} vs {value}");
            }
        }
    }
}

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

/// A two-peer run resumed from its step-3 checkpoint redoes steps 4-6 exactly.
#[test]
fn a_resumed_two_peer_run_equals_the_uninterrupted_one() {
    let dir = scratch("dp-resume");
    let job = data_parallel::job(&dir, "peers", "fp8-amax", 2);
    let whole = data_parallel::run(&dir, &job);
    let path = dir.join("peers.json");
    let step3 = dir.join("runs/peers/checkpoints/step-3");
    let out = train(
        &path,
        &["--resume", step3.to_str().unwrap(), "--overwrite"],
        &[],
    );
    assert_ok(&out);
    assert_eq!(exact(&metrics(&dir.join("runs/peers"))), exact(&whole));
}

/// A delayed run resumed from its step-4 checkpoint redoes steps 5-12 exactly as it first ran
/// them: the metrics and every FP8 statistic (amaxes and biases) bit for bit.
#[test]
fn resuming_a_delayed_run_restores_its_histories() {
    let dir = scratch("delayed-resume");
    let mut job = delayed_job(&dir, "resumed", 6);
    job["keep_checkpoints"] = json!(3);
    let path = write_config(&dir, "resumed.json", &job);
    assert_ok(&train(&path, &[], &[]));
    let run = dir.join("runs/resumed");
    let stats = || std::fs::read_to_string(run.join("fp8_stats.csv")).unwrap();
    let (first, first_stats) = (metrics(&run), stats());
    let step4 = run.join("checkpoints/step-4");
    let out = train(
        &path,
        &["--resume", step4.to_str().unwrap(), "--overwrite"],
        &[],
    );
    assert_ok(&out);
    assert_eq!(exact(&metrics(&run)), exact(&first));
    assert_eq!(stats(), first_stats, "fp8_stats.csv after the resume");
}

/// A history naming a layer the job does not quantize is refused on resume, naming the file.
#[test]
fn a_history_of_a_layer_that_is_not_fp8_is_refused_on_resume() {
    let dir = scratch("delayed-filter");
    let path = write_config(&dir, "filtered.json", &delayed_job(&dir, "filtered", 4));
    assert_ok(&train(&path, &[], &[]));
    let out = train(
        &path,
        &["--resume", "--set", "precision.layers=[\"h.1.*\"]"],
        &[],
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("fp8_amax_history.safetensors")
            && err.contains("`h.0.")
            && err.contains("is not an FP8 layer of this job (`precision.layers`)"),
        "{err}"
    );
}

/// The trainer state of checkpoint `step` of `run`.
fn state(run: &Path, step: u64) -> Value {
    let path = run.join(format!("checkpoints/step-{step}/trainer_state/state.json"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn model_bytes(run: &Path, step: u64) -> Vec<u8> {
    std::fs::read(run.join(format!("checkpoints/step-{step}/model.safetensors"))).unwrap()
}

/// `skip` leaves the weights and AdamW (moments and step count) as they were: the checkpoints of
/// the steps before and after the skipped one hold the same model, byte for byte, and the same
/// `adam_t`. A run resumed from the skipped step's checkpoint continues exactly as the
/// uninterrupted run with the same injection did (so `adam_t` and `skipped_steps`, not the step
/// number, drive AdamW's bias correction after a resume).
#[test]
fn skip_leaves_weights_and_optimizer_unchanged_across_a_resume() {
    let dir = scratch("skip-state");
    let mut config = tiny_job(&dir, "skip");
    config["steps"] = json!(6);
    config["checkpoint_every"] = json!(1);
    config["keep_checkpoints"] = json!(100);
    let path = write_config(&dir, "skip.json", &config);
    let nan_at_3 = [("FP8_TRAINER_INJECT_NAN_STEP", "3")];
    assert_ok(&train(&path, &[], &nan_at_3));
    let run = dir.join("runs/skip");
    let uninterrupted = metrics(&run);

    assert!(
        model_bytes(&run, 2) == model_bytes(&run, 3),
        "the skipped step 3 changed the weights"
    );
    assert!(
        model_bytes(&run, 3) != model_bytes(&run, 4),
        "step 4 trains again"
    );
    let optimizer = |step: u64| {
        std::fs::read(run.join(format!(
            "checkpoints/step-{step}/trainer_state/optimizer.safetensors"
        )))
        .unwrap()
    };
    assert!(optimizer(2) == optimizer(3), "the moments did not move");
    let (s2, s3, s6) = (state(&run, 2), state(&run, 3), state(&run, 6));
    assert_eq!(
        (&s2["adam_t"], &s2["skipped_steps"]),
        (&json!(2), &json!(0))
    );
    assert_eq!(
        (&s3["adam_t"], &s3["skipped_steps"]),
        (&json!(2), &json!(1))
    );
    assert_eq!(
        (&s6["adam_t"], &s6["skipped_steps"]),
        (&json!(5), &json!(1))
    );
    assert_eq!(s3["step"], json!(3));

    // Lose everything after step 3, then resume there (no injection left to run).
    for step in 4..=6 {
        std::fs::remove_dir_all(run.join(format!("checkpoints/step-{step}"))).unwrap();
    }
    let out = train(&path, &["--resume"], &[]);
    assert_ok(&out);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("(step 3)"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(exact(&metrics(&run)), exact(&uninterrupted));
    let resumed = state(&run, 6);
    for key in ["step", "tokens", "skipped_steps", "adam_t", "loader"] {
        assert_eq!(resumed[key], s6[key], "state.json `{key}` after the resume");
    }
}
