//! fp8-trainer: fine-tuning language models (the GPT-2 family: gpt2, distilgpt2, Cerebras-GPT)
//! on Burn with FP8 linear layers, after Graphcore's FP8-AMAX method (Perez et al. 2023, arXiv
//! 2309.17224).
//!
//! This crate holds the models ([`model`]: one folder per family, with Hugging Face names and
//! layout, architecture configs, fused ops, losses and sampling), checkpoints ([`checkpoint`]: strict loading of hub
//! folders, atomic saving that `transformers` reads), jobs ([`job`]: the typed config and its
//! assembly), the [`train`] loop with checkpoints and exact resume, and the `fp8-trainer`
//! command line ([`commands`], one [`Error`] type). The contracts are in `docs/design.md`.
//!
//! ```text
//! cargo run --release -p trainer -- train --config configs/quickstart.json
//! cargo run --release -p trainer -- logits --checkpoint tests/fixtures/gpt2-tiny --tokens 1,2,3 --out logits.json
//! ```

#[macro_use]
pub mod device;

pub mod checkpoint;
pub mod commands;
pub mod error;
pub mod gguf;
pub mod host;
pub mod job;
pub mod logging;
pub mod model;
pub mod train;

pub use checkpoint::{load_checkpoint, save_checkpoint, CheckpointError};
pub use error::{Error, Exit, FieldError};
pub use model::{Activation, Gpt2, Gpt2Config, Model, ModelConfig, ModelConfigError, ModelOptions};
