//! Llama-family architecture configuration: `transformers`' `LlamaConfig`, `Qwen2Config` and
//! `MistralConfig`, read from and written to a checkpoint's `config.json` in their own spelling
//! (`hidden_size`, `num_key_value_heads`, `rope_theta`, ...).
//!
//! Both generations of the file are read: transformers 4 (`rope_theta` and `rope_scaling`, whose
//! kind is `rope_type` or the older `type`; `torch_dtype`) and transformers 5 (`rope_parameters`
//! holding `rope_type`, `rope_theta` and the scaling's numbers; `dtype`). [`LlamaFile`] is the
//! file as written, every key optional; [`LlamaFile::into_config`] turns it into the runtime
//! [`LlamaConfig`], with the family's defaults, and names the field of anything it cannot use.
//! Keys that do not change the computation (`torch_dtype`, `use_cache`, `pad_token_id`, ...)
//! are kept in [`LlamaConfig::extra`] and written back unchanged.

use std::path::Path;

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::error::FieldError;
use crate::model::config::{FileTensor, ModelConfigError, PresetOverrides};

/// Which `transformers` class the checkpoint is: the same computation up to the differences
/// each config states (Qwen2's q/k/v biases, Mistral's sliding window).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    /// `model_type` "llama", `LlamaForCausalLM` (Llama 2 and 3, SmolLM2, TinyLlama).
    Llama,
    /// `model_type` "qwen2", `Qwen2ForCausalLM` (Qwen2, Qwen2.5).
    Qwen2,
    /// `model_type` "mistral", `MistralForCausalLM`.
    Mistral,
}

impl Variant {
    /// `model_type` in `config.json`.
    pub fn model_type(self) -> &'static str {
        match self {
            Self::Llama => "llama",
            Self::Qwen2 => "qwen2",
            Self::Mistral => "mistral",
        }
    }

    /// The `transformers` class `architectures` names.
    pub fn architecture(self) -> &'static str {
        match self {
            Self::Llama => "LlamaForCausalLM",
            Self::Qwen2 => "Qwen2ForCausalLM",
            Self::Mistral => "MistralForCausalLM",
        }
    }

    /// The variant of a `model_type`, if it is one of the family's.
    pub fn of_model_type(model_type: &str) -> Option<Self> {
        [Self::Llama, Self::Qwen2, Self::Mistral]
            .into_iter()
            .find(|v| v.model_type() == model_type)
    }

    /// The variant of an `architectures` entry, if it is one of the family's.
    pub fn of_architecture(class: &str) -> Option<Self> {
        let base = class
            .strip_suffix("ForCausalLM")
            .or_else(|| class.strip_suffix("Model"))?;
        [Self::Llama, Self::Qwen2, Self::Mistral]
            .into_iter()
            .find(|v| v.architecture().strip_suffix("ForCausalLM") == Some(base))
    }
}

/// How rotary position frequencies are scaled (`rope_type`).
#[derive(Clone, Debug, PartialEq)]
pub enum RopeScaling {
    /// `default`: `theta^(-2i/d)`.
    Default,
    /// `linear`: positions divided by `factor` (every frequency divided by it).
    Linear { factor: f64 },
    /// `llama3` (Llama 3.1 and later): long wavelengths divided by `factor`, short ones kept,
    /// those between interpolated (`_compute_llama3_parameters` in `transformers`).
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: usize,
    },
}

/// How the file spells its rotary settings, so that a checkpoint is written back as it came.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeStyle {
    /// transformers 4: `rope_theta` and `rope_scaling`.
    Transformers4,
    /// transformers 5: `rope_parameters`.
    Transformers5,
}

/// A Llama-family architecture (runtime form).
#[derive(Clone, Debug, PartialEq)]
pub struct LlamaConfig {
    pub variant: Variant,
    /// Rows of `embed_tokens` (and of the head).
    pub vocab_size: usize,
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Width of the MLP (`gate_proj`, `up_proj` outputs).
    pub intermediate_size: usize,
    /// Decoder layers (`model.layers.0` ...).
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads (grouped-query attention: each serves `num_attention_heads /
    /// num_key_value_heads` query heads; 1 is multi-query attention).
    pub num_key_value_heads: usize,
    /// Width of one head (`head_dim`, else `hidden_size / num_attention_heads`).
    pub head_dim: usize,
    /// Whether `head_dim` was given (it may then differ from `hidden_size /
    /// num_attention_heads`); else the heads must divide `hidden_size`.
    pub explicit_head_dim: bool,
    /// The context length the rotary tables cover.
    pub max_position_embeddings: usize,
    /// Epsilon of every RMSNorm.
    pub rms_norm_eps: f64,
    /// Rotary base.
    pub rope_theta: f64,
    pub rope_scaling: RopeScaling,
    pub rope_style: RopeStyle,
    /// Biases on `q_proj`, `k_proj`, `v_proj` (Llama's `attention_bias`; always for Qwen2).
    pub qkv_bias: bool,
    /// A bias on `o_proj` (Llama's `attention_bias`; never for Qwen2).
    pub o_bias: bool,
    /// Biases on the MLP's projections (`mlp_bias`).
    pub mlp_bias: bool,
    /// The head is `embed_tokens` (no `lm_head.weight`).
    pub tie_word_embeddings: bool,
    /// Mistral's sliding window: a position attends to itself and the `w - 1` before it.
    pub sliding_window: Option<usize>,
    /// Standard deviation of new weights' normal initialisation (HF default 0.02).
    pub initializer_range: f64,
    pub bos_token_id: Option<u32>,
    /// End-of-text ids (Llama 3 configs list several; generation stops at any).
    pub eos_token_ids: Vec<u32>,
    /// Every other key of the source `config.json`, written back unchanged.
    pub extra: Map<String, Value>,
}

/// `config.json` as written: every key optional (absent and `null` read the same).
#[derive(Deserialize)]
pub struct LlamaFile {
    vocab_size: Option<usize>,
    hidden_size: Option<usize>,
    intermediate_size: Option<usize>,
    num_hidden_layers: Option<usize>,
    num_attention_heads: Option<usize>,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    hidden_act: Option<String>,
    max_position_embeddings: Option<usize>,
    rms_norm_eps: Option<f64>,
    rope_theta: Option<f64>,
    rope_scaling: Option<Map<String, Value>>,
    rope_parameters: Option<Map<String, Value>>,
    attention_bias: Option<bool>,
    mlp_bias: Option<bool>,
    tie_word_embeddings: Option<bool>,
    sliding_window: Option<usize>,
    use_sliding_window: Option<bool>,
    layer_types: Option<Vec<String>>,
    initializer_range: Option<f64>,
    bos_token_id: Option<u32>,
    eos_token_id: Option<OneOrMany>,
    /// Typed so that a wrong type is named; the family was decided before.
    #[allow(dead_code)]
    model_type: Option<String>,
    #[allow(dead_code)]
    architectures: Option<Vec<String>>,
    /// `pretraining_tp > 1` makes `transformers` 4 split each projection into slices whose
    /// products it sums: the same function, other rounding. Accepted, written back.
    pretraining_tp: Option<u32>,
    #[serde(flatten)]
    extra: Map<String, Value>,
}

/// `eos_token_id`: one id or a list (Llama 3).
#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(u32),
    Many(Vec<u32>),
}

impl LlamaFile {
    /// Reads the file of a `variant` checkpoint (`path` names it in errors).
    pub fn parse(value: Value, path: &Path) -> Result<Self, ModelConfigError> {
        serde_path_to_error::deserialize(value).map_err(|e| {
            FieldError::new(path, &e.path().to_string(), e.into_inner().to_string()).into()
        })
    }

    /// The runtime config, with `variant`'s defaults for what the file leaves out.
    pub fn into_config(
        self,
        variant: Variant,
        path: &Path,
    ) -> Result<LlamaConfig, ModelConfigError> {
        let bad = |field: &str, message: String| {
            ModelConfigError::from(FieldError::new(path, field, message))
        };
        let required = |field: &str, v: Option<usize>| {
            v.ok_or_else(|| ModelConfigError::MissingField {
                path: path.to_path_buf(),
                field: field.to_string(),
                family: "Llama-family",
            })
        };
        if let Some(act) = self.hidden_act.as_deref().filter(|a| *a != "silu") {
            return Err(bad(
                "hidden_act",
                format!("is \"{act}\"; the Llama family's MLP is SwiGLU (\"silu\")"),
            ));
        }
        let hidden_size = required("hidden_size", self.hidden_size)?;
        let num_attention_heads = required("num_attention_heads", self.num_attention_heads)?;
        let (rope_theta, rope_scaling, rope_style) = self.rope(path)?;
        let (qkv_bias, o_bias) = match variant {
            Variant::Qwen2 => (true, false),
            _ => {
                let bias = self.attention_bias.unwrap_or(false);
                (bias, bias)
            }
        };
        let sliding_window = match variant {
            Variant::Mistral => self.sliding_window,
            Variant::Qwen2 if self.use_sliding_window == Some(true) => {
                return Err(bad(
                    "use_sliding_window",
                    "is true: Qwen2's per-layer sliding window (max_window_layers) is not \
                     implemented; set it to false (Qwen2 and Qwen2.5 ship it off)"
                        .into(),
                ))
            }
            _ => None,
        };
        if let Some(kind) = (self.layer_types.iter().flatten()).find(|t| *t != "full_attention") {
            let window = variant == Variant::Mistral && kind == "sliding_attention";
            if !window {
                return Err(bad(
                    "layer_types",
                    format!("holds \"{kind}\"; only \"full_attention\" layers are implemented"),
                ));
            }
        }
        let mut extra = self.extra;
        if let Some(tp) = self.pretraining_tp {
            extra.insert("pretraining_tp".into(), tp.into());
        }
        if let Some(types) = self.layer_types {
            extra.insert("layer_types".into(), types.into());
        }
        if let (Variant::Qwen2, Some(window)) = (variant, self.sliding_window) {
            // Unused while `use_sliding_window` is false; kept for the round trip.
            extra.insert("sliding_window".into(), window.into());
        }
        if let Some(flag) = self.use_sliding_window {
            extra.insert("use_sliding_window".into(), flag.into());
        }
        let config = LlamaConfig {
            variant,
            vocab_size: required("vocab_size", self.vocab_size)?,
            hidden_size,
            intermediate_size: required("intermediate_size", self.intermediate_size)?,
            num_hidden_layers: required("num_hidden_layers", self.num_hidden_layers)?,
            num_attention_heads,
            num_key_value_heads: self.num_key_value_heads.unwrap_or(num_attention_heads),
            head_dim: self
                .head_dim
                .unwrap_or(hidden_size / num_attention_heads.max(1)),
            explicit_head_dim: self.head_dim.is_some(),
            max_position_embeddings: required(
                "max_position_embeddings",
                self.max_position_embeddings,
            )?,
            // The default of all three classes.
            rms_norm_eps: self.rms_norm_eps.unwrap_or(1e-6),
            rope_theta,
            rope_scaling,
            rope_style,
            qkv_bias,
            o_bias,
            mlp_bias: self.mlp_bias.unwrap_or(false),
            tie_word_embeddings: self.tie_word_embeddings.unwrap_or(false),
            sliding_window,
            initializer_range: self.initializer_range.unwrap_or(0.02),
            bos_token_id: self.bos_token_id,
            eos_token_ids: match self.eos_token_id {
                None => Vec::new(),
                Some(OneOrMany::One(id)) => vec![id],
                Some(OneOrMany::Many(ids)) => ids,
            },
            extra,
        };
        config.validate(path)?;
        Ok(config)
    }

    /// `rope_theta` and the scaling, from either generation's keys.
    fn rope(&self, path: &Path) -> Result<(f64, RopeScaling, RopeStyle), ModelConfigError> {
        let (params, field, style) = match (&self.rope_parameters, &self.rope_scaling) {
            (Some(p), _) => (Some(p), "rope_parameters", RopeStyle::Transformers5),
            (None, s) => (s.as_ref(), "rope_scaling", RopeStyle::Transformers4),
        };
        let bad = |key: &str, message: String| {
            ModelConfigError::from(FieldError::new(path, &format!("{field}.{key}"), message))
        };
        let number = |key: &str| -> Result<Option<f64>, ModelConfigError> {
            match params.and_then(|p| p.get(key)) {
                None | Some(Value::Null) => Ok(None),
                Some(v) => v.as_f64().map(Some).ok_or_else(|| {
                    bad(
                        key,
                        format!("is {}, expected a number", datasets::json_type_name(v)),
                    )
                }),
            }
        };
        let theta = match style {
            RopeStyle::Transformers5 => number("rope_theta")?,
            RopeStyle::Transformers4 => None,
        }
        .or(self.rope_theta)
        .unwrap_or(10000.0);
        let kind = match params.and_then(|p| p.get("rope_type").or_else(|| p.get("type"))) {
            None | Some(Value::Null) => "default".to_string(),
            Some(Value::String(kind)) => kind.clone(),
            Some(other) => {
                let message = format!("is {}, expected a string", datasets::json_type_name(other));
                return Err(bad("rope_type", message));
            }
        };
        let need = |key: &str| {
            number(key)?
                .ok_or_else(|| bad(key, format!("is missing (rope_type \"{kind}\" needs it)")))
        };
        let scaling = match kind.as_str() {
            "default" => RopeScaling::Default,
            "linear" => RopeScaling::Linear {
                factor: need("factor")?,
            },
            "llama3" => RopeScaling::Llama3 {
                factor: need("factor")?,
                low_freq_factor: need("low_freq_factor")?,
                high_freq_factor: need("high_freq_factor")?,
                original_max_position_embeddings: need("original_max_position_embeddings")?
                    as usize,
            },
            other => {
                return Err(bad(
                    "rope_type",
                    format!(
                        "\"{other}\" is not implemented (implemented: default, linear, llama3)"
                    ),
                ))
            }
        };
        Ok((theta, scaling, style))
    }
}

impl LlamaConfig {
    /// Parses the `config.json` of a `variant` checkpoint.
    pub fn from_json(
        value: Value,
        variant: Variant,
        path: &Path,
    ) -> Result<Self, ModelConfigError> {
        LlamaFile::parse(value, path)?.into_config(variant, path)
    }

    /// Checks the relations between fields (positive sizes, heads dividing, rotary settings).
    pub fn validate(&self, path: &Path) -> Result<(), ModelConfigError> {
        let bad = |field: &str, message: String| {
            ModelConfigError::from(FieldError::new(path, field, message))
        };
        for (field, value) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_key_value_heads),
            ("head_dim", self.head_dim),
            ("max_position_embeddings", self.max_position_embeddings),
        ] {
            if value == 0 {
                return Err(bad(field, "is 0, expected a positive integer".into()));
            }
        }
        if !self.explicit_head_dim && !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err(bad(
                "num_attention_heads",
                format!(
                    "is {}, expected a divisor of hidden_size ({}) (or give head_dim)",
                    self.num_attention_heads, self.hidden_size
                ),
            ));
        }
        if !self
            .num_attention_heads
            .is_multiple_of(self.num_key_value_heads)
        {
            return Err(bad(
                "num_key_value_heads",
                format!(
                    "is {}, expected a divisor of num_attention_heads ({}): each key/value \
                     head serves a group of query heads",
                    self.num_key_value_heads, self.num_attention_heads
                ),
            ));
        }
        if !self.head_dim.is_multiple_of(2) {
            return Err(bad(
                "head_dim",
                format!(
                    "is {}, expected an even number (rotary pairs)",
                    self.head_dim
                ),
            ));
        }
        if !(self.rms_norm_eps > 0.0) {
            return Err(bad(
                "rms_norm_eps",
                format!("is {}, expected a positive number", self.rms_norm_eps),
            ));
        }
        let rope_field = match self.rope_style {
            RopeStyle::Transformers4 => "rope_theta",
            RopeStyle::Transformers5 => "rope_parameters.rope_theta",
        };
        if !(self.rope_theta > 1.0) || !self.rope_theta.is_finite() {
            return Err(bad(
                rope_field,
                format!("is {}, expected a finite number above 1", self.rope_theta),
            ));
        }
        let scaling_field = match self.rope_style {
            RopeStyle::Transformers4 => "rope_scaling",
            RopeStyle::Transformers5 => "rope_parameters",
        };
        match &self.rope_scaling {
            RopeScaling::Default => {}
            RopeScaling::Linear { factor } if !(*factor > 0.0) => {
                return Err(bad(
                    &format!("{scaling_field}.factor"),
                    format!("is {factor}, expected a positive number"),
                ))
            }
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            } => {
                if !(*factor > 0.0)
                    || !(*low_freq_factor > 0.0)
                    || !(high_freq_factor > low_freq_factor)
                {
                    return Err(bad(
                        scaling_field,
                        format!(
                            "llama3 scaling needs factor > 0 and high_freq_factor > \
                             low_freq_factor > 0 (factor {factor}, low_freq_factor \
                             {low_freq_factor}, high_freq_factor {high_freq_factor})"
                        ),
                    ));
                }
                if *original_max_position_embeddings == 0 {
                    return Err(bad(
                        &format!("{scaling_field}.original_max_position_embeddings"),
                        "is 0, expected a positive integer".into(),
                    ));
                }
            }
            RopeScaling::Linear { .. } => {}
        }
        if self.sliding_window == Some(0) {
            return Err(bad(
                "sliding_window",
                "is 0, expected a positive integer".into(),
            ));
        }
        Ok(())
    }

    /// Number of parameters (a tied head counted once).
    pub fn num_params(&self) -> usize {
        self.size_parts().iter().map(|(_, n)| *n as usize).sum()
    }

    /// Parameters by the field that drives them (f64, so absurd sizes cannot overflow): the
    /// embedding (and an untied head) by `vocab_size`, the layers and final norm by
    /// `num_hidden_layers`.
    pub fn size_parts(&self) -> Vec<(&'static str, f64)> {
        let (h, f) = (self.hidden_size as f64, self.intermediate_size as f64);
        let (q, kv) = (
            (self.num_attention_heads * self.head_dim) as f64,
            (self.num_key_value_heads * self.head_dim) as f64,
        );
        let bias = |on: bool, n: f64| if on { n } else { 0.0 };
        let attention =
            h * q + 2.0 * h * kv + q * h + bias(self.qkv_bias, q + 2.0 * kv) + bias(self.o_bias, h);
        let mlp = 3.0 * h * f + bias(self.mlp_bias, 2.0 * f + h);
        let layer = attention + mlp + 2.0 * h;
        let heads = if self.tie_word_embeddings { 1.0 } else { 2.0 };
        vec![
            ("vocab_size", heads * self.vocab_size as f64 * h),
            (
                "num_hidden_layers",
                self.num_hidden_layers as f64 * layer + h,
            ),
        ]
    }

    /// The fields that make the shape (what `--resume` may not change), with their values.
    pub fn shape_fields(&self) -> Vec<(&'static str, String)> {
        vec![
            ("model_type", self.variant.model_type().to_string()),
            ("vocab_size", self.vocab_size.to_string()),
            ("hidden_size", self.hidden_size.to_string()),
            ("intermediate_size", self.intermediate_size.to_string()),
            ("num_hidden_layers", self.num_hidden_layers.to_string()),
            ("num_attention_heads", self.num_attention_heads.to_string()),
            ("num_key_value_heads", self.num_key_value_heads.to_string()),
            ("head_dim", self.head_dim.to_string()),
            ("tie_word_embeddings", self.tie_word_embeddings.to_string()),
            (
                "biases",
                format!("{}/{}/{}", self.qkv_bias, self.o_bias, self.mlp_bias),
            ),
        ]
    }

    /// This preset with a job's shape overrides, in GPT-2's spelling: `n_embd` is
    /// `hidden_size`, `n_layer` `num_hidden_layers`, `n_head` `num_attention_heads` (the
    /// key/value heads keep their share when they still divide it, else become as many),
    /// `n_inner` `intermediate_size`, `n_positions` `max_position_embeddings`.
    pub fn with_overrides(mut self, o: &PresetOverrides) -> Self {
        if let Some(v) = o.vocab_size {
            self.vocab_size = v;
            self.bos_token_id = None;
            self.eos_token_ids.clear();
        }
        if let Some(v) = o.n_positions {
            self.max_position_embeddings = v;
        }
        if let Some(v) = o.n_layer {
            self.num_hidden_layers = v;
        }
        if let Some(v) = o.n_inner {
            self.intermediate_size = v;
        }
        let group = self.num_attention_heads / self.num_key_value_heads.max(1);
        if let Some(v) = o.n_head {
            self.num_attention_heads = v;
            self.num_key_value_heads = if group > 0 && v.is_multiple_of(group) {
                v / group
            } else {
                v
            };
        }
        if o.n_embd.is_some() || o.n_head.is_some() {
            if let Some(v) = o.n_embd {
                self.hidden_size = v;
            }
            self.head_dim = self.hidden_size / self.num_attention_heads.max(1);
            self.explicit_head_dim = false;
        }
        self
    }

    /// What a tensor of a checkpoint file is: a parameter of the same name, the rotary
    /// `inv_freq` buffers older uploads saved (recomputed here), or a stored copy of the tied
    /// head.
    pub fn file_tensor(&self, file_name: &str) -> FileTensor {
        if file_name.ends_with(".rotary_emb.inv_freq") {
            return FileTensor::Buffer;
        }
        if file_name == "lm_head.weight" && self.tie_word_embeddings {
            return FileTensor::TiedHead {
                embedding: "model.embed_tokens.weight".into(),
                shape: vec![self.vocab_size, self.hidden_size],
            };
        }
        FileTensor::Param(file_name.to_string())
    }

    /// The `config.json` we write: `extra` keys, then every typed field in the family's
    /// spelling, the rotary settings in the style the source used.
    pub fn to_json(&self) -> Value {
        let mut map = self.extra.clone();
        let mut set = |key: &str, value: Value| {
            map.insert(key.to_string(), value);
        };
        set("model_type", self.variant.model_type().into());
        set(
            "architectures",
            serde_json::json!([self.variant.architecture()]),
        );
        set("vocab_size", self.vocab_size.into());
        set("hidden_size", self.hidden_size.into());
        set("intermediate_size", self.intermediate_size.into());
        set("num_hidden_layers", self.num_hidden_layers.into());
        set("num_attention_heads", self.num_attention_heads.into());
        set("num_key_value_heads", self.num_key_value_heads.into());
        if self.explicit_head_dim {
            set("head_dim", self.head_dim.into());
        }
        set("hidden_act", "silu".into());
        set(
            "max_position_embeddings",
            self.max_position_embeddings.into(),
        );
        set("rms_norm_eps", self.rms_norm_eps.into());
        set("tie_word_embeddings", self.tie_word_embeddings.into());
        set("initializer_range", self.initializer_range.into());
        match self.variant {
            Variant::Llama => {
                set("attention_bias", self.qkv_bias.into());
                set("mlp_bias", self.mlp_bias.into());
            }
            Variant::Mistral => {
                set(
                    "sliding_window",
                    self.sliding_window.map_or(Value::Null, Value::from),
                );
            }
            Variant::Qwen2 => {}
        }
        set(
            "bos_token_id",
            self.bos_token_id.map_or(Value::Null, Value::from),
        );
        set(
            "eos_token_id",
            match self.eos_token_ids.as_slice() {
                [] => Value::Null,
                [one] => (*one).into(),
                many => many.into(),
            },
        );
        let scaling = match &self.rope_scaling {
            RopeScaling::Default => None,
            RopeScaling::Linear { factor } => Some(serde_json::json!({
                "rope_type": "linear", "factor": factor,
            })),
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            } => Some(serde_json::json!({
                "rope_type": "llama3",
                "factor": factor,
                "low_freq_factor": low_freq_factor,
                "high_freq_factor": high_freq_factor,
                "original_max_position_embeddings": original_max_position_embeddings,
            })),
        };
        match self.rope_style {
            RopeStyle::Transformers4 => {
                set("rope_theta", self.rope_theta.into());
                set("rope_scaling", scaling.unwrap_or(Value::Null));
            }
            RopeStyle::Transformers5 => {
                let mut params = match scaling {
                    Some(Value::Object(m)) => m,
                    _ => {
                        let mut m = Map::new();
                        m.insert("rope_type".into(), "default".into());
                        m
                    }
                };
                params.insert("rope_theta".into(), self.rope_theta.into());
                set("rope_parameters", Value::Object(params));
            }
        }
        Value::Object(map)
    }
}
