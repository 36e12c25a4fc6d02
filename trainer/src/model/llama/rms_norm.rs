//! RMSNorm with Hugging Face parameter names (`weight`), as `LlamaRMSNorm`.

use burn::module::{Initializer, Module, Param};
use burn::tensor::{backend::Backend, Tensor, TensorPrimitive};

use crate::model::ops::rms_norm::composed;
use crate::model::ops::FusedRmsNorm;

/// `y = weight * x / sqrt(mean(x^2) + eps)` over the last dimension.
#[derive(Module, Debug)]
pub struct RmsNorm<B: Backend> {
    /// Scale, `[hidden_size]`, initialised to ones.
    pub weight: Param<Tensor<B, 1>>,
    /// `rms_norm_eps` of the config.
    pub eps: f64,
}

impl<B: Backend> RmsNorm<B> {
    /// A fresh RMSNorm (ones, lazily allocated).
    pub fn new(dim: usize, eps: f64, device: &B::Device) -> Self {
        Self {
            weight: Initializer::Ones.init([dim], device),
            eps,
        }
    }
}

impl<B: FusedRmsNorm> RmsNorm<B> {
    /// Normalises over the last dimension of `x` (the fused op where the backend has it).
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let w = self.weight.val().into_primitive().tensor();
        match B::fused_rms_norm(x.into_primitive().tensor(), w, self.eps) {
            Ok(y) => Tensor::from_primitive(TensorPrimitive::Float(y)),
            Err((x, _)) => composed(
                Tensor::from_primitive(TensorPrimitive::Float(x)),
                self.weight.val(),
                self.eps,
            ),
        }
    }
}
