//! `fp8-trainer`: parses the command line and calls the library; nothing else.
//! Exit codes (DESIGN.md): 0 success, 2 bad input, 1 anything else.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use datasets::TokenizerSpec;
use trainer::commands::generate::Prompt;
use trainer::commands::{
    parse_token_list, run_generate, run_logits, CommandError, GenerateArgs, LogitsArgs,
};
use trainer::generate::SamplingOptions;
use trainer::precision::Precision;

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
    /// Write the logits of one sequence as JSON: {"logits": [[...vocab...] per position]}.
    Logits(LogitsCli),
    /// Continue a prompt (greedy with --temperature 0, else top-k / temperature sampling).
    Generate(GenerateCli),
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

fn run(cli: Cli) -> Result<(), CommandError> {
    match cli.command {
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

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::from(error.exit_code())
        }
    }
}
