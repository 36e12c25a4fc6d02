//! Layer normalisation with Hugging Face parameter names (`weight`, `bias`; Burn's own
//! `nn::LayerNorm` calls them `gamma`, `beta`, which would need a remapping table).

use burn::module::{Initializer, Module, Param};
use burn::tensor::{backend::Backend, Tensor, TensorPrimitive};

use crate::model::ops::FusedLayerNorm;

/// `y = (x - mean) / sqrt(var + eps) * weight + bias` over the last dimension, with the biased
/// variance, as `torch.nn.LayerNorm`.
#[derive(Module, Debug)]
pub struct LayerNorm<B: Backend> {
    /// Scale, `[n_embd]`, initialised to ones.
    pub weight: Param<Tensor<B, 1>>,
    /// Shift, `[n_embd]`, initialised to zeros.
    pub bias: Param<Tensor<B, 1>>,
    /// `layer_norm_epsilon` of the config.
    pub eps: f64,
}

impl<B: Backend> LayerNorm<B> {
    /// A fresh layer norm (ones and zeros, lazily allocated).
    pub fn new(dim: usize, eps: f64, device: &B::Device) -> Self {
        Self {
            weight: Initializer::Ones.init([dim], device),
            bias: Initializer::Zeros.init([dim], device),
            eps,
        }
    }
}

impl<B: FusedLayerNorm> LayerNorm<B> {
    /// Normalises over the last dimension of `x` (the fused op where the backend has it).
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let float = |t: Tensor<B, 1>| t.into_primitive().tensor();
        let (w, b) = (float(self.weight.val()), float(self.bias.val()));
        let x = match B::fused_layer_norm(x.into_primitive().tensor(), w, b, self.eps) {
            Ok(y) => return Tensor::from_primitive(TensorPrimitive::Float(y)),
            Err((x, _, _)) => Tensor::<B, D>::from_primitive(TensorPrimitive::Float(x)),
        };
        let (var, mean) = x.clone().var_mean_bias(D - 1);
        let x = (x - mean) / (var + self.eps).sqrt();
        x * self.weight.val().unsqueeze() + self.bias.val().unsqueeze()
    }
}
