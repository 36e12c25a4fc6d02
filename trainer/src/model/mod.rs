//! The GPT-2 model, one concept per file: the architecture (`config.rs`, `presets.rs`), the
//! modules, parameters by Hugging Face name, the loss and evaluation passes, and sampling.

pub mod attention;
pub mod block;
pub mod config;
pub mod cross_entropy;
pub mod fused;
pub mod fused_attention;
pub mod gpt2;
pub mod layer_norm;
pub mod loss;
pub mod mlp;
pub mod names;
mod presets;
pub mod projection;
pub mod sampling;
pub mod vmath;

pub use config::{Activation, ConfigError, Gpt2Config};
pub use gpt2::{cross_entropy, Gpt2, Gpt2Model, LmHead, ModelOptions};
pub use projection::PROJECTIONS;

/// What a backend needs to run the model: named FP8 linear layers, the fused loss, element-wise
/// ops and attention (all implemented for `Fp8<B>` and `Autodiff<Fp8<B>>`; the fused ones run on
/// the CPU backends and decline elsewhere).
pub trait ModelBackend:
    fp8_backend::Fp8LinearOps
    + cross_entropy::FusedCrossEntropy
    + fused::FusedOps
    + fused_attention::FusedAttention
{
}
impl<
        B: fp8_backend::Fp8LinearOps
            + cross_entropy::FusedCrossEntropy
            + fused::FusedOps
            + fused_attention::FusedAttention,
    > ModelBackend for B
{
}
