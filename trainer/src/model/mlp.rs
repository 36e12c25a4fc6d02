//! The feed-forward half of a block: `c_proj(act(c_fc(x)))` (`GPT2MLP` in `modeling_gpt2.py`).

use burn::module::Module;
use burn::nn::{Dropout, DropoutConfig, Linear};
use burn::tensor::activation::{gelu, gelu_approximate};
use burn::tensor::{backend::Backend, Tensor};

use super::projection::{init_projection, project};
use crate::config::{Activation, Gpt2Config};

/// `mlp` of a block.
#[derive(Module, Debug)]
pub struct Mlp<B: Backend> {
    /// `[n_embd, n_inner]`
    pub c_fc: Linear<B>,
    /// `[n_inner, n_embd]`
    pub c_proj: Linear<B>,
    /// Applied to the output (HF `resid_pdrop`).
    pub dropout: Dropout,
    /// `activation_function` of the config.
    pub activation: Activation,
    /// `c_fc` calls the backend's `linear` (FP8) rather than `matmul + add`.
    pub c_fc_fp8: bool,
    /// `c_proj` calls the backend's `linear` (FP8) rather than `matmul + add`.
    pub c_proj_fp8: bool,
}

impl<B: Backend> Mlp<B> {
    /// A fresh MLP; `c_proj` gets the GPT-2 residual scaling `std / sqrt(2 * n_layer)`.
    pub fn new(config: &Gpt2Config, dropout: f64, fp8: [bool; 2], device: &B::Device) -> Self {
        let (c, f, std) = (config.n_embd, config.inner_dim(), config.initializer_range);
        Self {
            c_fc: init_projection(c, f, std, device),
            c_proj: init_projection(f, c, std / (2.0 * config.n_layer as f64).sqrt(), device),
            dropout: DropoutConfig::new(dropout).init(),
            activation: config.activation_function,
            c_fc_fp8: fp8[0],
            c_proj_fp8: fp8[1],
        }
    }

    /// `[B, T, n_embd] -> [B, T, n_embd]`
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let h = project(&self.c_fc, x, self.c_fc_fp8); // (B, T, n_inner)
        let h = match self.activation {
            // 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), HF `NewGELUActivation`.
            Activation::GeluNew => gelu_approximate(h),
            Activation::Gelu => gelu(h),
        };
        self.dropout
            .forward(project(&self.c_proj, h, self.c_proj_fp8))
    }
}
