//! Language models, one folder per family, and what every family shares.
//!
//! - [`Model`]: the one model type the rest of the trainer uses (the loop, checkpoints, every
//!   command): an enum over the families, each variant a family's model, so that the trainer is
//!   compiled once per backend rather than once per backend and family. Its methods dispatch to
//!   the family's [`CausalLm`] implementation; what is the same for every family (the FP8 sites
//!   of the projections) is implemented once here.
//! - [`ModelConfig`] (`config.rs`): the architecture of a [`Model`], read from a checkpoint's
//!   `config.json` (the family chosen by `model_type` / `architectures`) or from a named preset.
//! - Shared pieces: [`projection`] (the linear layers that can compute in FP8), [`names`]
//!   (parameters by Hugging Face name), [`ops`] (fused ops with their backward), [`loss`] and
//!   [`sampling`].
//! - Families: [`gpt2`], [`llama`] (Llama, Qwen2, Mistral). docs/design.md "Model families"
//!   says how to add one.

pub mod base_storage;
pub mod config;
pub mod gpt2;
pub mod llama;
pub mod lora;
pub mod loss;
pub mod names;
pub mod ops;
pub mod projection;
pub mod sampling;
pub mod segments;

use burn::module::Module;
use burn::tensor::{backend::Backend, Int, Tensor};
use fp8_backend::{Fp8Context, Fp8Policy, Fp8Site, HeadPrecision, LayerFilterError, Precision};

pub use config::{ModelConfig, ModelConfigError, PresetOverrides};
pub use gpt2::{Activation, Gpt2, Gpt2Config};
pub use llama::{Llama, LlamaConfig};
pub use projection::Projection;
pub use segments::Segments;

/// What a backend needs to run a model: named FP8 linear layers and the fused ops (all
/// implemented for `Fp8<B>` and `Autodiff<Fp8<B>>`; the fused ones run on the CPU backends and
/// decline elsewhere).
pub trait ModelBackend:
    fp8_backend::Fp8LinearOps
    + ops::FusedCrossEntropy
    + ops::FusedGelu
    + ops::FusedLayerNorm
    + ops::FusedCausalSoftmax
    + ops::FusedAttention
    + ops::FusedRmsNorm
    + ops::FusedSwiglu
    + ops::FusedRotaryAttention
{
}
impl<
        B: fp8_backend::Fp8LinearOps
            + ops::FusedCrossEntropy
            + ops::FusedGelu
            + ops::FusedLayerNorm
            + ops::FusedCausalSoftmax
            + ops::FusedAttention
            + ops::FusedRmsNorm
            + ops::FusedSwiglu
            + ops::FusedRotaryAttention,
    > ModelBackend for B
{
}

/// Choices that are ours, not the checkpoint's: applied when a model is built or loaded.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelOptions {
    /// Dropout probability at the family's places (GPT-2: embeddings, attention probabilities,
    /// residual branches). 0 by default: a checkpoint's own dropout settings are not used, so
    /// evaluation and parity tests are deterministic (nanoGPT's `from_pretrained` does the
    /// same). Burn's dropout is only active on an autodiff backend.
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

/// What a model family implements; [`Model`] dispatches to it. The module tree's field names
/// are the checkpoint's tensor names (walked by [`names`]), so loading and saving need no
/// remapping table.
pub trait CausalLm<B: Backend>: Module<B> {
    /// The architecture, in the checkpoint's spelling.
    type Config;

    /// A freshly initialised model (the family's own initialisation), every projection f32.
    /// Parameters are allocated lazily, so building one only to load a checkpoint into it
    /// costs nothing.
    fn init(config: &Self::Config, dropout: f64, device: &B::Device) -> Self;

    /// The architecture the model was built from.
    fn config(&self) -> &Self::Config;

    /// The projections (every linear layer that may compute in FP8) with their Hugging Face
    /// module names (`h.1.mlp.c_fc`), in forward order.
    fn projections(&self) -> Vec<(String, &Projection<B>)>;

    /// [`CausalLm::projections`], to give them their FP8 sites.
    fn projections_mut(&mut self) -> Vec<(String, &mut Projection<B>)>;

    /// The FP8 context the projections' sites share (kept with the model: its policy, records
    /// and amax histories).
    fn fp8(&self) -> &Fp8Context;

    /// Replaces the FP8 context (after new sites were given).
    fn set_fp8_context(&mut self, context: Fp8Context);

    /// Gives the LM head a site of its own (`precision.head: "bf16"`), or none (f32).
    fn set_head_site(&mut self, site: Option<Fp8Site>);

    /// Transformer blocks between [`CausalLm::embed`] and [`CausalLm::head`].
    fn blocks(&self) -> usize;

    /// Hidden states `[B, T, C]` entering the first block, for tokens `[B, T]` (at the
    /// segments' positions when packed, else `0..T`).
    ///
    /// # Panics
    /// If T (packed: the longest example) exceeds the context length (callers validate user
    /// input first).
    fn embed(&self, tokens: Tensor<B, 2, Int>, segments: Option<&Segments>) -> Tensor<B, 3>
    where
        B: ModelBackend;

    /// Whether an embedding parameter takes a gradient (not under LoRA's frozen base).
    fn embeddings_trainable(&self) -> bool;

    /// Whether a parameter of block `index` takes a gradient.
    fn block_trainable(&self, index: usize) -> bool;

    /// Block `index` on hidden states `[B, T, C]`; packed, each segment attends to itself.
    fn block(&self, index: usize, x: Tensor<B, 3>, segments: Option<&Segments>) -> Tensor<B, 3>
    where
        B: ModelBackend;

    /// Logits `[B, T, vocab_size]` from the last block's hidden states (final norm and LM head).
    fn head(&self, x: Tensor<B, 3>) -> Tensor<B, 3>
    where
        B: ModelBackend;

    /// Logits `[B, T, vocab_size]` for tokens `[B, T]` (T at most the context length), each
    /// of the segments' examples on its own when packed (then each example at most the
    /// context length, the row any length).
    fn forward(&self, tokens: Tensor<B, 2, Int>, segments: Option<&Segments>) -> Tensor<B, 3>
    where
        B: ModelBackend,
    {
        let x = self.embed(tokens, segments);
        let x = (0..self.blocks()).fold(x, |x, i| self.block(i, x, segments));
        self.head(x)
    }
}

/// A language model of any family: the type the trainer uses. Its variants add no level to
/// parameter names ([`names`] skips an enum's variant), so a GPT-2 parameter is
/// `transformer.h.0.attn.c_attn.weight` here as in the checkpoint.
#[derive(Module, Debug)]
pub enum Model<B: Backend> {
    Gpt2(Gpt2<B>),
    Llama(Llama<B>),
}

/// `$body` with `$m` bound to the family's model, whichever variant `$model` is.
macro_rules! dispatch {
    ($model:expr, $m:ident => $body:expr) => {
        match $model {
            Model::Gpt2($m) => $body,
            Model::Llama($m) => $body,
        }
    };
}

impl<B: Backend> Model<B> {
    /// A freshly initialised model of `config` with the FP8 sites `options.fp8` asks for.
    pub fn new(
        config: &ModelConfig,
        options: &ModelOptions,
        device: &B::Device,
    ) -> Result<Self, LayerFilterError> {
        let mut model = match config {
            ModelConfig::Gpt2(c) => Self::Gpt2(Gpt2::init(c, options.dropout, device)),
            ModelConfig::Llama(c) => Self::Llama(Llama::init(c, options.dropout, device)),
        };
        model.set_fp8(options.fp8.clone())?;
        Ok(model)
    }

    /// The architecture this model was built from.
    pub fn config(&self) -> ModelConfig {
        match self {
            Self::Gpt2(m) => ModelConfig::Gpt2(m.config().clone()),
            Self::Llama(m) => ModelConfig::Llama(m.config().clone()),
        }
    }

    /// Applies an FP8 policy: the projections its layer filter matches get an FP8 site named
    /// by their Hugging Face module name, the others compute in f32; with FP8 off, every
    /// projection is f32. Every filter pattern must match some projection.
    pub fn set_fp8(&mut self, policy: Fp8Policy) -> Result<(), LayerFilterError> {
        if policy.is_on() {
            let names = self.config().projection_names();
            policy
                .layers
                .check(&names, &self.config().projection_names_hint())?;
        }
        let on = |name: &str| policy.is_on() && policy.layers.matches(name);
        let context = Fp8Context::new(policy.clone());
        // The head's GEMMs in bf16: a site under a policy of its own (no FP8, no statistics).
        let head = (policy.head == HeadPrecision::Bf16).then(|| {
            let head_policy = Fp8Policy {
                cache_weights: policy.cache_weights,
                ..Fp8Policy::with_mode(Precision::Bf16)
            };
            Fp8Context::new(head_policy).site("lm_head")
        });
        dispatch!(self, m => {
            for (name, projection) in m.projections_mut() {
                projection.fp8 = on(&name).then(|| context.site(&name));
            }
            m.set_fp8_context(context);
            m.set_head_site(head);
        });
        Ok(())
    }

    /// The FP8 context of the model's projections: the policy in force and their records.
    pub fn fp8(&self) -> &Fp8Context {
        dispatch!(self, m => m.fp8())
    }

    /// Gives every projection that `config`'s targets name a fresh LoRA adapter (`A` drawn
    /// from `seed`, `B` zero; [`lora`]); returns how many. The base stays trainable until
    /// [`Model::freeze_base`].
    pub fn add_lora(&mut self, config: &lora::LoraConfig, seed: u64) -> usize {
        let targets = config.targets(self.config().lora_default_targets());
        let branch = projection::LoraBranch {
            scaling: config.scaling(),
            dropout: burn::nn::DropoutConfig::new(config.lora_dropout).init(),
        };
        let r = config.r;
        dispatch!(self, m => {
            let mut adapted = 0;
            for (name, p) in m.projections_mut() {
                if targets.matches(&name) {
                    let (d_input, _) = p.dims();
                    let a = lora::initial_a(seed, &format!("{name}.lora_a.weight"), r, d_input);
                    p.add_lora(r, a, branch.clone());
                    adapted += 1;
                }
            }
            adapted
        })
    }

    /// Whether the model carries LoRA adapters.
    pub fn has_lora(&self) -> bool {
        dispatch!(self, m => m.projections().iter().any(|(_, p)| p.lora.is_some()))
    }

    /// Only the adapters take gradients (LoRA's frozen base).
    pub fn freeze_base(self) -> Self {
        names::set_trainable(self, lora::is_adapter_param)
    }

    /// Every frozen FP8 projection weight kept as its FP8 cast, its f32 tensor dropped
    /// (`precision.base_storage: "fp8"`; [`Projection::store_fp8`]). Returns how many weights
    /// are stored and the bytes they hold, or the name of a weight holding an infinity or NaN.
    pub fn store_base_fp8(&mut self) -> Result<(usize, usize), String> {
        dispatch!(self, m => {
            let (mut count, mut bytes) = (0, 0);
            for (name, p) in m.projections_mut() {
                match p.store_fp8() {
                    Ok(Some(b)) => {
                        count += 1;
                        bytes += b;
                    }
                    Ok(None) => {}
                    Err(e) => return Err(format!("{name}.weight: {e}")),
                }
            }
            Ok((count, bytes))
        })
    }

    /// How many projection weights are FP8-stored, and the bytes they hold.
    pub fn stored_base(&self) -> (usize, usize) {
        dispatch!(self, m => m
            .projections()
            .iter()
            .filter_map(|(_, p)| p.stored.as_ref().map(|w| w.bytes()))
            .fold((0, 0), |(n, b), bytes| (n + 1, b + bytes)))
    }

    /// Every adapter merged into its projection's weight (`W + scaling * B @ A`) and removed.
    pub fn merge_lora(&mut self) {
        dispatch!(self, m => {
            for (_, p) in m.projections_mut() {
                p.merge_lora();
            }
        });
    }

    /// Hugging Face names of the FP8 projections, in forward order.
    pub fn fp8_layers(&self) -> Vec<String> {
        dispatch!(self, m => m
            .projections()
            .into_iter()
            .filter_map(|(_, p)| p.fp8.as_ref().map(|s| s.name().to_string()))
            .collect())
    }
}

impl<B: ModelBackend> Model<B> {
    /// Logits `[B, T, vocab_size]` for tokens `[B, T]`.
    ///
    /// # Panics
    /// If T exceeds the context length (callers validate user input first).
    pub fn forward(&self, tokens: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        self.forward_packed(tokens, None)
    }

    /// Logits `[B, T, vocab_size]` for tokens `[B, T]`; with `segments` (packed rows), each
    /// example's logits are those it would have alone ([`Segments`]).
    pub fn forward_packed(
        &self,
        tokens: Tensor<B, 2, Int>,
        segments: Option<&Segments>,
    ) -> Tensor<B, 3> {
        dispatch!(self, m => m.forward(tokens, segments))
    }

    /// Transformer blocks (see [`CausalLm::blocks`]: a forward is `embed`, each block, `head`).
    pub fn blocks(&self) -> usize {
        dispatch!(self, m => m.blocks())
    }

    /// Hidden states entering the first block ([`CausalLm::embed`]).
    pub fn embed(&self, tokens: Tensor<B, 2, Int>, segments: Option<&Segments>) -> Tensor<B, 3> {
        dispatch!(self, m => m.embed(tokens, segments))
    }

    /// Whether an embedding parameter takes a gradient ([`CausalLm::embeddings_trainable`]).
    pub fn embeddings_trainable(&self) -> bool {
        dispatch!(self, m => m.embeddings_trainable())
    }

    /// Whether a parameter of block `index` takes a gradient ([`CausalLm::block_trainable`]).
    pub fn block_trainable(&self, index: usize) -> bool {
        dispatch!(self, m => m.block_trainable(index))
    }

    /// Block `index` ([`CausalLm::block`]).
    pub fn block(
        &self,
        index: usize,
        x: Tensor<B, 3>,
        segments: Option<&Segments>,
    ) -> Tensor<B, 3> {
        dispatch!(self, m => m.block(index, x, segments))
    }

    /// Logits from the last block's hidden states ([`CausalLm::head`]).
    pub fn head(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        dispatch!(self, m => m.head(x))
    }

    /// Mean next-token cross-entropy of `tokens` against `targets` (both `[B, T]`), and the
    /// logits (composed from Burn's ops: the reference the fused loss is tested against).
    pub fn forward_loss(
        &self,
        tokens: Tensor<B, 2, Int>,
        targets: Tensor<B, 2, Int>,
    ) -> (Tensor<B, 1>, Tensor<B, 3>) {
        let logits = self.forward(tokens);
        (loss::mean_cross_entropy(logits.clone(), targets), logits)
    }
}
