//! The feed-forward half of a decoder layer: `down_proj(silu(gate_proj(x)) * up_proj(x))`
//! (`LlamaMLP`, SwiGLU).

use burn::module::Module;
use burn::tensor::{backend::Backend, Tensor, TensorPrimitive};

use super::LlamaConfig;
use crate::model::ops::swiglu::composed;
use crate::model::projection::{Layout, Projection};
use crate::model::ModelBackend;

/// `mlp` of a decoder layer.
#[derive(Module, Debug)]
pub struct Mlp<B: Backend> {
    /// `[intermediate_size, hidden_size]`
    pub gate_proj: Projection<B>,
    /// `[intermediate_size, hidden_size]`
    pub up_proj: Projection<B>,
    /// `[hidden_size, intermediate_size]`
    pub down_proj: Projection<B>,
}

impl<B: Backend> Mlp<B> {
    /// A fresh MLP (`transformers`' `_init_weights`: N(0, initializer_range), zero biases).
    pub fn new(config: &LlamaConfig, device: &B::Device) -> Self {
        let (h, f, std) = (
            config.hidden_size,
            config.intermediate_size,
            config.initializer_range,
        );
        let bias = config.mlp_bias;
        Self {
            gate_proj: Projection::new((h, f), std, bias, Layout::OutIn, device),
            up_proj: Projection::new((h, f), std, bias, Layout::OutIn, device),
            down_proj: Projection::new((f, h), std, bias, Layout::OutIn, device),
        }
    }
}

impl<B: ModelBackend> Mlp<B> {
    /// `[B, T, hidden_size] -> [B, T, hidden_size]`
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let gate = self.gate_proj.forward(x.clone()); // (B, T, F)
        let up = self.up_proj.forward(x); // (B, T, F)
        let float = |t: Tensor<B, 3>| t.into_primitive().tensor();
        let h = match B::fused_swiglu(float(gate), float(up)) {
            Ok(h) => Tensor::from_primitive(TensorPrimitive::Float(h)),
            Err((gate, up)) => composed(
                Tensor::<B, 3>::from_primitive(TensorPrimitive::Float(gate)),
                Tensor::from_primitive(TensorPrimitive::Float(up)),
            ),
        };
        self.down_proj.forward(h)
    }
}
