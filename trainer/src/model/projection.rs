//! Projections: the linear layers of a family's blocks (GPT-2's `Conv1D` layers `attn.c_attn`,
//! `attn.c_proj`, `mlp.c_fc`, `mlp.c_proj`), the only layers that can compute in FP8. Shared by
//! every family; each family lists its projections with their names
//! ([`crate::model::CausalLm::projections`]) and [`crate::model::Model::set_fp8`] gives them
//! their FP8 sites.
//!
//! The weight is `[d_input, d_output]`, exactly the layout of Hugging Face's `Conv1D` weight, so
//! GPT-2's checkpoint tensors are used without transposing. An FP8 projection carries its
//! [`Fp8Site`] (its Hugging Face module name and the model's FP8 context) and calls
//! [`fp8_linear`]; a projection the layer filter excludes (or any projection with FP8 off)
//! computes `x @ W + b` itself, as one 2-D product over all rows, which in f32 gives the same
//! bits as an FP8 site whose policy is off.

use burn::module::{Initializer, Module, Param};
use burn::tensor::{backend::Backend, Tensor};
use fp8_backend::{fp8_linear, Fp8LinearOps, Fp8Site};

/// A Conv1D projection: `y = x @ weight + bias`.
#[derive(Module, Debug)]
pub struct Projection<B: Backend> {
    /// `[d_input, d_output]`
    pub weight: Param<Tensor<B, 2>>,
    /// `[d_output]`
    pub bias: Param<Tensor<B, 1>>,
    /// Set when the layer computes in FP8.
    pub fp8: Option<Fp8Site>,
}

impl<B: Backend> Projection<B> {
    /// A projection initialised as `modeling_gpt2.py`'s `_init_weights`: weight ~ N(0, std),
    /// bias 0 (lazily allocated).
    pub fn new(d_input: usize, d_output: usize, std: f64, device: &B::Device) -> Self {
        Self {
            weight: Initializer::Normal { mean: 0.0, std }.init([d_input, d_output], device),
            bias: Initializer::Zeros.init([d_output], device),
            fp8: None,
        }
    }
}

impl<B: Fp8LinearOps> Projection<B> {
    /// `[..., d_input] -> [..., d_output]`.
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        match &self.fp8 {
            Some(site) => fp8_linear(x, self.weight.val(), Some(self.bias.val()), site),
            None => {
                // One 2-D product over all rows, as `fp8_backend::kernel::linear` computes it
                // (so a site with FP8 off gives these bits).
                let mut dims = x.dims();
                let d_in = dims[D - 1];
                let rows = x.shape().num_elements() / d_in.max(1);
                let y =
                    x.reshape([rows, d_in]).matmul(self.weight.val()) + self.bias.val().unsqueeze();
                dims[D - 1] = y.dims()[1];
                y.reshape(dims)
            }
        }
    }
}
