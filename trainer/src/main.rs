//! `fp8-trainer`: parses the command line, installs the logger and the Ctrl-C handler, runs the
//! command, prints its result. Exit codes (docs/design.md): 0 success, 2 bad input, 1 anything
//! else, 130 interrupted.

mod cli_progress;

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use clap::Parser;
use trainer::commands::{run, Cli, Command};
use trainer::Exit;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in mimalloc.h (v3, the version libmimalloc-sys builds): how long
/// freed memory stays mapped before it is returned to the OS. A training step frees and
/// re-allocates the same large tensors every step; returned memory comes back as freshly
/// zeroed pages (measured: 20% of a step in the kernel's page clearing; see bench/README.md).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Keeps freed memory mapped for reuse (the peak, not the working set, bounds memory anyway).
fn never_purge() {
    // SAFETY: sets a process-wide allocator option; mimalloc allows it at any time.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
}

/// Burn's wgpu runtime panics (on its own thread) when no GPU adapter exists; say what to do
/// instead of printing a backtrace. burn-collective and burn-communication panic (on their
/// own threads) when a node of a multi-node group dies or its connection breaks: the job ends
/// with exit 1 and says so (the last complete checkpoint stays). Every other panic keeps the
/// default report.
fn report_missing_gpu_adapter() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        let location = info.location();
        let file = location.map_or("", |l| l.file());
        let collective = message.starts_with(fp8_backend::peers::COLLECTIVE_FAILED);
        if collective || file.contains("burn-collective") || file.contains("burn-communication") {
            let at = location.map_or(String::new(), |l| format!(" ({}:{})", l.file(), l.line()));
            let lead = if collective {
                ""
            } else {
                "the data-parallel group failed: "
            };
            Exit::Failure.now(&format!(
                "{lead}{message}{at}. A peer or node stopped, or its connection broke; this \
                 process stops too (the run's last complete checkpoint is kept: continue with \
                 --resume once every node can run)"
            ));
        }
        if message.contains("No possible adapter available") {
            Exit::Failure.now(
                "device `wgpu`: no usable GPU adapter (Vulkan, Metal or DX12) was found. \
                 Install the GPU's Vulkan driver, or Mesa's software one (Debian/Ubuntu: \
                 `apt-get install mesa-vulkan-drivers`), or use \"device\": \"cpu\"",
            );
        }
        default(info);
    }));
}

fn main() -> ExitCode {
    never_purge();
    report_missing_gpu_adapter();
    let cli = Cli::parse();
    let mut progress = cli_progress::TermProgress::new();
    trainer::logging::init(progress.terminal_sink());
    // Ctrl-C, SIGTERM (job schedulers) and SIGHUP: training saves a checkpoint of the last
    // completed step and returns (exit 130); a second one ends the process at once. The other
    // commands have nothing to save and keep the default (the process ends).
    let stop = Arc::new(AtomicBool::new(false));
    if matches!(cli.command, Command::Train(_) | Command::Compare(_)) {
        let flag = stop.clone();
        let handler = move || {
            if flag.swap(true, Ordering::SeqCst) {
                Exit::Interrupted.now(if trainer::train::checkpoints::resumable() {
                    "second interrupt: stopping at once; the step in progress is not saved \
                     (the run's last complete checkpoint is kept: continue with --resume)"
                } else {
                    "second interrupt: stopping at once; the step in progress is not saved, \
                     and the job had no checkpoint yet: there is nothing to resume, start it \
                     again"
                });
            }
            if trainer::train::preparing() {
                Exit::Interrupted.now(
                    "interrupted while the job was being prepared (data, model, the other nodes \
                     joining): nothing to save yet; stopping now",
                );
            }
        };
        if let Err(e) = ctrlc::set_handler(handler) {
            log::warn!("cannot install the Ctrl-C handler: {e}");
        }
    }
    let code = match run(cli.command, stop, &mut progress, &mut std::io::stdout()) {
        Ok(done) => {
            if let Some(output) = done.output.filter(|o| !o.is_empty()) {
                println!("{output}");
            }
            if let Some(note) = done.note {
                eprintln!("{note}");
            }
            ExitCode::from(done.exit.code())
        }
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::from(error.exit_code())
        }
    };
    report_peak_memory();
    code
}

/// Test-only knob (`trainer/tests/it/main.rs`): with `FP8_TRAINER_REPORT_PEAK_RSS=1` the process
/// ends by printing its peak resident memory (`VmHWM`, this process's own since `exec`; a
/// parent's `wait4` also counts the image it was started from).
fn report_peak_memory() {
    if std::env::var_os("FP8_TRAINER_REPORT_PEAK_RSS").is_none() {
        return;
    }
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    if let Some(kib) = status.lines().find_map(|l| l.strip_prefix("VmHWM:")) {
        eprintln!("peak RSS: {}", kib.trim());
    }
}
