//! fp8-trainer: fine-tuning GPT-2 family models (gpt2, distilgpt2, Cerebras-GPT) on Burn with
//! FP8 linear layers, after Graphcore's FP8-AMAX method (Perez et al. 2023, arXiv 2309.17224).
//!
//! This crate holds the model ([`model`]: GPT-2 with Hugging Face names and layout, its
//! architecture config, losses and sampling), checkpoints ([`checkpoint`]: strict loading of hub
//! folders, atomic saving that `transformers` reads), jobs ([`job`]: the typed config and its
//! assembly), the [`train`] loop with checkpoints and exact resume, and the `fp8-trainer`
//! command line ([`commands`], one [`Error`] type). The contracts are in `docs/design.md`.
//!
//! ```text
//! cargo run --release -p trainer -- train --config configs/quickstart.json
//! cargo run --release -p trainer -- logits --checkpoint tests/fixtures/gpt2-tiny --tokens 1,2,3 --out logits.json
//! ```

/// Calls `f::<B>(args..., device)` with the inner backend `B` and device of a job's
/// [`job::Device`]; a device whose cargo feature is off gives `Error::DeviceUnavailable`.
/// (Generic functions cannot be passed around uninstantiated, hence a macro.)
macro_rules! on_device {
    ($device:expr, $f:ident ( $($arg:expr),* $(,)? )) => {
        match $device {
            $crate::job::Device::Cpu => $f::<burn::backend::Flex>(
                $($arg,)* burn::backend::flex::FlexDevice,
            ),
            $crate::job::Device::Ndarray => $f::<burn::backend::NdArray<f32>>(
                $($arg,)* burn::backend::ndarray::NdArrayDevice::Cpu,
            ),
            #[cfg(feature = "wgpu")]
            $crate::job::Device::Wgpu => $f::<burn::backend::Wgpu>(
                $($arg,)* burn::backend::wgpu::WgpuDevice::default(),
            ),
            #[cfg(feature = "cuda")]
            $crate::job::Device::Cuda => $f::<burn::backend::Cuda>(
                $($arg,)* burn::backend::cuda::CudaDevice::default(),
            ),
            #[allow(unreachable_patterns)]
            other => Err($crate::Error::DeviceUnavailable(other)),
        }
    };
}

pub mod checkpoint;
pub mod commands;
pub mod error;
pub mod host;
pub mod job;
pub mod logging;
pub mod model;
pub mod train;

pub use checkpoint::{load_checkpoint, save_checkpoint, CheckpointError};
pub use error::Error;
pub use model::{cross_entropy, Activation, ConfigError, Gpt2, Gpt2Config, ModelOptions};
