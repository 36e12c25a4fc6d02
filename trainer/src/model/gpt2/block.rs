//! One pre-norm transformer block (`GPT2Block`): `x + attn(ln_1(x))`, then `x + mlp(ln_2(x))`.

use burn::module::Module;
use burn::tensor::{backend::Backend, Tensor};

use super::attention::Attention;
use super::layer_norm::LayerNorm;
use super::mlp::Mlp;
use super::Gpt2Config;
use super::PROJECTIONS;
use crate::model::projection::Projection;
use crate::model::{ModelBackend, Segments};

/// `h.N`
#[derive(Module, Debug)]
pub struct Block<B: Backend> {
    pub ln_1: LayerNorm<B>,
    pub attn: Attention<B>,
    pub ln_2: LayerNorm<B>,
    pub mlp: Mlp<B>,
}

impl<B: Backend> Block<B> {
    /// A fresh block `layer_idx` (every projection f32 until the model assigns FP8 sites).
    pub fn new(config: &Gpt2Config, layer_idx: usize, dropout: f64, device: &B::Device) -> Self {
        let eps = config.layer_norm_epsilon;
        Self {
            ln_1: LayerNorm::new(config.n_embd, eps, device),
            attn: Attention::new(config, layer_idx, dropout, device),
            ln_2: LayerNorm::new(config.n_embd, eps, device),
            mlp: Mlp::new(config, dropout, device),
        }
    }

    /// The block's projections with their names inside the block, in forward order
    /// ([`PROJECTIONS`]).
    pub fn projections_mut(&mut self) -> [(&'static str, &mut Projection<B>); 4] {
        let [c_attn, c_proj, c_fc, mlp_proj] = PROJECTIONS;
        [
            (c_attn, &mut self.attn.c_attn),
            (c_proj, &mut self.attn.c_proj),
            (c_fc, &mut self.mlp.c_fc),
            (mlp_proj, &mut self.mlp.c_proj),
        ]
    }

    /// Read-only [`Block::projections_mut`].
    pub fn projections(&self) -> [(&'static str, &Projection<B>); 4] {
        let [c_attn, c_proj, c_fc, mlp_proj] = PROJECTIONS;
        [
            (c_attn, &self.attn.c_attn),
            (c_proj, &self.attn.c_proj),
            (c_fc, &self.mlp.c_fc),
            (mlp_proj, &self.mlp.c_proj),
        ]
    }
}

impl<B: ModelBackend> Block<B> {
    /// `[B, T, n_embd] -> [B, T, n_embd]`
    pub fn forward(&self, x: Tensor<B, 3>, segments: Option<&Segments>) -> Tensor<B, 3> {
        let x = x.clone() + self.attn.forward(self.ln_1.forward(x), segments);
        x.clone() + self.mlp.forward(self.ln_2.forward(x))
    }
}
