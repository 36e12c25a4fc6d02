//! The architecture of a [`super::Model`]: a checkpoint's Hugging Face `config.json`, read by
//! the family that `model_type` / `architectures` name, or a named preset.
//!
//! Each family reads and writes its own file format (`gpt2::Gpt2Config`); [`ModelConfig`] is
//! the enum over them that the trainer passes around, with the questions every family answers
//! (vocabulary, context length, parameter count, projection names, which fields make its shape).

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::gpt2::Gpt2Config;
use super::llama::{LlamaConfig, Variant};
use crate::error::FieldError;

/// A bad `config.json` or preset: names the file and the field, and says what would fix it.
#[derive(Debug, thiserror::Error)]
pub enum ModelConfigError {
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
    #[error("{path}: missing field `{field}` (a Hugging Face {family} config.json has it)")]
    MissingField {
        path: PathBuf,
        field: String,
        family: &'static str,
    },
    #[error(transparent)]
    Field(#[from] FieldError),
    #[error(
        "{path}: unsupported architecture {found} (implemented: {known})",
        known = ModelConfig::ARCHITECTURES
    )]
    UnsupportedArchitecture { path: PathBuf, found: String },
    #[error("unknown model preset `{0}`; known presets: {known}", known = ModelConfig::presets().join(", "))]
    UnknownPreset(String),
}

impl ModelConfigError {
    /// A config or preset the user gave: always bad input.
    pub fn is_bad_input(&self) -> bool {
        true
    }
}

/// The shape fields a job may change in a preset (`model.n_embd`, ...), in GPT-2's spelling.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PresetOverrides {
    pub vocab_size: Option<usize>,
    pub n_positions: Option<usize>,
    pub n_embd: Option<usize>,
    pub n_layer: Option<usize>,
    pub n_head: Option<usize>,
    pub n_inner: Option<usize>,
}

/// The architecture of a model of any family.
#[derive(Clone, Debug, PartialEq)]
pub enum ModelConfig {
    Gpt2(Gpt2Config),
    Llama(LlamaConfig),
}

impl ModelConfig {
    /// What `config.json` may name, for errors.
    pub const ARCHITECTURES: &'static str =
        "GPT-2 (model_type \"gpt2\", architectures GPT2LMHeadModel / GPT2Model), the Llama \
         family (model_type \"llama\", \"qwen2\", \"mistral\"; LlamaForCausalLM, \
         Qwen2ForCausalLM, MistralForCausalLM)";

    /// Every preset name of every family.
    pub fn presets() -> Vec<&'static str> {
        [Gpt2Config::PRESETS, LlamaConfig::PRESETS].concat()
    }

    /// A preset by its hub-style name (case-insensitive).
    pub fn preset(name: &str) -> Result<Self, ModelConfigError> {
        if let Some(c) = Gpt2Config::preset(name) {
            return Ok(Self::Gpt2(c));
        }
        if let Some(c) = LlamaConfig::preset(name) {
            return Ok(Self::Llama(c));
        }
        Err(ModelConfigError::UnknownPreset(name.to_string()))
    }

    /// Reads a checkpoint's `config.json`; its `model_type` (or `architectures`) picks the family.
    pub fn from_file(path: &Path) -> Result<Self, ModelConfigError> {
        let text =
            datasets::input::read_text_limited(path, datasets::input::CONFIG_LIMIT, "model config")
                .map_err(|source| ModelConfigError::Io {
                    path: path.to_path_buf(),
                    source,
                })?;
        let value: Value =
            serde_json::from_str(&text).map_err(|source| ModelConfigError::Json {
                path: path.to_path_buf(),
                source,
            })?;
        Self::from_json(value, path)
    }

    /// [`ModelConfig::from_file`] of a `config.json` already read (`path` names it in errors).
    pub fn from_json(value: Value, path: &Path) -> Result<Self, ModelConfigError> {
        if !value.is_object() {
            let kind = datasets::json_type_name(&value);
            let message = format!("is {kind}, expected a JSON object");
            return Err(FieldError::new(path, "(top level)", message).into());
        }
        let unsupported = |found: String| ModelConfigError::UnsupportedArchitecture {
            path: path.to_path_buf(),
            found,
        };
        let model_type = match value.get("model_type") {
            None | Some(Value::Null) => None,
            Some(Value::String(t)) => Some(t.as_str()),
            Some(other) => {
                let message = format!("is {}, expected a string", datasets::json_type_name(other));
                return Err(FieldError::new(path, "model_type", message).into());
            }
        };
        let classes: Vec<&str> = match value.get("architectures") {
            Some(Value::Array(list)) => list.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        // The family: `model_type`, else the first `architectures` entry; every entry must
        // name a class of that family.
        let family_of_class = |c: &str| match c {
            "GPT2LMHeadModel" | "GPT2Model" => Some(Family::Gpt2),
            other => Variant::of_architecture(other).map(Family::Llama),
        };
        let family = match model_type {
            Some("gpt2") => Family::Gpt2,
            Some(t) => match Variant::of_model_type(t) {
                Some(variant) => Family::Llama(variant),
                None => return Err(unsupported(format!("model_type \"{t}\""))),
            },
            None if classes.is_empty() && value.get("architectures").is_none() => {
                return Err(ModelConfigError::MissingField {
                    path: path.to_path_buf(),
                    field: "model_type".into(),
                    family: "model",
                })
            }
            None => match classes.first().map(|c| (c, family_of_class(c))) {
                Some((_, Some(family))) => family,
                Some((class, None)) => {
                    return Err(unsupported(format!("architectures entry \"{class}\"")))
                }
                // Not a list of strings: the family's parser names the field.
                None => Family::Gpt2,
            },
        };
        if let Some(class) = classes.iter().find(|c| family_of_class(c) != Some(family)) {
            return Err(unsupported(format!("architectures entry \"{class}\"")));
        }
        let config = match family {
            Family::Gpt2 => Self::Gpt2(Gpt2Config::from_json(value, path)?),
            Family::Llama(variant) => Self::Llama(LlamaConfig::from_json(value, variant, path)?),
        };
        // Before anything is allocated for it: a tampered `config.json` (a billion layers)
        // must not take the machine down.
        config.check_size(path, "")?;
        Ok(config)
    }

    /// The `config.json` a checkpoint of this model gets (what `transformers` reads).
    pub fn to_json(&self) -> Value {
        match self {
            Self::Gpt2(c) => c.to_json(),
            Self::Llama(c) => c.to_json(),
        }
    }

    /// The family's name, as `model_type` spells it.
    pub fn model_type(&self) -> &'static str {
        match self {
            Self::Gpt2(_) => "gpt2",
            Self::Llama(c) => c.variant.model_type(),
        }
    }

    /// The family's name in messages.
    pub fn family_name(&self) -> &'static str {
        match self {
            Self::Gpt2(_) => "GPT-2",
            Self::Llama(c) => match c.variant {
                Variant::Llama => "Llama",
                Variant::Qwen2 => "Qwen2",
                Variant::Mistral => "Mistral",
            },
        }
    }

    /// Rows of the token embedding (and of the logits).
    pub fn vocab_size(&self) -> usize {
        match self {
            Self::Gpt2(c) => c.vocab_size,
            Self::Llama(c) => c.vocab_size,
        }
    }

    /// Transformer blocks.
    pub fn layers(&self) -> usize {
        match self {
            Self::Gpt2(c) => c.n_layer,
            Self::Llama(c) => c.num_hidden_layers,
        }
    }

    /// The hidden states' width.
    pub fn width(&self) -> usize {
        match self {
            Self::Gpt2(c) => c.n_embd,
            Self::Llama(c) => c.hidden_size,
        }
    }

    /// Every projection's Hugging Face module name (as [`ModelConfig::projection_names`]),
    /// input and output width.
    pub fn projection_shapes(&self) -> Vec<(String, usize, usize)> {
        let widths: Vec<(usize, usize)> = match self {
            Self::Gpt2(c) => {
                let (e, f) = (c.n_embd, c.inner_dim());
                vec![(e, 3 * e), (e, e), (e, f), (f, e)]
            }
            Self::Llama(c) => {
                let (h, f) = (c.hidden_size, c.intermediate_size);
                let (q, kv) = (
                    c.num_attention_heads * c.head_dim,
                    c.num_key_value_heads * c.head_dim,
                );
                vec![(h, q), (h, kv), (h, kv), (q, h), (h, f), (h, f), (f, h)]
            }
        };
        let names = self.projection_names();
        let per_layer = widths.len();
        names
            .into_iter()
            .enumerate()
            .map(|(k, name)| {
                let (i, o) = widths[k % per_layer];
                (name, i, o)
            })
            .collect()
    }

    /// The context length: the longest sequence the model takes.
    pub fn max_positions(&self) -> usize {
        match self {
            Self::Gpt2(c) => c.n_positions,
            Self::Llama(c) => c.max_position_embeddings,
        }
    }

    /// The `config.json` field that holds the context length, for messages.
    pub fn max_positions_field(&self) -> &'static str {
        match self {
            Self::Gpt2(_) => "n_positions",
            Self::Llama(_) => "max_position_embeddings",
        }
    }

    /// Number of parameters (a tied head counted once).
    pub fn num_params(&self) -> usize {
        match self {
            Self::Gpt2(c) => c.num_params(),
            Self::Llama(c) => c.num_params(),
        }
    }

    /// The end-of-text tokens the config records (Llama 3 lists several; generation stops at
    /// any).
    pub fn eos_token_ids(&self) -> Vec<u32> {
        match self {
            Self::Gpt2(c) => c.eos_token_id.into_iter().collect(),
            Self::Llama(c) => c.eos_token_ids.clone(),
        }
    }

    /// The Hugging Face names of every projection, in forward order.
    pub fn projection_names(&self) -> Vec<String> {
        match self {
            Self::Gpt2(c) => super::gpt2::projection_names(c.n_layer),
            Self::Llama(c) => super::llama::projection_names(c.num_hidden_layers),
        }
    }

    /// How the family lays out its projection weights (the checkpoint's layout).
    pub fn projection_layout(&self) -> super::projection::Layout {
        match self {
            Self::Gpt2(_) => super::projection::Layout::InOut,
            Self::Llama(_) => super::projection::Layout::OutIn,
        }
    }

    /// PEFT's default `target_modules` of the family (peft.utils.constants,
    /// `TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING`).
    pub fn lora_default_targets(&self) -> &'static [&'static str] {
        match self {
            Self::Gpt2(_) => &["c_attn"],
            Self::Llama(_) => &["q_proj", "v_proj"],
        }
    }

    /// Whether the family's projection weights are `[in, out]` (GPT-2's Conv1D: PEFT's
    /// `fan_in_fan_out`).
    pub fn lora_fan_in_fan_out(&self) -> bool {
        matches!(self, Self::Gpt2(_))
    }

    /// How the projections' names look, for layer filter errors.
    pub fn projection_names_hint(&self) -> String {
        match self {
            Self::Gpt2(_) => super::gpt2::PROJECTION_NAMES_HINT.to_string(),
            Self::Llama(_) => super::llama::PROJECTION_NAMES_HINT.to_string(),
        }
    }

    /// The fields that make the model's shape, with their values: what `--resume` may not change.
    pub fn shape_fields(&self) -> Vec<(&'static str, String)> {
        match self {
            Self::Gpt2(c) => c.shape_fields(),
            Self::Llama(c) => c.shape_fields(),
        }
    }

    /// The parameter count split by the config field that drives each part (for the memory
    /// check's message): `(field, parameters)`.
    pub fn size_parts(&self) -> Vec<(&'static str, f64)> {
        match self {
            Self::Gpt2(c) => c.size_parts(),
            Self::Llama(c) => c.size_parts(),
        }
    }

    /// Refuses a model whose weights alone (f32) exceed this machine's memory, naming the field
    /// (`prefix` + its name: `model.n_layer` in a job config, `n_layer` in a `config.json`)
    /// that makes it so large: allocating it would abort the process, or take the machine
    /// down, instead.
    pub fn check_size(&self, path: &Path, prefix: &str) -> Result<(), FieldError> {
        let parts = self.size_parts();
        let params: f64 = parts.iter().map(|p| p.1).sum();
        let bytes = params * 4.0;
        let limit = physical_memory().unwrap_or(isize::MAX as u64) as f64;
        if bytes <= limit {
            return Ok(());
        }
        let (field, _) = parts
            .iter()
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .expect("a model has parts");
        let gib = |b: f64| b / (1u64 << 30) as f64;
        Err(FieldError::new(
            path,
            &format!("{prefix}{field}"),
            format!(
                "the model would have {params:.3e} parameters, {:.1} GiB as f32 before \
                 gradients and optimizer state, more than this machine's {:.1} GiB of memory",
                gib(bytes),
                gib(limit)
            ),
        ))
    }

    /// Checks the relations between fields (positive sizes, heads divide the width, ...).
    pub fn validate(&self, path: &Path) -> Result<(), ModelConfigError> {
        match self {
            Self::Gpt2(c) => c.validate(path),
            Self::Llama(c) => c.validate(path),
        }
    }

    /// A preset with a job's shape overrides applied.
    pub fn with_overrides(self, o: &PresetOverrides) -> Self {
        match self {
            Self::Gpt2(c) => Self::Gpt2(c.with_overrides(o)),
            Self::Llama(c) => Self::Llama(c.with_overrides(o)),
        }
    }

    /// What a tensor of a checkpoint file is to a model of this config.
    pub fn file_tensor(&self, file_name: &str) -> FileTensor {
        match self {
            Self::Gpt2(c) => c.file_tensor(file_name),
            Self::Llama(c) => c.file_tensor(file_name),
        }
    }
}

/// The family a `config.json` names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Family {
    Gpt2,
    Llama(Variant),
}

/// What a tensor name of a checkpoint file is to the model (the variants a family's uploads
/// have, tolerated by strict loading).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FileTensor {
    /// The parameter of this name in the model's module tree.
    Param(String),
    /// A buffer older uploads carry (GPT-2's attention masks): not a parameter, ignored.
    Buffer,
    /// A stored copy of a tied head: it must equal this embedding, and is not loaded.
    TiedHead {
        embedding: String,
        shape: Vec<usize>,
    },
}

/// Total physical memory (Linux: `MemTotal` of /proc/meminfo), if known.
/// Test-only: the machine's memory in bytes, in place of `MemTotal` (so that the memory checks'
/// tests do not depend on the machine).
pub const PHYSICAL_MEMORY_ENV: &str = "FP8_TRAINER_PHYSICAL_MEMORY_BYTES";

pub(crate) fn physical_memory() -> Option<u64> {
    if let Some(bytes) = std::env::var(PHYSICAL_MEMORY_ENV)
        .ok()
        .and_then(|v| v.parse().ok())
    {
        return Some(bytes);
    }
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}
