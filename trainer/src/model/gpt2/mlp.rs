//! The feed-forward half of a block: `c_proj(act(c_fc(x)))` (`GPT2MLP` in `modeling_gpt2.py`).

use burn::module::Module;
use burn::nn::{Dropout, DropoutConfig};
use burn::tensor::activation::{gelu, gelu_approximate};
use burn::tensor::{backend::Backend, Tensor, TensorPrimitive};

use super::{Activation, Gpt2Config};
use crate::model::projection::{Layout, Projection};
use crate::model::ModelBackend;

/// `mlp` of a block.
#[derive(Module, Debug)]
pub struct Mlp<B: Backend> {
    /// `[n_embd, n_inner]`
    pub c_fc: Projection<B>,
    /// `[n_inner, n_embd]`
    pub c_proj: Projection<B>,
    /// Applied to the output (HF `resid_pdrop`).
    pub dropout: Dropout,
    /// `activation_function` of the config.
    pub activation: Activation,
}

impl<B: Backend> Mlp<B> {
    /// A fresh MLP; `c_proj` gets the GPT-2 residual scaling `std / sqrt(2 * n_layer)`.
    pub fn new(config: &Gpt2Config, dropout: f64, device: &B::Device) -> Self {
        let (c, f, std) = (config.n_embd, config.inner_dim(), config.initializer_range);
        let residual_std = std / (2.0 * config.n_layer as f64).sqrt();
        Self {
            c_fc: Projection::new((c, f), std, true, Layout::InOut, device),
            c_proj: Projection::new((f, c), residual_std, true, Layout::InOut, device),
            dropout: DropoutConfig::new(dropout).init(),
            activation: config.activation_function,
        }
    }
}

impl<B: ModelBackend> Mlp<B> {
    /// `[B, T, n_embd] -> [B, T, n_embd]`
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let h = self.c_fc.forward(x); // (B, T, n_inner)
        let h = match self.activation {
            // 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), HF `NewGELUActivation`.
            Activation::GeluNew => match B::fused_gelu_tanh(h.into_primitive().tensor()) {
                Ok(y) => Tensor::from_primitive(TensorPrimitive::Float(y)),
                Err(h) => gelu_approximate(Tensor::from_primitive(TensorPrimitive::Float(h))),
            },
            Activation::Gelu => gelu(h),
        };
        self.dropout.forward(self.c_proj.forward(h))
    }
}
