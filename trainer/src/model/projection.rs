//! Projections: the linear layers of a family's blocks (GPT-2's `Conv1D` layers `attn.c_attn`,
//! `attn.c_proj`, `mlp.c_fc`, `mlp.c_proj`), the only layers that can compute in FP8. Shared by
//! every family; each family lists its projections with their names
//! ([`crate::model::CausalLm::projections`]) and [`crate::model::Model::set_fp8`] gives them
//! their FP8 sites.
//!
//! The weight is kept in the checkpoint's layout, so its tensors are used without transposing:
//! `[d_input, d_output]` for GPT-2's `Conv1D` ([`Layout::InOut`]), `[d_output, d_input]` for
//! the `nn.Linear` of the Llama family ([`Layout::OutIn`], multiplied as a transposed view).
//! The bias is optional (Llama has none, Qwen2 on q/k/v only). An FP8 projection carries its
//! [`Fp8Site`] (its Hugging Face module name and the model's FP8 context) and calls
//! [`fp8_linear`]; a projection the layer filter excludes (or any projection with FP8 off)
//! computes `x @ W + b` itself, as one 2-D product over all rows, which in f32 gives the same
//! bits as an FP8 site whose policy is off.

use burn::module::{Initializer, Module, Param};
use burn::nn::Dropout;
use burn::tensor::{backend::Backend, Tensor, TensorData};
use fp8_backend::{
    fp8_linear, fp8_linear_stored, Fp8LinearOps, Fp8Site, Fp8Weight, NonFiniteAmax, Role,
};

/// How a projection's weight is laid out (the checkpoint's layout).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// `[d_input, d_output]`: Hugging Face's `Conv1D` (GPT-2).
    InOut,
    /// `[d_output, d_input]`: `torch.nn.Linear` (the Llama family).
    OutIn,
}

/// A projection: `y = x @ W + bias`, `W` the weight in [`Layout::InOut`] (or its transpose).
#[derive(Module, Debug)]
pub struct Projection<B: Backend> {
    /// `[d_input, d_output]` or `[d_output, d_input]`, as `layout` says.
    pub weight: Param<Tensor<B, 2>>,
    /// `[d_output]`, when the layer has one.
    pub bias: Option<Param<Tensor<B, 1>>>,
    /// A LoRA adapter's `A` (`[r, d_input]`, PEFT's `lora_A.weight`), when the layer has one
    /// ([`super::lora`]).
    pub lora_a: Option<LoraFactor<B>>,
    /// The adapter's `B` (`[d_output, r]`, PEFT's `lora_B.weight`).
    pub lora_b: Option<LoraFactor<B>>,
    /// The adapter's scaling and dropout.
    pub lora: Option<LoraBranch>,
    /// Set when the layer computes in FP8.
    pub fp8: Option<Fp8Site>,
    /// The weight as its FP8 cast, when it is stored so (`precision.base_storage: "fp8"`;
    /// [`Projection::store_fp8`]): `weight` is then an empty placeholder.
    pub stored: Option<Fp8Weight>,
    pub layout: Layout,
}

/// One factor of a LoRA adapter (a module of its own, so that its parameter is named
/// `{projection}.lora_a.weight`, PEFT's `lora_A.weight`).
#[derive(Module, Debug)]
pub struct LoraFactor<B: Backend> {
    pub weight: Param<Tensor<B, 2>>,
}

/// What an adapter applies besides its factors.
#[derive(Clone, Debug)]
pub struct LoraBranch {
    /// `lora_alpha / r` (or `/ sqrt(r)`).
    pub scaling: f64,
    /// On the adapter's input, while training.
    pub dropout: Dropout,
}

impl<B: Backend> Projection<B> {
    /// A projection initialised as `transformers` initialises it: weight ~ N(0, std), bias 0
    /// (lazily allocated).
    pub fn new(
        (d_input, d_output): (usize, usize),
        std: f64,
        bias: bool,
        layout: Layout,
        device: &B::Device,
    ) -> Self {
        let shape = match layout {
            Layout::InOut => [d_input, d_output],
            Layout::OutIn => [d_output, d_input],
        };
        Self {
            weight: Initializer::Normal { mean: 0.0, std }.init(shape, device),
            bias: bias.then(|| Initializer::Zeros.init([d_output], device)),
            lora_a: None,
            lora_b: None,
            lora: None,
            fp8: None,
            stored: None,
            layout,
        }
    }

    /// `(d_input, d_output)`.
    pub fn dims(&self) -> (usize, usize) {
        if let Some(stored) = &self.stored {
            let [d_input, d_output] = stored.in_out();
            return (d_input, d_output);
        }
        let [a, b] = self.weight.lazy_shape().dims::<2>();
        match self.layout {
            Layout::InOut => (a, b),
            Layout::OutIn => (b, a),
        }
    }

    /// Gives the projection a LoRA adapter: `A` with `a_values` (`[r, d_input]`), `B` zero.
    pub fn add_lora(&mut self, r: usize, a_values: Vec<f32>, branch: LoraBranch) {
        let (d_input, d_output) = self.dims();
        let device = self.weight.lazy_device();
        let a = Tensor::from_data(TensorData::new(a_values, [r, d_input]), &device);
        self.lora_a = Some(LoraFactor {
            weight: Param::from_tensor(a),
        });
        self.lora_b = Some(LoraFactor {
            weight: Param::from_tensor(Tensor::zeros([d_output, r], &device)),
        });
        self.lora = Some(branch);
    }

    /// Keeps the weight as its FP8 cast under the layer's policy (the cast every forward makes
    /// of a weight that does not change; [`Fp8Weight`]) and drops the f32 tensor, when the
    /// layer computes in FP8 and its weight takes no gradient (LoRA's frozen base). Returns the
    /// bytes now held for the weight, or `None` when it stays f32; an error when the weight
    /// holds an infinity or NaN.
    pub fn store_fp8(&mut self) -> Result<Option<usize>, NonFiniteAmax> {
        let Some(site) = &self.fp8 else {
            return Ok(None);
        };
        let Some((format, rule)) = site.context().policy().rule_for(Role::Weight) else {
            return Ok(None);
        };
        if self.stored.is_some() || self.weight.is_require_grad() {
            return Ok(None);
        }
        let data = self.weight.val().into_data();
        let values = data.as_slice::<f32>().expect("projection weights are f32");
        let dims = [data.shape[0], data.shape[1]];
        let transposed = self.layout == Layout::OutIn;
        let stored = super::base_storage::encode(values, dims, transposed, format, rule)?;
        drop(data);
        let (id, device) = (self.weight.id, self.weight.lazy_device());
        self.weight = Param::initialized(id, Tensor::zeros([0, 0], &device));
        let bytes = stored.bytes();
        self.stored = Some(stored);
        Ok(Some(bytes))
    }

    /// `W + scaling * (B @ A)` in the weight's layout, and the adapter removed (`merge`).
    pub fn merge_lora(&mut self) {
        if let Some(stored) = self.stored.take() {
            // The stored values as an f32 weight again.
            let weight = super::base_storage::decoded(&stored, &self.weight.lazy_device());
            self.weight = Param::initialized(self.weight.id, weight);
        }
        let (Some(a), Some(b), Some(branch)) =
            (self.lora_a.take(), self.lora_b.take(), self.lora.take())
        else {
            return;
        };
        let delta = b
            .weight
            .val()
            .matmul(a.weight.val())
            .mul_scalar(branch.scaling);
        let delta = match self.layout {
            Layout::InOut => delta.transpose(),
            Layout::OutIn => delta,
        };
        let id = self.weight.id;
        let merged = self.weight.val() + delta;
        self.weight = Param::initialized(id, merged);
    }

    /// `W` as `[d_input, d_output]` (a transposed view for [`Layout::OutIn`]); a stored weight's
    /// values decoded.
    fn in_out(&self) -> Tensor<B, 2> {
        if let Some(stored) = &self.stored {
            let w = super::base_storage::decoded(stored, &self.weight.lazy_device());
            return match self.layout {
                Layout::InOut => w,
                Layout::OutIn => w.transpose(),
            };
        }
        match self.layout {
            Layout::InOut => self.weight.val(),
            Layout::OutIn => self.weight.val().transpose(),
        }
    }
}

/// The LM head: logits `[B, T, vocab]` = `h [B, T, C] @ head^T` with `head` `[vocab, C]` (the
/// tied embedding or `lm_head.weight`), as one `[B * T, C]` GEMM. A plain f32 matmul, as in the
/// paper; with a site (`precision.head: "bf16"`), [`fp8_linear`] under the site's `bf16` policy.
pub fn lm_head<B: Fp8LinearOps>(
    h: Tensor<B, 3>,
    head: Tensor<B, 2>,
    site: Option<&Fp8Site>,
) -> Tensor<B, 3> {
    let ([b, t, c], vocab) = (h.dims(), head.dims()[0]);
    let h = h.reshape([b * t, c]);
    let logits = match site {
        Some(site) => fp8_linear(h, head.transpose(), None, site),
        None => h.matmul(head.transpose()),
    };
    logits.reshape([b, t, vocab])
}

impl<B: Fp8LinearOps> Projection<B> {
    /// `[..., d_input] -> [..., d_output]`.
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        match (&self.lora_a, &self.lora_b, &self.lora) {
            (Some(a), Some(b), Some(branch)) => {
                // PEFT's order: lora_B(lora_A(dropout(x))) * scaling, added to the base output.
                let y = self.base_forward(x.clone());
                let mut dims = x.dims();
                let d_in = dims[D - 1];
                let rows = x.shape().num_elements() / d_in.max(1);
                let x = branch.dropout.forward(x.reshape([rows, d_in]));
                let down = x.matmul(a.weight.val().transpose());
                let up = down
                    .matmul(b.weight.val().transpose())
                    .mul_scalar(branch.scaling);
                dims[D - 1] = up.dims()[1];
                y + up.reshape(dims)
            }
            // (Without an adapter, `x` is not held beyond the base's own use of it.)
            _ => self.base_forward(x),
        }
    }

    /// The projection without its adapter.
    fn base_forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let bias = self.bias.as_ref().map(|b| b.val());
        match (&self.fp8, &self.stored) {
            (Some(site), Some(stored)) => fp8_linear_stored(x, stored, bias, site),
            (Some(site), None) => fp8_linear(x, self.in_out(), bias, site),
            (None, _) => {
                // One 2-D product over all rows, as `fp8_backend::kernel::linear` computes it
                // (so a site with FP8 off gives these bits).
                let mut dims = x.dims();
                let d_in = dims[D - 1];
                let rows = x.shape().num_elements() / d_in.max(1);
                let y = x.reshape([rows, d_in]).matmul(self.in_out());
                let y = match bias {
                    Some(bias) => y + bias.unsqueeze(),
                    None => y,
                };
                dims[D - 1] = y.dims()[1];
                y.reshape(dims)
            }
        }
    }
}
