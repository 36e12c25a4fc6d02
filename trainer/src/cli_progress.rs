//! The binary's view of a running job: an `indicatif` progress bar (step, loss, tokens/s, ETA)
//! on a terminal, plain log lines otherwise (CI logs, pipes, files).

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use trainer::train::run_dir::MetricsRow;
use trainer::train::Progress;

/// Bar on a terminal, lines elsewhere.
pub enum TermProgress {
    Bar(Option<ProgressBar>),
    Lines,
}

impl TermProgress {
    /// Picks the bar when stdout is a terminal.
    pub fn new() -> Self {
        if std::io::stdout().is_terminal() {
            Self::Bar(None)
        } else {
            Self::Lines
        }
    }
}

impl Progress for TermProgress {
    fn start(&mut self, first_step: u64, total_steps: u64) {
        if let Self::Bar(bar) = self {
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
            *bar = Some(pb);
        }
    }

    fn step(&mut self, row: &MetricsRow) {
        if let Self::Bar(Some(pb)) = self {
            pb.set_position(row.step);
            let loss = row
                .train_loss
                .map(|l| format!("{l:.4}"))
                .unwrap_or_default();
            let tps = row.tokens_per_s.unwrap_or(0.0);
            pb.set_message(format!("loss {loss} | {tps:.0} tok/s"));
        }
    }

    fn message(&mut self, line: &str) {
        match self {
            Self::Bar(Some(pb)) => pb.println(line),
            _ => println!("{line}"),
        }
    }

    fn finish(&mut self) {
        if let Self::Bar(Some(pb)) = self {
            pb.finish_and_clear();
        }
    }
}
