//! The GPT-2 model, one concept per file.

pub mod attention;
pub mod block;
pub mod gpt2;
pub mod layer_norm;
pub mod mlp;
pub mod names;
pub mod projection;

pub use gpt2::{cross_entropy, Gpt2, Gpt2Model, LmHead, ModelOptions};
