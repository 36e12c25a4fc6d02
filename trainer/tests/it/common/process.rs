//! Child processes of the tests: `fp8-trainer train` in the background, killed when the test
//! ends; waiting for a log line or for the exit; signals; a file size limit; exit codes.

use std::path::Path;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use super::jobs::stderr;

pub fn no_panic(what: &str, out: &Output) {
    let err = stderr(out);
    assert!(!err.contains("panicked"), "{what}: no panic: {err}");
    assert!(
        !err.contains("memory allocation"),
        "{what}: no allocation abort: {err}"
    );
}

/// Asserts exit code `code`, no panic, and every needle in stderr.
pub fn assert_exit(what: &str, out: &Output, code: i32, needles: &[&str]) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(code), "{what}: {err}");
    no_panic(what, out);
    for needle in needles {
        assert!(err.contains(needle), "{what}: `{needle}` in: {err}");
    }
}

/// A child process that is killed when the test ends, passed or failed (a failed assertion
/// must not leave a long job running).
pub struct Job(pub Child);

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
pub fn spawn_train(path: &Path, extra: &[&str]) -> Job {
    Job(Command::new(super::trainer_bin())
        .args(["train", "--config"])
        .arg(path)
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap())
}

/// Starts `train --config path` and returns once `run/log.txt` has the line of `step` (written
/// after its `metrics.csv` row, so that row is there too).
pub fn spawn_until_step(path: &Path, run: &Path, step: u64) -> std::process::Child {
    let child = Command::new(super::trainer_bin())
        .args(["train", "--config"])
        .arg(path)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let line = format!("step {step}/");
    while !std::fs::read_to_string(run.join("log.txt"))
        .unwrap_or_default()
        .lines()
        .any(|l| l.starts_with(&line))
    {
        assert!(
            Instant::now() < deadline,
            "the run never reached step {step}"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    child
}

/// Waits until `run/log.txt` has a line starting with `prefix` (panics after 120 s).
pub fn wait_for_log_line(run: &Path, prefix: &str) {
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
pub fn wait_at_most(child: &mut Child, limit: Duration) -> Option<(ExitStatus, Duration)> {
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

pub fn child_stderr(child: &mut Child) -> String {
    use std::io::Read;
    let mut text = String::new();
    if let Some(mut err) = child.stderr.take() {
        let _ = err.read_to_string(&mut text);
    }
    text
}

pub fn signal(child: &Child, sig: libc::c_int) {
    // SAFETY: plain kill(2) on our own child's pid.
    let sent = unsafe { libc::kill(child.id() as libc::pid_t, sig) };
    assert_eq!(sent, 0, "signal {sig} delivered");
}

/// A command run with its file size limit at `bytes` (`RLIMIT_FSIZE`) and SIGXFSZ ignored, so a
/// write past it fails with EFBIG, as on a full disk.
pub fn with_file_size_limit(cmd: &mut Command, bytes: u64) -> &mut Command {
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

/// The peak resident memory, in KiB, that a trainer run with `FP8_TRAINER_REPORT_PEAK_RSS=1`
/// reported on stderr as it ended (its own `VmHWM`).
pub fn peak_rss_kib(what: &str, out: &Output) -> i64 {
    let err = stderr(out);
    err.lines()
        .find_map(|l| {
            l.strip_prefix("peak RSS: ")?
                .strip_suffix(" kB")?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("{what}: no peak RSS reported: {err}"))
}
