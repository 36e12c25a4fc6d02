//! The GPT-2 model, one concept per file: the architecture (`config.rs`, `presets.rs`), the
//! modules, parameters by Hugging Face name, the loss and evaluation passes, and sampling.

pub mod attention;
pub mod block;
pub mod config;
pub mod cross_entropy;
pub mod gpt2;
pub mod layer_norm;
pub mod loss;
pub mod mlp;
pub mod names;
mod presets;
pub mod projection;
pub mod sampling;

pub use config::{Activation, ConfigError, Gpt2Config};
pub use gpt2::{cross_entropy, Gpt2, Gpt2Model, LmHead, ModelOptions};
pub use projection::PROJECTIONS;

/// What a backend needs to run the model: named FP8 linear layers and the fused loss (both
/// implemented for `Fp8<B>` and `Autodiff<Fp8<B>>`).
pub trait ModelBackend: fp8_backend::Fp8LinearOps + cross_entropy::FusedCrossEntropy {}
impl<B: fp8_backend::Fp8LinearOps + cross_entropy::FusedCrossEntropy> ModelBackend for B {}
