//! One pre-norm decoder layer (`LlamaDecoderLayer`): `x + self_attn(input_layernorm(x))`, then
//! `x + mlp(post_attention_layernorm(x))`.

use std::sync::Arc;

use burn::module::Module;
use burn::tensor::{backend::Backend, Tensor};

use super::attention::Attention;
use super::mlp::Mlp;
use super::rms_norm::RmsNorm;
use super::{LlamaConfig, PROJECTIONS};
use crate::model::ops::rotary_attention::RotaryTables;
use crate::model::projection::Projection;
use crate::model::{ModelBackend, Segments};

/// `model.layers.N`
#[derive(Module, Debug)]
pub struct DecoderLayer<B: Backend> {
    pub input_layernorm: RmsNorm<B>,
    pub self_attn: Attention<B>,
    pub post_attention_layernorm: RmsNorm<B>,
    pub mlp: Mlp<B>,
}

impl<B: Backend> DecoderLayer<B> {
    /// A fresh layer (every projection f32 until the model assigns FP8 sites).
    pub fn new(config: &LlamaConfig, dropout: f64, device: &B::Device) -> Self {
        let (h, eps) = (config.hidden_size, config.rms_norm_eps);
        Self {
            input_layernorm: RmsNorm::new(h, eps, device),
            self_attn: Attention::new(config, dropout, device),
            post_attention_layernorm: RmsNorm::new(h, eps, device),
            mlp: Mlp::new(config, device),
        }
    }

    /// The layer's projections with their names inside the layer, in forward order
    /// ([`PROJECTIONS`]).
    pub fn projections_mut(&mut self) -> [(&'static str, &mut Projection<B>); 7] {
        let [q, k, v, o, gate, up, down] = PROJECTIONS;
        let (attn, mlp) = (&mut self.self_attn, &mut self.mlp);
        [
            (q, &mut attn.q_proj),
            (k, &mut attn.k_proj),
            (v, &mut attn.v_proj),
            (o, &mut attn.o_proj),
            (gate, &mut mlp.gate_proj),
            (up, &mut mlp.up_proj),
            (down, &mut mlp.down_proj),
        ]
    }

    /// Read-only [`DecoderLayer::projections_mut`].
    pub fn projections(&self) -> [(&'static str, &Projection<B>); 7] {
        let [q, k, v, o, gate, up, down] = PROJECTIONS;
        let (attn, mlp) = (&self.self_attn, &self.mlp);
        [
            (q, &attn.q_proj),
            (k, &attn.k_proj),
            (v, &attn.v_proj),
            (o, &attn.o_proj),
            (gate, &mlp.gate_proj),
            (up, &mlp.up_proj),
            (down, &mlp.down_proj),
        ]
    }
}

impl<B: ModelBackend> DecoderLayer<B> {
    /// `[B, T, hidden_size] -> [B, T, hidden_size]`
    pub fn forward(
        &self,
        x: Tensor<B, 3>,
        rope: &Arc<RotaryTables>,
        segments: Option<&Segments>,
    ) -> Tensor<B, 3> {
        let x = x.clone()
            + self
                .self_attn
                .forward(self.input_layernorm.forward(x), rope, segments);
        x.clone() + self.mlp.forward(self.post_attention_layernorm.forward(x))
    }
}
