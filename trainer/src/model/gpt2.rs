//! GPT-2 language model (Radford et al. 2019, "Language Models are Unsupervised Multitask
//! Learners"), laid out as `transformers`' `GPT2LMHeadModel` so that Burn's module tree has the
//! Hugging Face parameter names: `transformer.wte.weight`, `transformer.h.0.attn.c_attn.weight`,
//! ..., and `lm_head.weight` only when the head is untied.

use burn::module::{Initializer, Module, Param};
use burn::nn::{Dropout, DropoutConfig, Embedding};
use burn::tensor::activation::log_softmax;
use burn::tensor::{backend::Backend, Int, Tensor};
use fp8_backend::{Fp8Context, Fp8Policy, LayerFilterError};

use super::block::Block;
use super::layer_norm::LayerNorm;
use super::projection::{projection_names, PROJECTION_NAMES_HINT};
use super::{Gpt2Config, ModelBackend};

/// Choices that are ours, not the checkpoint's: applied when a model is built or loaded.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelOptions {
    /// Dropout probability at HF's three places (embeddings, attention probabilities, residual
    /// branches). 0 by default: the checkpoint's `*_pdrop` values are not used, so evaluation and
    /// parity tests are deterministic (nanoGPT's `from_pretrained` does the same).
    /// Burn's dropout is only active on an autodiff backend.
    pub dropout: f64,
    /// The FP8 policy; its layer filter picks the FP8 projections (default: FP8 off).
    pub fp8: Fp8Policy,
}

impl Default for ModelOptions {
    fn default() -> Self {
        Self {
            dropout: 0.0,
            fp8: Fp8Policy::off(),
        }
    }
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
}

impl<B: Backend> Gpt2<B> {
    /// A freshly initialised model (`modeling_gpt2.py` `_init_weights`: N(0, initializer_range)
    /// weights, zero biases, residual projections scaled by 1/sqrt(2 n_layer)). Parameters are
    /// allocated lazily, so building one only to load a checkpoint into it costs nothing.
    pub fn new(
        config: &Gpt2Config,
        options: &ModelOptions,
        device: &B::Device,
    ) -> Result<Self, LayerFilterError> {
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
            drop: DropoutConfig::new(options.dropout).init(),
            h: (0..config.n_layer)
                .map(|i| Block::new(config, i, options.dropout, device))
                .collect(),
            ln_f: LayerNorm::new(config.n_embd, config.layer_norm_epsilon, device),
        };
        let lm_head = (!config.tie_word_embeddings).then(|| LmHead {
            weight: normal.init([config.vocab_size, config.n_embd], device),
        });
        let mut model = Self {
            transformer,
            lm_head,
            config: config.clone(),
            fp8: Fp8Context::default(),
        };
        model.set_fp8(options.fp8.clone())?;
        Ok(model)
    }

    /// The architecture this model was built from.
    pub fn config(&self) -> &Gpt2Config {
        &self.config
    }

    /// Applies an FP8 policy: the projections its layer filter matches get an FP8 site named
    /// by their Hugging Face module name (`h.1.mlp.c_fc`), the others compute in f32; with
    /// FP8 off, every projection is f32. Every filter pattern must match some projection.
    pub fn set_fp8(&mut self, policy: Fp8Policy) -> Result<(), LayerFilterError> {
        if policy.is_on() {
            let names = projection_names(self.config.n_layer);
            policy.layers.check(&names, PROJECTION_NAMES_HINT)?;
        }
        let on = |name: &str| policy.is_on() && policy.layers.matches(name);
        let context = Fp8Context::new(policy.clone());
        for (i, block) in self.transformer.h.iter_mut().enumerate() {
            for (name, projection) in block.projections_mut() {
                let name = format!("h.{i}.{name}");
                projection.fp8 = on(&name).then(|| context.site(&name));
            }
        }
        self.fp8 = context;
        Ok(())
    }

    /// The FP8 context of the model's projections: the policy in force and their records.
    pub fn fp8(&self) -> &Fp8Context {
        &self.fp8
    }

    /// Hugging Face names of the FP8 projections, in forward order.
    pub fn fp8_layers(&self) -> Vec<String> {
        let blocks = self.transformer.h.iter();
        blocks
            .flat_map(|block| block.projections())
            .filter_map(|(_, projection)| projection.fp8.as_ref().map(|s| s.name().to_string()))
            .collect()
    }
}

impl<B: ModelBackend> Gpt2<B> {
    /// Logits `[B, T, vocab_size]` for tokens `[B, T]` (T <= n_positions).
    ///
    /// # Panics
    /// If T exceeds `n_positions` (callers validate user input first).
    pub fn forward(&self, tokens: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        let h = self.transformer.forward(tokens, self.config.n_positions); // (B, T, C)
        let [b, t, c] = h.dims();
        // The head is a plain matmul, never an FP8 projection: it stays f32, as in the paper.
        let head = match &self.lm_head {
            Some(head) => head.weight.val(),
            None => self.transformer.wte.weight.val(),
        }; // (V, C)
        let vocab = head.dims()[0];
        h.reshape([b * t, c])
            .matmul(head.transpose())
            .reshape([b, t, vocab])
    }

    /// Mean next-token cross-entropy of `tokens` against `targets` (both `[B, T]`), and the logits.
    pub fn forward_loss(
        &self,
        tokens: Tensor<B, 2, Int>,
        targets: Tensor<B, 2, Int>,
    ) -> (Tensor<B, 1>, Tensor<B, 3>) {
        let logits = self.forward(tokens);
        (cross_entropy(logits.clone(), targets), logits)
    }
}

impl<B: ModelBackend> Gpt2Model<B> {
    /// Final hidden states `[B, T, n_embd]`.
    pub fn forward(&self, tokens: Tensor<B, 2, Int>, n_positions: usize) -> Tensor<B, 3> {
        let [_, t] = tokens.dims();
        assert!(
            t <= n_positions,
            "sequence of {t} tokens is longer than n_positions = {n_positions}"
        );
        let positions = Tensor::<B, 1, Int>::arange(0..t as i64, &tokens.device()).reshape([1, t]);
        // (B, T, C) + (1, T, C), broadcast over the batch.
        let mut x = self
            .drop
            .forward(self.wte.forward(tokens) + self.wpe.forward(positions));
        for block in &self.h {
            x = block.forward(x);
        }
        self.ln_f.forward(x)
    }
}

/// Mean cross-entropy over every position: `-mean(log_softmax(logits)[target])`.
/// `logits` `[B, T, V]`, `targets` `[B, T]`; returns a one-element tensor.
pub fn cross_entropy<B: Backend>(logits: Tensor<B, 3>, targets: Tensor<B, 2, Int>) -> Tensor<B, 1> {
    let log_probs = log_softmax(logits, 2);
    log_probs.gather(2, targets.unsqueeze_dim(2)).mean().neg() // gather: (B, T, 1)
}
