//! The Llama family (Touvron et al. 2023, "Llama 2: Open Foundation and Fine-Tuned Chat
//! Models"; Llama 3, SmolLM2, TinyLlama; Qwen2 with its q/k/v biases; Mistral with its sliding
//! window), laid out as `transformers`' `LlamaForCausalLM` so that Burn's module tree has the
//! Hugging Face parameter names: `model.embed_tokens.weight`,
//! `model.layers.0.self_attn.q_proj.weight`, ..., `model.norm.weight`, and `lm_head.weight`
//! only when the head is untied. Weights keep `nn.Linear`'s `[out, in]` layout.
//!
//! The family's files: `config.rs` (`config.json` in `LlamaConfig` / `Qwen2Config` /
//! `MistralConfig` spelling, both transformers generations), `presets.rs`, `rotary.rs` (the
//! rotary frequencies), and the modules `block.rs`, `attention.rs`, `mlp.rs`, `rms_norm.rs`.

mod attention;
mod block;
mod config;
mod mlp;
mod presets;
mod rms_norm;
mod rotary;

use std::sync::Arc;

use burn::module::{Initializer, Module, Param};
use burn::nn::Embedding;
use burn::tensor::{backend::Backend, Int, Tensor};
use fp8_backend::{Fp8Context, Fp8Site};

use super::ops::rotary_attention::RotaryTables;
use super::projection::{lm_head, Projection};
use super::{CausalLm, ModelBackend, Segments};
use block::DecoderLayer;
pub use config::{LlamaConfig, RopeScaling, RopeStyle, Variant};
use rms_norm::RmsNorm;

/// The seven projections of a decoder layer, in forward order, by their name inside the layer.
pub const PROJECTIONS: [&str; 7] = [
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
];

/// How the names of the FP8 layers look, for layer filter errors.
pub const PROJECTION_NAMES_HINT: &str =
    "names look like model.layers.0.self_attn.q_proj, model.layers.0.mlp.gate_proj";

/// The Hugging Face names of every projection of a model with `layers` decoder layers, in
/// forward order.
pub fn projection_names(layers: usize) -> Vec<String> {
    (0..layers)
        .flat_map(|i| PROJECTIONS.map(|p| format!("model.layers.{i}.{p}")))
        .collect()
}

/// `model`: the token embedding, the decoder layers and the final norm (`LlamaModel`).
#[derive(Module, Debug)]
pub struct LlamaModel<B: Backend> {
    /// Token embeddings `[vocab_size, hidden_size]`; also the tied head.
    pub embed_tokens: Embedding<B>,
    /// `layers.0` ... `layers.{num_hidden_layers-1}`.
    pub layers: Vec<DecoderLayer<B>>,
    /// Final RMSNorm.
    pub norm: RmsNorm<B>,
}

/// An untied output projection, `lm_head.weight` `[vocab_size, hidden_size]`.
#[derive(Module, Debug)]
pub struct LmHead<B: Backend> {
    pub weight: Param<Tensor<B, 2>>,
}

/// A Llama-family model with its language-model head (`LlamaForCausalLM`).
#[derive(Module, Debug)]
pub struct Llama<B: Backend> {
    pub model: LlamaModel<B>,
    /// `None` when tied: the head is `embed_tokens` transposed, a plain matmul that stays f32.
    pub lm_head: Option<LmHead<B>>,
    #[module(skip)]
    config: LlamaConfig,
    /// The rotary cosines and sines of every position up to `max_position_embeddings` (capped:
    /// see [`Llama::rope`]).
    #[module(skip)]
    rope: Arc<RotaryTables>,
    /// The policy of the FP8 projections and what their casts recorded (shared by their sites).
    #[module(skip)]
    fp8: Fp8Context,
    /// The LM head's site when its GEMMs run in bf16 (`precision.head`); `None`: f32.
    #[module(skip)]
    head_site: Option<Fp8Site>,
}

/// Positions whose rotary tables are built with the model; longer sequences build their own.
const ROPE_TABLE_POSITIONS: usize = 4096;

impl<B: Backend> Llama<B> {
    /// The rotary tables for a sequence of `t` positions: the model's own, or new ones when it
    /// is longer than they cover.
    fn rope(&self, t: usize) -> Arc<RotaryTables> {
        if t <= self.rope.positions() {
            return self.rope.clone();
        }
        Arc::new(rope_tables(&self.config, t))
    }
}

fn rope_tables(config: &LlamaConfig, positions: usize) -> RotaryTables {
    let inv_freq = rotary::inv_freq(config.head_dim, config.rope_theta, &config.rope_scaling);
    RotaryTables::new(&inv_freq, positions)
}

impl<B: Backend> CausalLm<B> for Llama<B> {
    type Config = LlamaConfig;

    /// `transformers`' `_init_weights`: N(0, initializer_range) weights and embeddings, zero
    /// biases, RMSNorm weights one.
    fn init(config: &LlamaConfig, dropout: f64, device: &B::Device) -> Self {
        let normal = Initializer::Normal {
            mean: 0.0,
            std: config.initializer_range,
        };
        let model = LlamaModel {
            embed_tokens: Embedding {
                weight: normal.init([config.vocab_size, config.hidden_size], device),
            },
            layers: (0..config.num_hidden_layers)
                .map(|_| DecoderLayer::new(config, dropout, device))
                .collect(),
            norm: RmsNorm::new(config.hidden_size, config.rms_norm_eps, device),
        };
        let lm_head = (!config.tie_word_embeddings).then(|| LmHead {
            weight: normal.init([config.vocab_size, config.hidden_size], device),
        });
        let positions = config.max_position_embeddings.min(ROPE_TABLE_POSITIONS);
        Self {
            model,
            lm_head,
            rope: Arc::new(rope_tables(config, positions)),
            config: config.clone(),
            fp8: Fp8Context::default(),
            head_site: None,
        }
    }

    fn config(&self) -> &LlamaConfig {
        &self.config
    }

    fn projections(&self) -> Vec<(String, &Projection<B>)> {
        let layers = self.model.layers.iter().enumerate();
        layers
            .flat_map(|(i, layer)| {
                layer
                    .projections()
                    .map(|(name, p)| (format!("model.layers.{i}.{name}"), p))
            })
            .collect()
    }

    fn projections_mut(&mut self) -> Vec<(String, &mut Projection<B>)> {
        let layers = self.model.layers.iter_mut().enumerate();
        layers
            .flat_map(|(i, layer)| {
                layer
                    .projections_mut()
                    .map(|(name, p)| (format!("model.layers.{i}.{name}"), p))
            })
            .collect()
    }

    fn fp8(&self) -> &Fp8Context {
        &self.fp8
    }

    fn set_fp8_context(&mut self, context: Fp8Context) {
        self.fp8 = context;
    }

    fn set_head_site(&mut self, site: Option<Fp8Site>) {
        self.head_site = site;
    }

    fn blocks(&self) -> usize {
        self.model.layers.len()
    }

    fn embed(&self, tokens: Tensor<B, 2, Int>, segments: Option<&Segments>) -> Tensor<B, 3>
    where
        B: ModelBackend,
    {
        let [_, t] = tokens.dims();
        let max = self.config.max_position_embeddings;
        // Packed, a row may be longer than the context: its examples may not.
        let longest = segments.map_or(t, Segments::longest);
        assert!(
            longest <= max,
            "sequence of {longest} tokens is longer than max_position_embeddings = {max}"
        );
        self.model.embed_tokens.forward(tokens) // (B, T, C)
    }

    fn embeddings_trainable(&self) -> bool {
        self.model.embed_tokens.weight.is_require_grad()
    }

    fn block_trainable(&self, index: usize) -> bool {
        super::names::any_trainable(&self.model.layers[index])
    }

    fn block(&self, index: usize, x: Tensor<B, 3>, segments: Option<&Segments>) -> Tensor<B, 3>
    where
        B: ModelBackend,
    {
        // Packed, positions restart: the tables of the longest example cover them.
        let rope = self.rope(segments.map_or(x.dims()[1], Segments::longest));
        self.model.layers[index].forward(x, &rope, segments)
    }

    fn head(&self, x: Tensor<B, 3>) -> Tensor<B, 3>
    where
        B: ModelBackend,
    {
        // The head is never an FP8 projection: f32, as in the paper, or bf16 (`precision.head`).
        let head = match &self.lm_head {
            Some(head) => head.weight.val(),
            None => self.model.embed_tokens.weight.val(),
        }; // (V, C)
        lm_head(self.model.norm.forward(x), head, self.head_site.as_ref())
    }
}
