//! The projection layers of a block (HF `Conv1D`: `attn.c_attn`, `attn.c_proj`, `mlp.c_fc`,
//! `mlp.c_proj`) and the per-layer FP8 switch.
//!
//! Each projection is a `burn::nn::Linear`, whose weight is `[d_input, d_output]`: exactly the
//! layout of Hugging Face's `Conv1D` weight, so checkpoint tensors are used without transposing.
//! When the layer is FP8 it calls `Linear::forward`, i.e. the backend's `linear` op, which the
//! `Fp8<B>` decorator intercepts. When the layer filter excludes it, it computes the same
//! `matmul + add` itself (the ops of Burn's default `linear`, so in f32 both paths give
//! bit-identical results) and the backend never sees a `linear` call.

use burn::module::Initializer;
use burn::nn::Linear;
use burn::tensor::{backend::Backend, Tensor};

/// Applies a projection; `fp8` says whether it goes through the backend's `linear` op.
pub fn project<B: Backend, const D: usize>(
    layer: &Linear<B>,
    x: Tensor<B, D>,
    fp8: bool,
) -> Tensor<B, D> {
    if fp8 {
        return layer.forward(x);
    }
    let y = x.matmul(layer.weight.val().unsqueeze());
    match &layer.bias {
        Some(bias) => y + bias.val().unsqueeze(),
        None => y,
    }
}

/// A projection initialised as `modeling_gpt2.py`'s `_init_weights`: weight ~ N(0, std), bias 0.
pub fn init_projection<B: Backend>(
    d_input: usize,
    d_output: usize,
    std: f64,
    device: &B::Device,
) -> Linear<B> {
    Linear {
        weight: Initializer::Normal { mean: 0.0, std }.init([d_input, d_output], device),
        bias: Some(Initializer::Zeros.init([d_output], device)),
    }
}
