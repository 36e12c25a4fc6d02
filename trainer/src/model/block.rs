//! One pre-norm transformer block (`GPT2Block`): `x + attn(ln_1(x))`, then `x + mlp(ln_2(x))`.

use burn::module::Module;
use burn::tensor::{backend::Backend, Tensor};

use super::attention::Attention;
use super::layer_norm::LayerNorm;
use super::mlp::Mlp;
use crate::config::Gpt2Config;
use crate::layer_filter::BlockFp8;

/// `h.N`
#[derive(Module, Debug)]
pub struct Block<B: Backend> {
    pub ln_1: LayerNorm<B>,
    pub attn: Attention<B>,
    pub ln_2: LayerNorm<B>,
    pub mlp: Mlp<B>,
}

impl<B: Backend> Block<B> {
    /// A fresh block `layer_idx` with the given FP8 flags.
    pub fn new(
        config: &Gpt2Config,
        layer_idx: usize,
        dropout: f64,
        fp8: BlockFp8,
        device: &B::Device,
    ) -> Self {
        let eps = config.layer_norm_epsilon;
        Self {
            ln_1: LayerNorm::new(config.n_embd, eps, device),
            attn: Attention::new(
                config,
                layer_idx,
                dropout,
                [fp8.attn_c_attn, fp8.attn_c_proj],
                device,
            ),
            ln_2: LayerNorm::new(config.n_embd, eps, device),
            mlp: Mlp::new(config, dropout, [fp8.mlp_c_fc, fp8.mlp_c_proj], device),
        }
    }

    /// `[B, T, n_embd] -> [B, T, n_embd]`
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let x = x.clone() + self.attn.forward(self.ln_1.forward(x));
        x.clone() + self.mlp.forward(self.ln_2.forward(x))
    }

    /// The FP8 flags of this block's projections.
    pub fn fp8(&self) -> BlockFp8 {
        BlockFp8 {
            attn_c_attn: self.attn.c_attn_fp8,
            attn_c_proj: self.attn.c_proj_fp8,
            mlp_c_fc: self.mlp.c_fc_fp8,
            mlp_c_proj: self.mlp.c_proj_fp8,
        }
    }

    /// Sets the FP8 flags of this block's projections.
    pub fn set_fp8(&mut self, fp8: BlockFp8) {
        self.attn.c_attn_fp8 = fp8.attn_c_attn;
        self.attn.c_proj_fp8 = fp8.attn_c_proj;
        self.mlp.c_fc_fp8 = fp8.mlp_c_fc;
        self.mlp.c_proj_fp8 = fp8.mlp_c_proj;
    }
}
