//! The `fp8-trainer` command line: the subcommands' arguments (clap) and [`run`], which
//! dispatches one parsed command and returns what to print. `main.rs` parses, calls [`run`] and
//! turns its result into output and an exit code; nothing else.

pub mod bench;
pub mod compare;
pub mod dump_step;
pub mod eval;
pub mod generate;
pub mod import;
pub mod logits;
pub mod merge;
pub mod orchestrator;
pub mod train;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use fp8_backend::{BaseStorage, Fp8Policy, Precision};

use crate::error::{Error, Exit};
use crate::model::ModelConfig;
use crate::train::Progress;

/// `fp8-trainer`.
#[derive(Parser)]
#[command(
    name = "fp8-trainer",
    version,
    about = "Fine-tune language models (the GPT-2 family) with FP8 linear layers"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Subcommand)]
pub enum Command {
    /// Run a fine-tuning job from a JSON config; writes runs/<name>/ (metrics, plots, checkpoints).
    Train(train::TrainArgs),
    /// The loss-parity experiment and its sweeps: the job per precision, CSCALE bias and seed;
    /// reuses finished runs; summary.csv, report.json / report.md, loss plots with the gap.
    Compare(compare::CompareArgs),
    /// Loss / perplexity (and accuracy on classification data) of a checkpoint.
    Eval(eval::EvalArgs),
    /// One forward/backward on the job's first batch: loss + every gradient (HF names) to safetensors.
    DumpStep(dump_step::DumpStepArgs),
    /// Write the logits of one sequence as JSON: {"logits": [[...vocab...] per position]}.
    Logits(logits::LogitsArgs),
    /// Continue a prompt, streaming the text (greedy with --temperature 0, else temperature /
    /// top-k / top-p sampling; --num-samples for several).
    Generate(generate::GenerateArgs),
    /// Write a GGUF file (llama.cpp, Ollama) as a Hugging Face folder: weights dequantized to
    /// f32, config, tokenizer and chat template from its metadata.
    Import(import::ImportArgs),
    /// Merge a LoRA adapter folder (PEFT's layout) into its base: a full Hugging Face folder.
    Merge(merge::MergeArgs),
    /// Time training steps of a job per device and precision (and the PyTorch peer with
    /// --peer): tokens/s, GEMM share, peak memory, ratios.
    Bench(bench::BenchArgs),
    /// Coordinate a multi-node data-parallel job: burn-collective's global orchestrator, which
    /// the nodes (`nodes.orchestrator` in their configs) join; runs until stopped.
    Orchestrator(orchestrator::OrchestratorArgs),
}

/// How a command ended, when it did not fail.
#[derive(Debug, Default)]
pub struct Done {
    /// Printed to standard output.
    pub output: Option<String>,
    /// Printed to standard error.
    pub note: Option<String>,
    /// How the process ends (success, or interrupted after Ctrl-C).
    pub exit: Exit,
}

impl Done {
    fn printing(output: String) -> Self {
        Self {
            output: Some(output),
            ..Self::default()
        }
    }
}

/// Runs one command. `stop` is set by the binary's Ctrl-C handler (long-running commands save
/// a checkpoint and return); `progress` shows training steps; `stdout` takes what a command
/// writes as it goes (`generate` streams its text) instead of returning it in [`Done`].
pub fn run(
    command: Command,
    stop: Arc<AtomicBool>,
    progress: &mut dyn Progress,
    stdout: &mut dyn std::io::Write,
) -> Result<Done, Error> {
    // How FP8 operands are multiplied on the CPU: a misspelt value is bad input, said before
    // anything runs (the backend would only warn and take the default).
    fp8_backend::kernel::bf16_gemm::CpuGemm::from_env().map_err(|message| Error::Argument {
        flag: fp8_backend::kernel::bf16_gemm::CPU_GEMM_ENV,
        message,
    })?;
    // And on a GPU with FP8 MMA (builds with `fp8-mma`); checked in every build, so that a
    // misspelt value is found before a GPU job rather than on the GPU.
    fp8_backend::kernel::gpu_gemm_f32_from_env().map_err(|message| Error::Argument {
        flag: fp8_backend::kernel::GPU_GEMM_ENV,
        message,
    })?;
    match command {
        Command::Train(args) => train::run_train(&args, stop, progress),
        Command::Compare(args) => Ok(match compare::run_compare(&args, stop, progress)? {
            Some(outcome) => Done::printing(compare::summary_table(&outcome)),
            None => Done {
                exit: Exit::Interrupted,
                ..Done::default()
            },
        }),
        Command::Eval(args) => Ok(Done::printing(eval::run_eval(&args)?.summary())),
        Command::DumpStep(args) => {
            let loss = dump_step::run_dump_step(&args)?;
            Ok(Done::printing(format!("loss {loss}")))
        }
        Command::Logits(args) => logits::run_logits(&args).map(|()| Done::default()),
        Command::Generate(args) => generate::run_generate(&args, stdout).map(|()| Done::default()),
        Command::Bench(args) => bench::run_bench(&args).map(Done::printing),
        Command::Import(args) => import::run_import(&args).map(|s| Done::printing(s.summary())),
        Command::Merge(args) => merge::run_merge(&args).map(Done::printing),
        Command::Orchestrator(args) => {
            orchestrator::run_orchestrator(&args).map(|()| Done::default())
        }
    }
}

/// Parses `1,2,3` into token ids (`flag` names the argument in errors).
pub fn parse_token_list(flag: &'static str, list: &str) -> Result<Vec<u32>, Error> {
    let tokens = list
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<u32>().map_err(|_| Error::Argument {
                flag,
                message: format!("`{s}` is not a token id"),
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    if tokens.is_empty() {
        return Err(Error::Argument {
            flag,
            message: "no tokens given".into(),
        });
    }
    Ok(tokens)
}

/// Checks tokens against the model's vocabulary and context length.
pub fn check_tokens(flag: &'static str, tokens: &[u32], model: &ModelConfig) -> Result<(), Error> {
    let (vocab_size, positions) = (model.vocab_size(), model.max_positions());
    if let Some(bad) = tokens.iter().find(|&&t| t as usize >= vocab_size) {
        return Err(Error::Argument {
            flag,
            message: format!("token {bad} is outside the vocabulary (vocab_size = {vocab_size})"),
        });
    }
    if tokens.len() > positions {
        return Err(Error::Argument {
            flag,
            message: format!(
                "{} tokens exceed the context length ({} = {positions})",
                tokens.len(),
                model.max_positions_field()
            ),
        });
    }
    Ok(())
}

/// One FP8-CSCALE bias of `--cscale-biases` (clap's parser: a bad one is a usage error, exit
/// 2): the range `precision.cscale_bias` takes in a job config.
pub fn cscale_bias_arg(s: &str) -> Result<i32, String> {
    let max = fp8_backend::MAX_BIAS;
    let bias: i32 = s
        .trim()
        .parse()
        .map_err(|_| format!("`{s}` is not an integer bias"))?;
    if !(-max..=max).contains(&bias) {
        return Err(format!(
            "{bias} is outside -{max} ..= {max} (scales 2^-{max} ..= 2^{max}), the range of \
             `precision.cscale_bias`"
        ));
    }
    Ok(bias)
}

/// The FP8 policy of `--precision`: the job config's defaults for that mode (Graphcore
/// formats, margins 0/0/3, CSCALE bias 0, every layer).
fn policy_of(precision: Precision) -> Fp8Policy {
    Fp8Policy::with_mode(precision)
}

/// `--base-storage` of `eval` and `generate` (clap's parser: a bad value is a usage error,
/// exit 2).
pub fn base_storage_arg(s: &str) -> Result<BaseStorage, String> {
    match s {
        "f32" => Ok(BaseStorage::F32),
        "fp8" => Ok(BaseStorage::Fp8),
        other => Err(format!("`{other}` is not one of f32, fp8")),
    }
}

/// What loads the projection weights of an inference model (`eval`, `generate`) as their FP8
/// cast under `policy` (`--base-storage fp8`; docs/design.md, "FP8-stored base weights"): the
/// same cast the forward makes of the f32 weight at every call, made once as the checkpoint is
/// read, so the f32 projections are never whole in memory. `None` for `f32`. Refused (exit 2,
/// naming the flag) where the forward would not cast the weight so: a precision without FP8
/// casts, and `fp8-delayed`, whose weight bias comes from the checkpoint's amax history rather
/// than the weight's own amax.
fn inference_storage(
    checkpoint: &std::path::Path,
    policy: &mut Fp8Policy,
    storage: BaseStorage,
) -> Result<Option<crate::model::base_storage::BaseStorage>, Error> {
    if storage == BaseStorage::F32 {
        return Ok(None);
    }
    let refuse = |message: String| Error::Argument {
        flag: "--base-storage",
        message,
    };
    if policy.rule_for(fp8_backend::Role::Weight).is_none() {
        return Err(refuse(format!(
            "fp8 keeps each projection weight as the FP8 cast the precision makes of it, and \
             {} makes none: use an FP8 precision (fp8-amax, fp8-cscale), or f32",
            policy.mode
        )));
    }
    if policy.mode == Precision::Fp8Delayed {
        return Err(refuse(
            "fp8 is not offered with fp8-delayed: its weight casts take their bias from the \
             checkpoint's amax history, not from the weight's own amax, so no cast made at load \
             time is theirs; use f32"
                .into(),
        ));
    }
    policy.base_storage = BaseStorage::Fp8;
    let config = crate::job::assemble::model_config_of_checkpoint(checkpoint)?;
    Ok(crate::model::base_storage::BaseStorage::new(
        &config, policy,
    ))
}

/// The line that says how many projection weights of an inference model are FP8-stored, if
/// any are.
fn stored_base_line<B: burn::tensor::backend::Backend>(
    model: &crate::model::Model<B>,
) -> Option<String> {
    let (stored, bytes) = model.stored_base();
    (stored > 0).then(|| {
        format!(
            "base storage: {stored} projection weights as their FP8 cast, {:.1} MB (f32: {:.1} \
             MB)",
            bytes as f64 / 1e6,
            4.0 * bytes as f64 / 1e6
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_lists_parse_and_fail_with_the_flag_named() {
        assert_eq!(
            parse_token_list("--tokens", "1, 2,3").unwrap(),
            vec![1, 2, 3]
        );
        let err = parse_token_list("--tokens", "1,x").unwrap_err();
        assert_eq!(err.exit_code(), 2);
        assert!(err.to_string().contains("--tokens") && err.to_string().contains("`x`"));
        assert!(parse_token_list("--tokens", "").is_err());
        let tiny = ModelConfig::preset("tiny").unwrap();
        assert_eq!((tiny.vocab_size(), tiny.max_positions()), (512, 64));
        assert!(check_tokens("--tokens", &[511], &tiny).is_ok());
        assert!(check_tokens("--tokens", &[511, 512], &tiny).is_err());
        assert!(check_tokens("--tokens", &[0; 65], &tiny).is_err());
    }
}
