//! Grouped-query self-attention with rotary position embeddings (`LlamaAttention`, eager
//! path). `q_proj`, `k_proj`, `v_proj` and `o_proj` are projections (FP8 candidates); the
//! rotation, the two batched matmuls, the mask and the softmax stay f32, as in the FP8-AMAX
//! paper. Key/value heads are shared by their groups of query heads, never repeated in memory
//! on the fused path.

use std::sync::Arc;

use burn::module::Module;
use burn::nn::{Dropout, DropoutConfig};
use burn::tensor::{backend::Backend, Tensor, TensorPrimitive};

use super::LlamaConfig;
use crate::model::ops::rotary_attention::{composed, RotaryAttention, RotaryTables};
use crate::model::projection::{Layout, Projection};
use crate::model::{ModelBackend, Segments};

/// `self_attn` of a decoder layer.
#[derive(Module, Debug)]
pub struct Attention<B: Backend> {
    /// `[heads * head_dim, hidden_size]`
    pub q_proj: Projection<B>,
    /// `[kv_heads * head_dim, hidden_size]`
    pub k_proj: Projection<B>,
    /// `[kv_heads * head_dim, hidden_size]`
    pub v_proj: Projection<B>,
    /// `[hidden_size, heads * head_dim]`
    pub o_proj: Projection<B>,
    /// On the attention probabilities (HF `attention_dropout`).
    pub attn_dropout: Dropout,
    #[module(skip)]
    shape: RotaryAttention,
}

impl<B: Backend> Attention<B> {
    /// Fresh attention (`transformers`' `_init_weights`: N(0, initializer_range), zero biases).
    pub fn new(config: &LlamaConfig, dropout: f64, device: &B::Device) -> Self {
        let (h, std) = (config.hidden_size, config.initializer_range);
        let (q, kv) = (
            config.num_attention_heads * config.head_dim,
            config.num_key_value_heads * config.head_dim,
        );
        let qkv_bias = config.qkv_bias;
        Self {
            q_proj: Projection::new((h, q), std, qkv_bias, Layout::OutIn, device),
            k_proj: Projection::new((h, kv), std, qkv_bias, Layout::OutIn, device),
            v_proj: Projection::new((h, kv), std, qkv_bias, Layout::OutIn, device),
            o_proj: Projection::new((q, h), std, config.o_bias, Layout::OutIn, device),
            attn_dropout: DropoutConfig::new(dropout).init(),
            shape: RotaryAttention {
                heads: config.num_attention_heads,
                kv_heads: config.num_key_value_heads,
                head_dim: config.head_dim,
                scale: (config.head_dim as f32).powf(-0.5),
                window: config.sliding_window,
            },
        }
    }
}

impl<B: ModelBackend> Attention<B> {
    /// `[B, T, hidden_size] -> [B, T, hidden_size]`; position t attends to positions 0..=t
    /// (the last `sliding_window` of them, when the config has one); packed, positions of its
    /// own example only.
    pub fn forward(
        &self,
        x: Tensor<B, 3>,
        rope: &Arc<RotaryTables>,
        segments: Option<&Segments>,
    ) -> Tensor<B, 3> {
        let q = self.q_proj.forward(x.clone()); // (B, T, H*D)
        let k = self.k_proj.forward(x.clone()); // (B, T, KV*D)
        let v = self.v_proj.forward(x); // (B, T, KV*D)
        let y = self.attend(q, k, v, rope, segments); // (B, T, H*D)
        self.o_proj.forward(y)
    }

    /// The heads' outputs side by side: one fused op where the backend has it (and no dropout
    /// on the probabilities is due), else composed from Burn's ops.
    fn attend(
        &self,
        q: Tensor<B, 3>,
        k: Tensor<B, 3>,
        v: Tensor<B, 3>,
        rope: &Arc<RotaryTables>,
        segments: Option<&Segments>,
    ) -> Tensor<B, 3> {
        let (q, k, v) = if self.attn_dropout.prob == 0.0 || !B::ad_enabled(&q.device()) {
            let float = |t: Tensor<B, 3>| t.into_primitive().tensor();
            let fused =
                B::fused_rotary_attention(float(q), float(k), float(v), rope, self.shape, segments);
            match fused {
                Ok(y) => return Tensor::from_primitive(TensorPrimitive::Float(y)),
                Err((q, k, v)) => {
                    let tensor = |t| Tensor::<B, 3>::from_primitive(TensorPrimitive::Float(t));
                    (tensor(q), tensor(k), tensor(v))
                }
            }
        } else {
            (q, k, v)
        };
        let dropout = |p| self.attn_dropout.forward(p);
        composed(q, k, v, rope, self.shape, segments, dropout)
    }
}
