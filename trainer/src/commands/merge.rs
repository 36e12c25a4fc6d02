//! `fp8-trainer merge`: a LoRA adapter folder merged into its base as a full Hugging Face
//! checkpoint (`W + scaling * B @ A` in every adapted projection, as PEFT's
//! `merge_and_unload`), which every command and `transformers` load without PEFT.

use std::path::{Path, PathBuf};

use clap::Args;
use datasets::atomic::{replace_dir, write_atomic};

use crate::checkpoint::{adapter_and_base, load_checkpoint, staging_dir, write_checkpoint_files};
use crate::device::CpuBackend;
use crate::error::Error;
use crate::model::lora::is_adapter_dir;
use crate::model::ModelOptions;

/// `merge`'s arguments.
#[derive(Args, Debug)]
pub struct MergeArgs {
    /// The adapter folder (adapter_config.json, adapter_model.safetensors), e.g. a LoRA job's
    /// `checkpoints/step-N`; its base is `base_model_name_or_path`.
    #[arg(long)]
    pub adapter: PathBuf,
    /// The folder to write: config.json, model.safetensors and the tokenizer's files (the
    /// adapter folder's, else the base's).
    #[arg(long)]
    pub out: PathBuf,
    /// Replace `--out` if it exists.
    #[arg(long)]
    pub overwrite: bool,
}

/// The tokenizer and generation files a merged checkpoint takes along.
const CARRIED_FILES: [&str; 4] = [
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    crate::train::checkpoints::GENERATION_CONFIG_FILE,
];

/// Runs `merge`; returns what to print.
pub fn run_merge(args: &MergeArgs) -> Result<String, Error> {
    if !is_adapter_dir(&args.adapter) {
        return Err(Error::Argument {
            flag: "--adapter",
            message: format!(
                "{} is not a LoRA adapter folder (adapter_config.json without config.json)",
                args.adapter.display()
            ),
        });
    }
    if args.out.exists() && !args.overwrite {
        return Err(Error::Argument {
            flag: "--out",
            message: format!(
                "{} exists; give another folder or --overwrite to replace it",
                args.out.display()
            ),
        });
    }
    let (config, base) = adapter_and_base(&args.adapter)?;
    let device = Default::default();
    let mut model =
        load_checkpoint::<CpuBackend>(&args.adapter, &ModelOptions::default(), &device)?;
    model.merge_lora();
    let (staging, retired) = staging_dir(&args.out).map_err(Error::io(&args.out))?;
    let written = (|| -> Result<(), Error> {
        write_checkpoint_files(&model, &staging)?;
        for name in CARRIED_FILES {
            if let Some(from) = [&args.adapter, &base]
                .into_iter()
                .map(|dir| dir.join(name))
                .find(|p| p.is_file())
            {
                copy_small(&from, &staging.join(name))?;
            }
        }
        Ok(())
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_dir_all(&staging);
        return Err(e);
    }
    replace_dir(&staging, &args.out, &retired).map_err(Error::io(&args.out))?;
    Ok(format!(
        "merged {} (LoRA r {}, scaling {}) into {} -> {}",
        args.adapter.display(),
        config.lora.r,
        config.lora.scaling(),
        base.display(),
        args.out.display()
    ))
}

/// Copies a tokenizer-sized file (read with the input limits, written atomically).
fn copy_small(from: &Path, to: &Path) -> Result<(), Error> {
    let bytes =
        datasets::input::read_limited(from, datasets::input::TOKENIZER_LIMIT, "tokenizer file")
            .map_err(Error::io(from))?;
    write_atomic(to, &bytes).map_err(Error::io(to))
}
