//! GPT-2 language model (Radford et al. 2019, "Language Models are Unsupervised Multitask
//! Learners"), laid out as `transformers`' `GPT2LMHeadModel` so that Burn's module tree has the
//! Hugging Face parameter names: `transformer.wte.weight`, `transformer.h.0.attn.c_attn.weight`,
//! ..., and `lm_head.weight` only when the head is untied.
//!
//! The family's files: `config.rs` (`config.json` in `transformers.GPT2Config`'s spelling),
//! `presets.rs`, and the modules `block.rs`, `attention.rs`, `mlp.rs`, `layer_norm.rs`.

mod attention;
mod block;
mod config;
mod layer_norm;
mod mlp;
mod presets;

use burn::module::{Initializer, Module, Param};
use burn::nn::{Dropout, DropoutConfig, Embedding};
use burn::tensor::{backend::Backend, Int, Tensor};
use fp8_backend::{Fp8Context, Fp8Site};

use super::projection::{lm_head, Projection};
use super::{CausalLm, ModelBackend, Segments};
use block::Block;
pub use config::{Activation, Gpt2Config};
use layer_norm::LayerNorm;

/// The four projections of a block, in forward order, by their name inside the block.
pub const PROJECTIONS: [&str; 4] = ["attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"];

/// How the names of the FP8 layers look, for layer filter errors.
pub const PROJECTION_NAMES_HINT: &str =
    "names look like h.0.attn.c_attn, h.0.attn.c_proj, h.0.mlp.c_fc, h.0.mlp.c_proj";

/// The Hugging Face names of every projection of a model with `n_layer` blocks, in forward order.
pub fn projection_names(n_layer: usize) -> Vec<String> {
    (0..n_layer)
        .flat_map(|i| PROJECTIONS.map(|p| format!("h.{i}.{p}")))
        .collect()
}

/// `transformer`: embeddings, blocks and the final layer norm (`GPT2Model`).
#[derive(Module, Debug)]
pub struct Gpt2Model<B: Backend> {
    /// Token embeddings `[vocab_size, n_embd]`; also the tied LM head.
    pub wte: Embedding<B>,
    /// Position embeddings `[n_positions, n_embd]`.
    pub wpe: Embedding<B>,
    /// On the embedding sum (HF `embd_pdrop`).
    pub drop: Dropout,
    /// The blocks `h.0` ... `h.{n_layer-1}`.
    pub h: Vec<Block<B>>,
    /// Final layer norm.
    pub ln_f: LayerNorm<B>,
}

/// An untied output projection, `lm_head.weight` `[vocab_size, n_embd]` (a torch `nn.Linear`,
/// so `[out, in]`, unlike the blocks' Conv1D weights). Used only when `tie_word_embeddings` is false.
#[derive(Module, Debug)]
pub struct LmHead<B: Backend> {
    pub weight: Param<Tensor<B, 2>>,
}

/// GPT-2 with its language-model head (`GPT2LMHeadModel`).
#[derive(Module, Debug)]
pub struct Gpt2<B: Backend> {
    pub transformer: Gpt2Model<B>,
    /// `None` when tied: the head is `wte` transposed, a plain matmul that stays f32.
    pub lm_head: Option<LmHead<B>>,
    #[module(skip)]
    config: Gpt2Config,
    /// The policy of the FP8 projections and what their casts recorded (shared by their sites).
    #[module(skip)]
    fp8: Fp8Context,
    /// The LM head's site when its GEMMs run in bf16 (`precision.head`); `None`: f32.
    #[module(skip)]
    head_site: Option<Fp8Site>,
}

impl<B: Backend> CausalLm<B> for Gpt2<B> {
    type Config = Gpt2Config;

    /// `modeling_gpt2.py` `_init_weights`: N(0, initializer_range) weights, zero biases,
    /// residual projections scaled by 1/sqrt(2 n_layer).
    fn init(config: &Gpt2Config, dropout: f64, device: &B::Device) -> Self {
        let normal = Initializer::Normal {
            mean: 0.0,
            std: config.initializer_range,
        };
        let transformer = Gpt2Model {
            wte: Embedding {
                weight: normal.init([config.vocab_size, config.n_embd], device),
            },
            wpe: Embedding {
                weight: normal.init([config.n_positions, config.n_embd], device),
            },
            drop: DropoutConfig::new(dropout).init(),
            h: (0..config.n_layer)
                .map(|i| Block::new(config, i, dropout, device))
                .collect(),
            ln_f: LayerNorm::new(config.n_embd, config.layer_norm_epsilon, device),
        };
        let lm_head = (!config.tie_word_embeddings).then(|| LmHead {
            weight: normal.init([config.vocab_size, config.n_embd], device),
        });
        Self {
            transformer,
            lm_head,
            config: config.clone(),
            fp8: Fp8Context::default(),
            head_site: None,
        }
    }

    fn config(&self) -> &Gpt2Config {
        &self.config
    }

    fn projections(&self) -> Vec<(String, &Projection<B>)> {
        let blocks = self.transformer.h.iter().enumerate();
        blocks
            .flat_map(|(i, block)| {
                block
                    .projections()
                    .map(|(name, p)| (format!("h.{i}.{name}"), p))
            })
            .collect()
    }

    fn projections_mut(&mut self) -> Vec<(String, &mut Projection<B>)> {
        let blocks = self.transformer.h.iter_mut().enumerate();
        blocks
            .flat_map(|(i, block)| {
                block
                    .projections_mut()
                    .map(|(name, p)| (format!("h.{i}.{name}"), p))
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
        self.transformer.h.len()
    }

    fn embed(&self, tokens: Tensor<B, 2, Int>, segments: Option<&Segments>) -> Tensor<B, 3>
    where
        B: ModelBackend,
    {
        let [_, t] = tokens.dims();
        let n_positions = self.config.n_positions;
        // Packed, a row may be longer than the context: its examples may not.
        let longest = segments.map_or(t, Segments::longest);
        assert!(
            longest <= n_positions,
            "sequence of {longest} tokens is longer than n_positions = {n_positions}"
        );
        let positions = match segments {
            None => Tensor::<B, 1, Int>::arange(0..t as i64, &tokens.device()).reshape([1, t]),
            Some(s) => s.position_tensor(&tokens.device()), // (B, T): packed examples restart
        };
        let transformer = &self.transformer;
        // (B, T, C) + (1, T, C), broadcast over the batch (or (B, T, C) packed).
        transformer
            .drop
            .forward(transformer.wte.forward(tokens) + transformer.wpe.forward(positions))
    }

    fn embeddings_trainable(&self) -> bool {
        let t = &self.transformer;
        t.wte.weight.is_require_grad() || t.wpe.weight.is_require_grad()
    }

    fn block_trainable(&self, index: usize) -> bool {
        super::names::any_trainable(&self.transformer.h[index])
    }

    fn block(&self, index: usize, x: Tensor<B, 3>, segments: Option<&Segments>) -> Tensor<B, 3>
    where
        B: ModelBackend,
    {
        self.transformer.h[index].forward(x, segments)
    }

    fn head(&self, x: Tensor<B, 3>) -> Tensor<B, 3>
    where
        B: ModelBackend,
    {
        // The head is never an FP8 projection: f32, as in the paper, or bf16 (`precision.head`).
        let head = match &self.lm_head {
            Some(head) => head.weight.val(),
            None => self.transformer.wte.weight.val(),
        }; // (V, C)
        lm_head(
            self.transformer.ln_f.forward(x),
            head,
            self.head_site.as_ref(),
        )
    }
}
