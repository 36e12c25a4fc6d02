//! Causal multi-head self-attention (`GPT2Attention` in `modeling_gpt2.py`, eager path).
//!
//! Only `c_attn` and `c_proj` are projections (FP8 candidates); the two batched matmuls
//! `q k^T` and `att v`, the mask and the softmax stay f32, as in the FP8-AMAX paper.

use burn::module::Module;
use burn::nn::{Dropout, DropoutConfig};
use burn::tensor::activation::softmax;
use burn::tensor::{backend::Backend, Bool, Tensor, TensorPrimitive};

use super::Gpt2Config;
use crate::model::projection::{Layout, Projection};
use crate::model::{ModelBackend, Segments};

/// `attn` of a block.
#[derive(Module, Debug)]
pub struct Attention<B: Backend> {
    /// Query, key and value projections side by side: `[n_embd, 3 * n_embd]`.
    pub c_attn: Projection<B>,
    /// Output projection: `[n_embd, n_embd]`.
    pub c_proj: Projection<B>,
    /// On the attention probabilities (HF `attn_pdrop`).
    pub attn_dropout: Dropout,
    /// On the output (HF `resid_pdrop`).
    pub resid_dropout: Dropout,
    /// Number of heads.
    pub n_head: usize,
    /// Attention scores are divided by this: sqrt(head_dim) when `scale_attn_weights`, times
    /// (layer index + 1) when `scale_attn_by_inverse_layer_idx`.
    pub score_divisor: f64,
}

impl<B: Backend> Attention<B> {
    /// Fresh attention for block `layer_idx`; `c_proj` gets the residual scaling `std / sqrt(2 * n_layer)`.
    pub fn new(config: &Gpt2Config, layer_idx: usize, dropout: f64, device: &B::Device) -> Self {
        let (c, std) = (config.n_embd, config.initializer_range);
        let residual_std = std / (2.0 * config.n_layer as f64).sqrt();
        let mut score_divisor = 1.0;
        if config.scale_attn_weights {
            score_divisor *= (config.head_dim() as f64).sqrt();
        }
        if config.scale_attn_by_inverse_layer_idx {
            score_divisor *= (layer_idx + 1) as f64;
        }
        Self {
            c_attn: Projection::new((c, 3 * c), std, true, Layout::InOut, device),
            c_proj: Projection::new((c, c), residual_std, true, Layout::InOut, device),
            attn_dropout: DropoutConfig::new(dropout).init(),
            resid_dropout: DropoutConfig::new(dropout).init(),
            n_head: config.n_head,
            score_divisor,
        }
    }
}

impl<B: ModelBackend> Attention<B> {
    /// `[B, T, n_embd] -> [B, T, n_embd]`; position t attends to positions 0..=t (packed: of
    /// its own example).
    pub fn forward(&self, x: Tensor<B, 3>, segments: Option<&Segments>) -> Tensor<B, 3> {
        let qkv = self.c_attn.forward(x); // (B, T, 3C)
        let y = self.attend(qkv, segments); // (B, T, C)
        self.resid_dropout.forward(self.c_proj.forward(y))
    }

    /// The heads' attention outputs side by side, from `qkv`: one fused op where the backend
    /// has it (and no dropout on the probabilities is due), else composed from Burn's ops.
    fn attend(&self, qkv: Tensor<B, 3>, segments: Option<&Segments>) -> Tensor<B, 3> {
        let [b, t, c3] = qkv.dims();
        let (c, nh) = (c3 / 3, self.n_head);
        let hd = c / nh;
        let qkv = if self.attn_dropout.prob == 0.0 || !B::ad_enabled(&qkv.device()) {
            let qkv = qkv.into_primitive().tensor();
            match B::fused_causal_attention(qkv, nh, self.score_divisor, segments) {
                Ok(y) => return Tensor::from_primitive(TensorPrimitive::Float(y)),
                Err(qkv) => Tensor::<B, 3>::from_primitive(TensorPrimitive::Float(qkv)),
            }
        } else {
            qkv
        };
        let heads = |i: usize| {
            qkv.clone()
                .narrow(2, i * c, c)
                .reshape([b, t, nh, hd])
                .swap_dims(1, 2) // (B, nh, T, hs)
        };
        let (q, k, v) = (heads(0), heads(1), heads(2));

        let scores = q.matmul(k.swap_dims(2, 3)); // (B, nh, T, T)
        let att = self
            .attn_dropout
            .forward(self.causal_softmax(scores, segments));

        let y = att.matmul(v); // (B, nh, T, hs)
        y.swap_dims(1, 2).reshape([b, t, c]) // re-assemble heads side by side
    }

    /// `softmax(scores / score_divisor)` with the future (and, packed, other examples) masked
    /// (the fused op where the backend has it, unpacked).
    fn causal_softmax(&self, scores: Tensor<B, 4>, segments: Option<&Segments>) -> Tensor<B, 4> {
        if let Some(segments) = segments {
            let hidden = segments.hidden_keys(|_| 0, &scores.device());
            let hidden = hidden.expand(scores.dims());
            return softmax((scores / self.score_divisor).mask_fill(hidden, f32::MIN), 3);
        }
        let scores =
            match B::fused_causal_softmax(scores.into_primitive().tensor(), self.score_divisor) {
                Ok(att) => return Tensor::from_primitive(TensorPrimitive::Float(att)),
                Err(scores) => Tensor::<B, 4>::from_primitive(TensorPrimitive::Float(scores)),
            };
        let [b, nh, t, _] = scores.dims();
        // True strictly above the diagonal: key positions after the query. HF fills them with
        // finfo(float32).min before the softmax, so they get probability exactly 0.
        let future = Tensor::<B, 2, Bool>::tril_mask([t, t], 0, &scores.device())
            .unsqueeze::<4>()
            .expand([b, nh, t, t]);
        softmax((scores / self.score_divisor).mask_fill(future, f32::MIN), 3)
    }
}
