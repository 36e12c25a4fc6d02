//! A run directory never loses work (docs/design.md "Run directory"): `--overwrite` deletes
//! nothing until the new job is built, so a bad config leaves the run as it was; one job at a
//! time holds the directory (a second is refused, naming the holder, and a killed job's lock
//! blocks nothing); no output follows a symbolic link planted in the directory; a write that
//! fails keeps the previous file, and the temporaries of killed writes are removed when the next
//! job starts. (A crash while a checkpoint is written: resume.rs; what a signal saves:
//! signals.rs.)

use std::process::Command;

use serde_json::json;

use crate::common;
use crate::common::fixture;
use crate::common::jobs::*;
use crate::common::process::{assert_exit, spawn_train, wait_for_log_line, with_file_size_limit};

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
