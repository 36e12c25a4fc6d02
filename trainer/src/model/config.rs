//! GPT-2 architecture configuration, read from and written to Hugging Face `config.json`.
//!
//! Field names are those of `transformers.GPT2Config` (`n_embd`, `n_layer`, ...), so a folder
//! downloaded from the hub (gpt2, distilgpt2, Cerebras-GPT) is read as is and the file we write is
//! read by `transformers`. HF configs carry many generic keys (`torch_dtype`, `task_specific_params`,
//! ...) that do not change the architecture; they are kept in [`Gpt2Config::extra`] and written back
//! unchanged. Keys that would change the computation in a way we do not implement are errors.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

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
    MissingField { path: PathBuf, field: String },
    #[error("{path}: field `{field}`: {message}")]
    BadField {
        path: PathBuf,
        field: String,
        message: String,
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

    /// Checks the relations between fields (positive sizes, heads divide the width).
    pub fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let bad = |field: &str, found: usize, expected: &str| ConfigError::BadField {
            path: path.to_path_buf(),
            field: field.to_string(),
            message: format!("is {found}, expected {expected}"),
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
                field: "layer_norm_epsilon".into(),
                message: format!("is {}, expected a positive number", self.layer_norm_epsilon),
            });
        }
        Ok(())
    }
}

/// `config.json` as Hugging Face writes it: every key optional (absent and `null` read the same),
/// unknown keys kept in `extra`.
#[derive(Deserialize)]
struct HfConfigFile {
    model_type: Option<String>,
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
    /// Reads a Hugging Face GPT-2 `config.json`.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let value: Value = serde_json::from_str(&text).map_err(|source| ConfigError::Json {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_json(value, path)
    }

    /// Parses a `config.json` already read; `path` is only used in error messages.
    pub fn from_json(value: Value, path: &Path) -> Result<Self, ConfigError> {
        let bad = |field: &str, message: String| ConfigError::BadField {
            path: path.to_path_buf(),
            field: field.to_string(),
            message,
        };
        if !value.is_object() {
            let kind = datasets::json_type_name(&value);
            return Err(bad(
                "(top level)",
                format!("is {kind}, expected a JSON object"),
            ));
        }
        let file: HfConfigFile = serde_path_to_error::deserialize(value)
            .map_err(|e| bad(&e.path().to_string(), e.into_inner().to_string()))?;
        check_architecture(&file, path)?;
        let required = |field: &str, v: Option<usize>| {
            v.ok_or_else(|| ConfigError::MissingField {
                path: path.to_path_buf(),
                field: field.to_string(),
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

/// `model_type` must be "gpt2" and `architectures` (when present) GPT-2 classes; a config with
/// neither is not recognisably GPT-2.
fn check_architecture(file: &HfConfigFile, path: &Path) -> Result<(), ConfigError> {
    let unsupported = |found: String| ConfigError::UnsupportedArchitecture {
        path: path.to_path_buf(),
        found,
    };
    if let Some(model_type) = file.model_type.as_deref().filter(|t| *t != "gpt2") {
        return Err(unsupported(format!("model_type \"{model_type}\"")));
    }
    for class in file.architectures.iter().flatten() {
        if !matches!(class.as_str(), "GPT2LMHeadModel" | "GPT2Model") {
            return Err(unsupported(format!("architectures entry \"{class}\"")));
        }
    }
    if file.model_type.is_none() && file.architectures.is_none() {
        return Err(ConfigError::MissingField {
            path: path.to_path_buf(),
            field: "model_type".into(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn parse(value: Value) -> Result<Gpt2Config, ConfigError> {
        Gpt2Config::from_json(value, Path::new("config.json"))
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
        json["model_type"] = json!("llama");
        let err = parse(json).unwrap_err().to_string();
        assert!(
            err.contains("llama") && err.contains("config.json"),
            "{err}"
        );
    }

    #[test]
    fn missing_and_mistyped_fields_are_named() {
        let field_of = |json: Value| match parse(json).unwrap_err() {
            ConfigError::MissingField { field, .. } => ("missing", field),
            ConfigError::BadField { field, .. } => ("bad", field),
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
}
