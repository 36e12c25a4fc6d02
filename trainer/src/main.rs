//! `fp8-trainer`: parses the command line and calls the library; nothing else.
//! Exit codes (DESIGN.md): 0 success, 2 bad input, 1 anything else.

mod cli_progress;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use clap::{Args, Parser, Subcommand};
use datasets::TokenizerSpec;
use trainer::commands::compare::{run_compare, CompareArgs};
use trainer::commands::dump_step::{run_dump_step, DumpStepArgs};
use trainer::commands::eval::{run_eval, EvalArgs};
use trainer::commands::generate::Prompt;
use trainer::commands::train::{run_train, TrainArgs};
use trainer::commands::{
    parse_token_list, run_generate, run_logits, CommandError, GenerateArgs, LogitsArgs,
};
use trainer::generate::SamplingOptions;
use trainer::job::Device;
use trainer::precision::Precision;
use trainer::train::TrainOutcome;

#[derive(Parser)]
#[command(
    name = "fp8-trainer",
    version,
    about = "Fine-tune GPT-2 family models with FP8 linear layers"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a fine-tuning job from a JSON config; writes runs/<name>/ (metrics, plots, checkpoints).
    Train(TrainCli),
    /// The loss-parity experiment: the job once per precision, all curves in one plot.
    Compare(CompareCli),
    /// Loss / perplexity (and accuracy on classification data) of a checkpoint.
    Eval(EvalCli),
    /// One forward/backward on the job's first batch: loss + every gradient (HF names) to safetensors.
    DumpStep(DumpStepCli),
    /// Write the logits of one sequence as JSON: {"logits": [[...vocab...] per position]}.
    Logits(LogitsCli),
    /// Continue a prompt (greedy with --temperature 0, else top-k / temperature sampling).
    Generate(GenerateCli),
}

#[derive(Args)]
struct TrainCli {
    /// Job config (JSON; see configs/).
    #[arg(long)]
    config: PathBuf,
    /// Override a config value: --set optimizer.lr=3e-4 (JSON value, else a string). Repeatable.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    overrides: Vec<String>,
    /// Continue from the newest checkpoint in runs/<name>/checkpoints.
    #[arg(long, conflicts_with = "overwrite")]
    resume: bool,
    /// Start over even if runs/<name> holds checkpoints (deletes them).
    #[arg(long)]
    overwrite: bool,
}

#[derive(Args)]
struct CompareCli {
    /// Job config (JSON).
    #[arg(long)]
    config: PathBuf,
    /// Config overrides: key.sub=value.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    overrides: Vec<String>,
    /// Comma-separated precisions, e.g. fp32,fp8-amax.
    #[arg(long, value_delimiter = ',', default_value = "fp32,fp8-amax")]
    precisions: Vec<Precision>,
    /// Start each run over (deletes its checkpoints).
    #[arg(long)]
    overwrite: bool,
}

#[derive(Args)]
struct EvalCli {
    /// Checkpoint directory (config.json + model.safetensors).
    #[arg(long)]
    checkpoint: PathBuf,
    /// Text/JSONL file or folder to evaluate on.
    #[arg(long, required_unless_present = "config")]
    data: Option<PathBuf>,
    /// Or: a job config whose data section (validation split if any) and FP8 options to use.
    #[arg(long, conflicts_with = "data")]
    config: Option<PathBuf>,
    /// Config overrides with --config: key.sub=value.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    overrides: Vec<String>,
    /// fp32 | fp8-amax | fp8-cscale (default: the job's, or fp32 with --data).
    #[arg(long)]
    precision: Option<Precision>,
    /// Tokenizer with --data: gpt2, bytes, or a tokenizer.json / folder (default: the checkpoint's).
    #[arg(long)]
    tokenizer: Option<TokenizerSpec>,
    /// Tokens per sequence with --data (default min(256, n_positions)).
    #[arg(long)]
    seq_len: Option<usize>,
    /// Sequences (or classification examples) per batch.
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
    /// Batches to evaluate (0 = all).
    #[arg(long, default_value_t = 0)]
    max_batches: usize,
    /// Also write the result as JSON.
    #[arg(long)]
    out: Option<PathBuf>,
    /// cpu | wgpu | cuda (default: the job's with --config, else cpu; wgpu and cuda need the
    /// cargo feature of that name).
    #[arg(long)]
    device: Option<Device>,
}

#[derive(Args)]
struct DumpStepCli {
    /// Job config (JSON).
    #[arg(long)]
    config: PathBuf,
    /// Config overrides: key.sub=value.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    overrides: Vec<String>,
    /// Output safetensors file.
    #[arg(long)]
    out: PathBuf,
    /// Token ids for the batch instead of the data (JSON list, or an object with `tokens`).
    #[arg(long)]
    tokens: Option<PathBuf>,
}

#[derive(Args)]
struct LogitsCli {
    /// Checkpoint directory (config.json + model.safetensors).
    #[arg(long)]
    checkpoint: PathBuf,
    /// Token ids, comma-separated: 1,2,3.
    #[arg(long)]
    tokens: String,
    /// Output JSON file.
    #[arg(long)]
    out: PathBuf,
    /// fp32 | fp8-amax | fp8-cscale.
    #[arg(long, default_value = "fp32")]
    precision: Precision,
}

#[derive(Args)]
struct GenerateCli {
    /// Checkpoint directory (config.json + model.safetensors).
    #[arg(long)]
    checkpoint: PathBuf,
    /// Text to continue; prints the prompt and its continuation.
    #[arg(long, conflicts_with = "tokens", required_unless_present = "tokens")]
    prompt: Option<String>,
    /// Token ids to continue, comma-separated; the continuation is printed as ids.
    #[arg(long)]
    tokens: Option<String>,
    /// Tokenizer for --prompt: gpt2, bytes, or a tokenizer.json / folder (default: the checkpoint's own).
    #[arg(long)]
    tokenizer: Option<TokenizerSpec>,
    /// Tokens to append.
    #[arg(long, default_value_t = 100)]
    max_new_tokens: usize,
    /// Softmax temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.8)]
    temperature: f64,
    /// Sample among the k most likely tokens only.
    #[arg(long, default_value_t = 200)]
    top_k: usize,
    /// Seed of the sampler.
    #[arg(long, default_value_t = 1337)]
    seed: u64,
    /// fp32 | fp8-amax | fp8-cscale.
    #[arg(long, default_value = "fp32")]
    precision: Precision,
}

/// `train`: Ctrl-C sets the stop flag (a checkpoint is saved after the current step);
/// exit 130 when interrupted.
fn train(a: TrainCli) -> ExitCode {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    if let Err(e) = ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst)) {
        eprintln!("warning: cannot install the Ctrl-C handler: {e}");
    }
    let args = TrainArgs {
        config: a.config,
        overrides: a.overrides,
        resume: a.resume,
        overwrite: a.overwrite,
    };
    match run_train(&args, stop, &mut cli_progress::TermProgress::new()) {
        Ok(TrainOutcome::Finished { .. }) => ExitCode::SUCCESS,
        Ok(TrainOutcome::Interrupted { step: 0, .. }) => {
            eprintln!("interrupted before the first step; nothing saved");
            ExitCode::from(130)
        }
        Ok(TrainOutcome::Interrupted { step, run_dir }) => {
            eprintln!(
                "interrupted at step {step}; checkpoint saved in {}/checkpoints (continue with --resume)",
                run_dir.display()
            );
            ExitCode::from(130)
        }
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::from(error.exit_code())
        }
    }
}

/// `compare`: like `train`, once per precision.
fn compare(a: CompareCli) -> ExitCode {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    if let Err(e) = ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst)) {
        eprintln!("warning: cannot install the Ctrl-C handler: {e}");
    }
    let args = CompareArgs {
        config: a.config,
        overrides: a.overrides,
        precisions: a.precisions,
        overwrite: a.overwrite,
    };
    match run_compare(&args, stop, &mut cli_progress::TermProgress::new()) {
        Ok(Some(outcome)) => {
            let fmt = |v: Option<f32>| v.map(|v| format!("{v:.4}")).unwrap_or_else(|| "-".into());
            let base = outcome.rows.first().cloned();
            println!(
                "precision    final val   best val   train (last 10%)   tokens/s   val gap to {}",
                base.as_ref().map(|b| b.precision.as_str()).unwrap_or("-")
            );
            for r in &outcome.rows {
                let gap = match (
                    r.final_val_loss,
                    base.as_ref().and_then(|b| b.final_val_loss),
                ) {
                    (Some(v), Some(b)) => format!("{:+.4} ({:+.2}%)", v - b, 100.0 * (v - b) / b),
                    _ => "-".into(),
                };
                println!(
                    "{:<12} {:>9}  {:>9}  {:>17}  {:>9}   {gap}",
                    r.precision.as_str(),
                    fmt(r.final_val_loss),
                    fmt(r.best_val_loss),
                    fmt(r.final_train_loss),
                    r.tokens_per_s
                        .map(|s| format!("{s:.0}"))
                        .unwrap_or_else(|| "-".into()),
                );
            }
            println!(
                "loss curves: {}/loss.png; summary: {}/summary.csv",
                outcome.dir.display(),
                outcome.dir.display()
            );
            ExitCode::SUCCESS
        }
        Ok(None) => ExitCode::from(130),
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::from(error.exit_code())
        }
    }
}

/// `eval`: prints the result.
fn eval(a: EvalCli) -> Result<(), trainer::train::TrainError> {
    let r = run_eval(&EvalArgs {
        checkpoint: a.checkpoint,
        data: a.data,
        config: a.config,
        overrides: a.overrides,
        precision: a.precision,
        tokenizer: a.tokenizer,
        seq_len: a.seq_len,
        batch_size: a.batch_size,
        max_batches: a.max_batches,
        out: a.out,
        device: a.device,
    })?;
    if let (Some(loss), Some(ppl)) = (r.loss, r.perplexity) {
        println!(
            "precision {}: loss {loss:.4}, perplexity {ppl:.2} over {} tokens",
            r.precision, r.tokens
        );
    }
    if let Some(acc) = r.accuracy {
        println!(
            "precision {}: accuracy {:.4} over {} examples",
            r.precision, acc, r.examples
        );
    }
    Ok(())
}

fn run(command: Command) -> Result<(), CommandError> {
    match command {
        Command::Train(_) | Command::Compare(_) | Command::Eval(_) | Command::DumpStep(_) => {
            unreachable!("handled in main")
        }
        Command::Logits(a) => run_logits(&LogitsArgs {
            checkpoint: a.checkpoint,
            tokens: parse_token_list("--tokens", &a.tokens)?,
            out: a.out,
            precision: a.precision,
        }),
        Command::Generate(a) => {
            let prompt = match (a.prompt, a.tokens) {
                (_, Some(tokens)) => Prompt::Tokens(parse_token_list("--tokens", &tokens)?),
                (Some(text), None) => Prompt::Text(text),
                (None, None) => unreachable!("clap requires --prompt or --tokens"),
            };
            let sampling = SamplingOptions {
                max_new_tokens: a.max_new_tokens,
                temperature: a.temperature,
                top_k: Some(a.top_k),
                seed: a.seed,
                stop_token: None,
                vocab_limit: None,
            };
            let args = GenerateArgs {
                checkpoint: a.checkpoint,
                prompt,
                tokenizer: a.tokenizer,
                sampling,
                precision: a.precision,
            };
            let text = run_generate(&args)?;
            println!("{text}");
            Ok(())
        }
    }
}

/// Burn's wgpu runtime panics (on its own thread) when no GPU adapter exists; say what to do
/// instead of printing a backtrace. Every other panic keeps the default report.
fn report_missing_gpu_adapter() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        if message.contains("No possible adapter available") {
            eprintln!(
                "error: device `wgpu`: no usable GPU adapter (Vulkan, Metal or DX12) was found. \
                 Install the GPU's Vulkan driver, or Mesa's software one (Debian/Ubuntu: \
                 `apt-get install mesa-vulkan-drivers`), or use \"device\": \"cpu\""
            );
            std::process::exit(1);
        }
        default(info);
    }));
}

fn main() -> ExitCode {
    report_missing_gpu_adapter();
    let job_result = match Cli::parse().command {
        Command::Train(a) => return train(a),
        Command::Compare(a) => return compare(a),
        Command::Eval(a) => eval(a),
        Command::DumpStep(a) => run_dump_step(&DumpStepArgs {
            config: a.config,
            overrides: a.overrides,
            out: a.out,
            tokens: a.tokens,
        })
        .map(|loss| println!("loss {loss}")),
        command => {
            return match run(command) {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    eprintln!("error: {error}");
                    ExitCode::from(error.exit_code())
                }
            }
        }
    };
    match job_result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::from(error.exit_code())
        }
    }
}
