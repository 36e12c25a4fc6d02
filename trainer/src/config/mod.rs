//! GPT-2 architecture configuration, read from and written to Hugging Face `config.json`.
//!
//! Field names are those of `transformers.GPT2Config` (`n_embd`, `n_layer`, ...), so a folder
//! downloaded from the hub (gpt2, distilgpt2, Cerebras-GPT) is read as is and the file we write is
//! read by `transformers`. HF configs carry many generic keys (`torch_dtype`, `task_specific_params`,
//! ...) that do not change the architecture; they are kept in [`Gpt2Config::extra`] and written back
//! unchanged. Keys that would change the computation in a way we do not implement are errors.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

mod hf_json;
mod presets;

/// The activation between `mlp.c_fc` and `mlp.c_proj` (`activation_function` in `config.json`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// `gelu_new`: the tanh approximation GPT-2 was trained with (`modeling_gpt2.py`, `NewGELUActivation`).
    /// `gelu_pytorch_tanh` is the same formula and is read as this.
    GeluNew,
    /// `gelu`: the exact erf form, used by Cerebras-GPT.
    Gelu,
}

impl Activation {
    fn parse(name: &str) -> Option<Self> {
        match name {
            "gelu_new" | "gelu_pytorch_tanh" => Some(Self::GeluNew),
            "gelu" => Some(Self::Gelu),
            _ => None,
        }
    }

    /// The name written to `config.json`.
    pub fn hf_name(self) -> &'static str {
        match self {
            Self::GeluNew => "gelu_new",
            Self::Gelu => "gelu",
        }
    }
}

/// A bad `config.json`: names the file and the field, and says what would fix it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not valid JSON: {source}")]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{path}: missing field `{field}` (a Hugging Face GPT-2 config.json has it)")]
    MissingField { path: PathBuf, field: &'static str },
    #[error("{path}: field `{field}` is {found}, expected {expected}")]
    BadField {
        path: PathBuf,
        field: &'static str,
        found: String,
        expected: String,
    },
    #[error(
        "{path}: unsupported architecture {found} (only GPT-2 is implemented: model_type \"gpt2\", \
         architectures GPT2LMHeadModel / GPT2Model)"
    )]
    UnsupportedArchitecture { path: PathBuf, found: String },
    #[error("unknown model preset `{0}`; known presets: {known}", known = Gpt2Config::PRESETS.join(", "))]
    UnknownPreset(String),
}

/// GPT-2 hyper-parameters (Hugging Face `GPT2Config` field names and defaults).
#[derive(Clone, Debug, PartialEq)]
pub struct Gpt2Config {
    /// Number of token embeddings (rows of `wte`); 50257 for GPT-2's BPE.
    pub vocab_size: usize,
    /// Maximum sequence length (rows of `wpe`).
    pub n_positions: usize,
    /// Width of the residual stream.
    pub n_embd: usize,
    /// Number of transformer blocks (`h.0` ... `h.{n_layer-1}`).
    pub n_layer: usize,
    /// Attention heads per block; must divide `n_embd`.
    pub n_head: usize,
    /// Width of the MLP hidden layer; `None` (JSON null) means `4 * n_embd`.
    pub n_inner: Option<usize>,
    /// Activation of the MLP.
    pub activation_function: Activation,
    /// Epsilon of every layer norm (HF default 1e-5).
    pub layer_norm_epsilon: f64,
    /// Dropout probabilities as stored in the checkpoint. Kept for round trips only: the model's
    /// dropout comes from [`crate::ModelOptions::dropout`] (0 by default, as nanoGPT's
    /// `from_pretrained` does), so parity tests and evaluation are deterministic.
    pub resid_pdrop: f64,
    /// See [`Gpt2Config::resid_pdrop`].
    pub embd_pdrop: f64,
    /// See [`Gpt2Config::resid_pdrop`].
    pub attn_pdrop: f64,
    /// Standard deviation of the normal initialisation of new weights (HF default 0.02).
    pub initializer_range: f64,
    /// Divide attention scores by sqrt(head_dim) (HF default true).
    pub scale_attn_weights: bool,
    /// Additionally divide attention scores of block i by (i + 1) (HF default false).
    pub scale_attn_by_inverse_layer_idx: bool,
    /// The LM head is `wte` transposed (HF default true). When false, `lm_head.weight` is a separate matrix.
    pub tie_word_embeddings: bool,
    /// Token ids recorded in the config (GPT-2: 50256 for both).
    pub bos_token_id: Option<u32>,
    /// See [`Gpt2Config::bos_token_id`].
    pub eos_token_id: Option<u32>,
    /// Every other key of the source `config.json`, written back unchanged on save.
    pub extra: Map<String, Value>,
}

impl Gpt2Config {
    /// A GPT-2 config with HF defaults for everything but the sizes.
    pub fn new(
        vocab_size: usize,
        n_positions: usize,
        n_embd: usize,
        n_layer: usize,
        n_head: usize,
    ) -> Self {
        Self {
            vocab_size,
            n_positions,
            n_embd,
            n_layer,
            n_head,
            n_inner: None,
            activation_function: Activation::GeluNew,
            layer_norm_epsilon: 1e-5,
            resid_pdrop: 0.1,
            embd_pdrop: 0.1,
            attn_pdrop: 0.1,
            initializer_range: 0.02,
            scale_attn_weights: true,
            scale_attn_by_inverse_layer_idx: false,
            tie_word_embeddings: true,
            bos_token_id: Some(50256),
            eos_token_id: Some(50256),
            extra: Map::new(),
        }
    }

    /// Width of the MLP hidden layer (`n_inner`, or `4 * n_embd` when it is null).
    pub fn inner_dim(&self) -> usize {
        self.n_inner.unwrap_or(4 * self.n_embd)
    }

    /// Width of one attention head.
    pub fn head_dim(&self) -> usize {
        self.n_embd / self.n_head
    }

    /// Number of parameters (tied head counted once).
    pub fn num_params(&self) -> usize {
        let (c, f, l) = (self.n_embd, self.inner_dim(), self.n_layer);
        let block = 2 * 2 * c + (c * 3 * c + 3 * c) + (c * c + c) + (c * f + f) + (f * c + c);
        let head = if self.tie_word_embeddings {
            0
        } else {
            self.vocab_size * c
        };
        self.vocab_size * c + self.n_positions * c + l * block + 2 * c + head
    }

    /// Checks the relations between fields (positive sizes, heads divide the width).
    pub fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let bad = |field, found: usize, expected: &str| ConfigError::BadField {
            path: path.to_path_buf(),
            field,
            found: found.to_string(),
            expected: expected.to_string(),
        };
        for (field, value) in [
            ("vocab_size", self.vocab_size),
            ("n_positions", self.n_positions),
            ("n_embd", self.n_embd),
            ("n_layer", self.n_layer),
            ("n_head", self.n_head),
            ("n_inner", self.inner_dim()),
        ] {
            if value == 0 {
                return Err(bad(field, 0, "a positive integer"));
            }
        }
        if !self.n_embd.is_multiple_of(self.n_head) {
            return Err(bad(
                "n_head",
                self.n_head,
                &format!("a divisor of n_embd ({})", self.n_embd),
            ));
        }
        if self.layer_norm_epsilon.is_nan() || self.layer_norm_epsilon <= 0.0 {
            return Err(ConfigError::BadField {
                path: path.to_path_buf(),
                field: "layer_norm_epsilon",
                found: self.layer_norm_epsilon.to_string(),
                expected: "a positive number".to_string(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpt2_small_has_124m_parameters() {
        assert_eq!(Gpt2Config::gpt2_small().num_params(), 124_439_808);
    }
}
