//! The logger: `log` records go to the terminal (through the binary's sink, which draws them
//! above a progress bar when one is shown) and to the `log.txt` of the job that is running.
//!
//! Our crates log at `info` and above by default, other crates (Burn, wgpu, tokenizers) at
//! `warn` and above; `FP8_TRAINER_LOG=debug` (or `trace`, `warn`, ...) changes our level.
//! Without [`init`] (a library user), records go wherever that program's logger sends them and
//! `log.txt` receives nothing.

use std::fs::File;
use std::io::Write;
use std::sync::{Mutex, OnceLock};

use log::{Level, LevelFilter, Log, Metadata, Record};

/// Where the binary shows a line: `(level, text)`.
pub type TerminalSink = Box<dyn Fn(Level, &str) + Send + Sync>;

/// Environment variable of our crates' log level.
pub const LOG_LEVEL_ENV: &str = "FP8_TRAINER_LOG";

struct Logger {
    terminal: TerminalSink,
    ours: LevelFilter,
}

/// The `log.txt` of the running job.
static RUN_LOG: Mutex<Option<File>> = Mutex::new(None);
static LOGGER: OnceLock<Logger> = OnceLock::new();

/// Installs the logger (once per process; later calls change nothing).
pub fn init(terminal: TerminalSink) {
    let setting = std::env::var(LOG_LEVEL_ENV).ok();
    let parsed = setting.as_deref().map(str::parse::<LevelFilter>);
    let ours = match parsed {
        Some(Ok(level)) => level,
        _ => LevelFilter::Info,
    };
    if LOGGER.set(Logger { terminal, ours }).is_ok() {
        let logger = LOGGER.get().expect("just set");
        if log::set_logger(logger).is_ok() {
            log::set_max_level(ours.max(LevelFilter::Warn));
        }
        if let (Some(value), Some(Err(_))) = (setting, parsed) {
            // A typo should not silently give the default level.
            log::warn!(
                "{LOG_LEVEL_ENV}={value:?} is not a log level (off, error, warn, info, debug, \
                 trace); using info"
            );
        }
    }
}

/// Sends log lines to `file` (a job's `log.txt`) until the guard is dropped.
#[must_use = "the file stops receiving lines when the guard is dropped"]
pub fn tee_to(file: File) -> TeeGuard {
    *lock_run_log() = Some(file);
    TeeGuard(())
}

/// Stops [`tee_to`] when dropped.
pub struct TeeGuard(());

impl Drop for TeeGuard {
    fn drop(&mut self) {
        *lock_run_log() = None;
    }
}

fn lock_run_log() -> std::sync::MutexGuard<'static, Option<File>> {
    // Writing a line cannot leave the slot half updated: a poisoned lock is still usable.
    RUN_LOG.lock().unwrap_or_else(|e| e.into_inner())
}

fn is_ours(target: &str) -> bool {
    ["trainer", "fp8_trainer", "fp8_backend", "datasets"]
        .iter()
        .any(|crate_name| target == *crate_name || target.starts_with(&format!("{crate_name}::")))
}

impl Log for Logger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        let limit = if is_ours(metadata.target()) {
            self.ours
        } else {
            LevelFilter::Warn
        };
        metadata.level() <= limit
    }

    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let text = match record.level() {
            Level::Info => record.args().to_string(),
            level => format!("{}: {}", level.as_str().to_lowercase(), record.args()),
        };
        (self.terminal)(record.level(), &text);
        if let Some(file) = lock_run_log().as_mut() {
            // log.txt is a record for people; a failed write must not stop the job.
            let _ = writeln!(file, "{text}").and_then(|_| file.flush());
        }
    }

    fn flush(&self) {}
}
