//! GPT-2 architecture configuration, read from and written to Hugging Face `config.json`.
//!
//! Field names are those of `transformers.GPT2Config` (`n_embd`, `n_layer`, ...), so a folder
//! downloaded from the hub (gpt2, distilgpt2, Cerebras-GPT) is read as is and the file we write is
//! read by `transformers`. HF configs carry many generic keys (`torch_dtype`, `task_specific_params`,
//! ...) that do not change the architecture; they are kept in [`Gpt2Config::extra`] and written back
//! unchanged. Keys that would change the computation in a way we do not implement are errors.

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::FieldError;
use crate::model::config::{FileTensor, ModelConfigError, PresetOverrides};

/// The activation between `mlp.c_fc` and `mlp.c_proj` (`activation_function` in `config.json`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Activation {
    /// `gelu_new`: the tanh approximation GPT-2 was trained with (`modeling_gpt2.py`, `NewGELUActivation`).
    /// `gelu_pytorch_tanh` is the same formula and is read as this.
    #[serde(rename = "gelu_new", alias = "gelu_pytorch_tanh")]
    GeluNew,
    /// `gelu`: the exact erf form, used by Cerebras-GPT.
    #[serde(rename = "gelu")]
    Gelu,
}

/// GPT-2 hyper-parameters (Hugging Face `GPT2Config` field names and defaults).
#[derive(Clone, Debug, PartialEq, Serialize)]
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
    #[serde(flatten)]
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
        self.n_inner.unwrap_or(self.n_embd.saturating_mul(4))
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

    /// The fields that make the shape (what `--resume` may not change), with their values.
    pub fn shape_fields(&self) -> Vec<(&'static str, String)> {
        vec![
            ("vocab_size", self.vocab_size.to_string()),
            ("n_positions", self.n_positions.to_string()),
            ("n_embd", self.n_embd.to_string()),
            ("n_layer", self.n_layer.to_string()),
            ("n_head", self.n_head.to_string()),
            ("n_inner", self.inner_dim().to_string()),
            (
                "activation_function",
                format!("{:?}", self.activation_function),
            ),
        ]
    }

    /// Parameters by the field that drives them (f64: an estimate that must not overflow for
    /// absurd sizes): the embeddings by `vocab_size` and `n_positions`, the blocks and the final
    /// layer norm by `n_layer` (an untied head is not counted).
    pub fn size_parts(&self) -> Vec<(&'static str, f64)> {
        let (embd, inner) = (self.n_embd as f64, self.inner_dim() as f64);
        let block = 4.0 * embd * embd + 2.0 * embd * inner + 9.0 * embd + inner;
        vec![
            ("vocab_size", self.vocab_size as f64 * embd),
            ("n_positions", self.n_positions as f64 * embd),
            ("n_layer", self.n_layer as f64 * block + 2.0 * embd),
        ]
    }

    /// This preset with a job's shape overrides (new token ids when the vocabulary changes).
    pub fn with_overrides(mut self, o: &PresetOverrides) -> Self {
        let fields = [
            (&mut self.vocab_size, o.vocab_size),
            (&mut self.n_positions, o.n_positions),
            (&mut self.n_embd, o.n_embd),
            (&mut self.n_layer, o.n_layer),
            (&mut self.n_head, o.n_head),
        ];
        for (field, value) in fields {
            if let Some(value) = value {
                *field = value;
            }
        }
        if o.n_inner.is_some() {
            self.n_inner = o.n_inner;
        }
        if o.vocab_size.is_some() {
            self.bos_token_id = None;
            self.eos_token_id = None;
        }
        self
    }

    /// What a tensor of a checkpoint file is, tolerating the variants of hub uploads: names
    /// with or without the `transformer.` prefix; the attention-mask buffers `h.N.attn.bias` /
    /// `h.N.attn.masked_bias` of old uploads; `lm_head.weight` stored although the head is tied.
    pub fn file_tensor(&self, file_name: &str) -> FileTensor {
        if is_attention_buffer(file_name) {
            return FileTensor::Buffer;
        }
        let name = model_name(file_name);
        if name == "lm_head.weight" && self.tie_word_embeddings {
            return FileTensor::TiedHead {
                embedding: "transformer.wte.weight".into(),
                shape: vec![self.vocab_size, self.n_embd],
            };
        }
        FileTensor::Param(name)
    }

    /// Checks the relations between fields (positive sizes, heads divide the width).
    pub fn validate(&self, path: &Path) -> Result<(), ModelConfigError> {
        let bad = |field: &str, found: usize, expected: &str| {
            ModelConfigError::from(FieldError::new(
                path,
                field,
                format!("is {found}, expected {expected}"),
            ))
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
            let message = format!("is {}, expected a positive number", self.layer_norm_epsilon);
            return Err(FieldError::new(path, "layer_norm_epsilon", message).into());
        }
        Ok(())
    }
}

/// `config.json` as Hugging Face writes it: every key optional (absent and `null` read the same),
/// unknown keys kept in `extra`.
#[derive(Deserialize)]
struct HfConfigFile {
    /// Typed so that a value of the wrong type is named; which family the file is was decided
    /// by `ModelConfig::from_json` before.
    #[allow(dead_code)]
    model_type: Option<String>,
    /// See `model_type`.
    #[allow(dead_code)]
    architectures: Option<Vec<String>>,
    vocab_size: Option<usize>,
    n_positions: Option<usize>,
    /// Older configs (the original gpt2 upload) also have `n_ctx`, always equal to `n_positions`.
    n_ctx: Option<usize>,
    n_embd: Option<usize>,
    n_layer: Option<usize>,
    n_head: Option<usize>,
    n_inner: Option<usize>,
    activation_function: Option<Activation>,
    layer_norm_epsilon: Option<f64>,
    resid_pdrop: Option<f64>,
    embd_pdrop: Option<f64>,
    attn_pdrop: Option<f64>,
    initializer_range: Option<f64>,
    scale_attn_weights: Option<bool>,
    scale_attn_by_inverse_layer_idx: Option<bool>,
    /// Changes only the precision of fp16 attention scores; in f32 it is what we compute, so it
    /// is accepted either way (and written as false).
    #[allow(dead_code)]
    reorder_and_upcast_attn: Option<bool>,
    tie_word_embeddings: Option<bool>,
    bos_token_id: Option<u32>,
    eos_token_id: Option<u32>,
    #[serde(flatten)]
    extra: Map<String, Value>,
}

impl Gpt2Config {
    /// Parses a GPT-2 `config.json` already read (its architecture keys checked by
    /// [`crate::model::ModelConfig::from_json`]); `path` is only used in error messages.
    pub fn from_json(value: Value, path: &Path) -> Result<Self, ModelConfigError> {
        let bad = |field: &str, message: String| {
            ModelConfigError::from(FieldError::new(path, field, message))
        };
        let file: HfConfigFile = serde_path_to_error::deserialize(value)
            .map_err(|e| bad(&e.path().to_string(), e.into_inner().to_string()))?;
        let required = |field: &str, v: Option<usize>| {
            v.ok_or_else(|| ModelConfigError::MissingField {
                path: path.to_path_buf(),
                field: field.to_string(),
                family: "GPT-2",
            })
        };
        let defaults = Self::new(0, 0, 0, 0, 0);
        let n_positions = required("n_positions", file.n_positions)?;
        if let Some(n_ctx) = file.n_ctx.filter(|&n| n != n_positions) {
            return Err(bad(
                "n_ctx",
                format!("is {n_ctx}, expected equal to n_positions ({n_positions})"),
            ));
        }
        let config = Self {
            vocab_size: required("vocab_size", file.vocab_size)?,
            n_positions,
            n_embd: required("n_embd", file.n_embd)?,
            n_layer: required("n_layer", file.n_layer)?,
            n_head: required("n_head", file.n_head)?,
            n_inner: file.n_inner,
            activation_function: file
                .activation_function
                .unwrap_or(defaults.activation_function),
            layer_norm_epsilon: file
                .layer_norm_epsilon
                .unwrap_or(defaults.layer_norm_epsilon),
            resid_pdrop: file.resid_pdrop.unwrap_or(defaults.resid_pdrop),
            embd_pdrop: file.embd_pdrop.unwrap_or(defaults.embd_pdrop),
            attn_pdrop: file.attn_pdrop.unwrap_or(defaults.attn_pdrop),
            initializer_range: file.initializer_range.unwrap_or(defaults.initializer_range),
            scale_attn_weights: file.scale_attn_weights.unwrap_or(true),
            scale_attn_by_inverse_layer_idx: file.scale_attn_by_inverse_layer_idx.unwrap_or(false),
            tie_word_embeddings: file.tie_word_embeddings.unwrap_or(true),
            bos_token_id: file.bos_token_id,
            eos_token_id: file.eos_token_id,
            extra: file.extra,
        };
        config.validate(path)?;
        Ok(config)
    }

    /// The `config.json` we write: `extra` keys, then every typed field in HF's spelling, with
    /// the architecture keys `transformers` dispatches on.
    pub fn to_json(&self) -> Value {
        let mut map = self.extra.clone();
        let Ok(Value::Object(typed)) = serde_json::to_value(Self {
            extra: Map::new(),
            ..self.clone()
        }) else {
            unreachable!("a struct serialises to an object")
        };
        map.insert("model_type".into(), "gpt2".into());
        map.insert(
            "architectures".into(),
            serde_json::json!(["GPT2LMHeadModel"]),
        );
        map.extend(typed);
        map.insert("reorder_and_upcast_attn".into(), false.into());
        Value::Object(map)
    }
}

/// The name of a checkpoint tensor in our module tree: `transformer.` prefixed unless it is the head.
fn model_name(file_name: &str) -> String {
    if file_name.starts_with("transformer.") || file_name.starts_with("lm_head.") {
        file_name.to_string()
    } else {
        format!("transformer.{file_name}")
    }
}

/// `h.N.attn.bias` / `h.N.attn.masked_bias`: the causal-mask buffers older `transformers` saved.
fn is_attention_buffer(file_name: &str) -> bool {
    let name = file_name.strip_prefix("transformer.").unwrap_or(file_name);
    let Some(rest) = name.strip_prefix("h.") else {
        return false;
    };
    let Some((layer, buffer)) = rest.split_once('.') else {
        return false;
    };
    layer.chars().all(|c| c.is_ascii_digit()) && matches!(buffer, "attn.bias" | "attn.masked_bias")
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::model::ModelConfig;

    fn parse(value: Value) -> Result<Gpt2Config, ModelConfigError> {
        match ModelConfig::from_json(value, Path::new("config.json"))? {
            ModelConfig::Gpt2(c) => Ok(c),
            other => panic!("not a GPT-2 config: {other:?}"),
        }
    }

    #[test]
    fn gpt2_small_has_124m_parameters() {
        assert_eq!(Gpt2Config::gpt2_small().num_params(), 124_439_808);
    }

    #[test]
    fn round_trips_through_json_with_extra_keys() {
        let mut config = Gpt2Config::tiny();
        config.extra.insert("torch_dtype".into(), json!("float32"));
        let written = config.to_json();
        assert_eq!(written["model_type"], "gpt2");
        assert_eq!(written["activation_function"], "gelu_new");
        assert_eq!(parse(written).unwrap(), config);
    }

    #[test]
    fn null_n_inner_means_four_times_width() {
        let mut json = Gpt2Config::gpt2_small().to_json();
        json["n_inner"] = Value::Null;
        assert_eq!(parse(json).unwrap().inner_dim(), 3072);
    }

    #[test]
    fn unknown_architecture_is_named() {
        let mut json = Gpt2Config::tiny().to_json();
        json["model_type"] = json!("bert");
        let err = parse(json).unwrap_err().to_string();
        assert!(err.contains("bert") && err.contains("config.json"), "{err}");
    }

    #[test]
    fn missing_and_mistyped_fields_are_named() {
        let field_of = |json: Value| match parse(json).unwrap_err() {
            ModelConfigError::MissingField { field, .. } => ("missing", field),
            ModelConfigError::Field(FieldError { field, .. }) => ("bad", field),
            other => panic!("unexpected {other}"),
        };
        let mut json = Gpt2Config::tiny().to_json();
        json.as_object_mut().unwrap().remove("n_embd");
        assert_eq!(field_of(json), ("missing", "n_embd".into()));
        for (field, value) in [
            ("n_head", json!("four")),
            ("n_head", json!(5)),
            ("activation_function", json!("relu")),
            ("n_ctx", json!(7)),
        ] {
            let mut json = Gpt2Config::tiny().to_json();
            json[field] = value.clone();
            assert_eq!(field_of(json), ("bad", field.into()), "{field} = {value}");
        }
        let err = parse(json!([1])).unwrap_err().to_string();
        assert!(err.contains("an array"), "{err}");
    }

    #[test]
    fn buffers_are_recognised_by_exact_name() {
        assert!(is_attention_buffer("h.0.attn.bias"));
        assert!(is_attention_buffer("transformer.h.11.attn.masked_bias"));
        assert!(!is_attention_buffer("h.0.attn.c_attn.bias"));
        assert!(!is_attention_buffer("h.x.attn.bias"));
        assert!(!is_attention_buffer("wte.weight"));
    }

    #[test]
    fn names_gain_the_transformer_prefix() {
        assert_eq!(model_name("h.0.ln_1.weight"), "transformer.h.0.ln_1.weight");
        assert_eq!(
            model_name("transformer.wte.weight"),
            "transformer.wte.weight"
        );
        assert_eq!(model_name("lm_head.weight"), "lm_head.weight");
    }
}
