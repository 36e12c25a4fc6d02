//! The binary's view of a running job: an `indicatif` progress bar (step, loss, tokens/s, ETA)
//! on a terminal, with log lines drawn above it; plain log lines otherwise (CI logs, pipes).

use std::io::IsTerminal;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use log::Level;
use trainer::logging::TerminalSink;
use trainer::train::run_dir::MetricsRow;
use trainer::train::Progress;

/// The bar (when stdout is a terminal and a job runs), shared with the logger's sink.
pub struct TermProgress {
    terminal: bool,
    bar: Arc<Mutex<Option<ProgressBar>>>,
}

impl TermProgress {
    /// A bar when stdout is a terminal, else plain lines.
    pub fn new() -> Self {
        Self {
            terminal: std::io::stdout().is_terminal(),
            bar: Arc::new(Mutex::new(None)),
        }
    }

    /// Where log lines go: above the bar while one is shown; info to stdout, warnings and
    /// errors to stderr.
    pub fn terminal_sink(&self) -> TerminalSink {
        let bar = self.bar.clone();
        Box::new(move |level, line| {
            let bar = bar.lock().unwrap_or_else(|e| e.into_inner());
            match (bar.as_ref(), level) {
                (Some(pb), _) => pb.println(line),
                (None, Level::Info | Level::Debug | Level::Trace) => println!("{line}"),
                (None, _) => eprintln!("{line}"),
            }
        })
    }

    fn with_bar(&self, f: impl FnOnce(&mut Option<ProgressBar>)) {
        f(&mut self.bar.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

impl Progress for TermProgress {
    fn start(&mut self, first_step: u64, total_steps: u64) {
        if !self.terminal {
            return;
        }
        let pb = ProgressBar::new(total_steps);
        pb.set_style(
            ProgressStyle::with_template(
                "{bar:30.cyan/blue} step {pos}/{len} {msg} [{elapsed_precise} < {eta_precise}]",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        pb.set_position(first_step);
        pb.reset_eta();
        pb.enable_steady_tick(Duration::from_millis(500));
        self.with_bar(|bar| *bar = Some(pb));
    }

    fn step(&mut self, row: &MetricsRow) {
        self.with_bar(|bar| {
            if let Some(pb) = bar {
                pb.set_position(row.step);
                let loss = row
                    .train_loss
                    .map(|l| format!("{l:.4}"))
                    .unwrap_or_default();
                let tps = row.tokens_per_s.unwrap_or(0.0);
                pb.set_message(format!("loss {loss} | {tps:.0} tok/s"));
            }
        });
    }

    fn finish(&mut self) {
        self.with_bar(|bar| {
            if let Some(pb) = bar.take() {
                pb.finish_and_clear();
            }
        });
    }
}
