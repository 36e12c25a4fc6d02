//! Reading and writing Hugging Face `config.json`, with errors naming the file and the field.

use std::path::Path;

use serde_json::{json, Map, Value};

use super::{Activation, ConfigError, Gpt2Config};

/// Keys we read into typed fields, or replace on save; everything else goes to `extra`.
#[rustfmt::skip]
const KNOWN_KEYS: &[&str] = &[
    "vocab_size", "n_positions", "n_ctx", "n_embd", "n_layer", "n_head", "n_inner",
    "activation_function", "layer_norm_epsilon", "resid_pdrop", "embd_pdrop", "attn_pdrop",
    "initializer_range", "scale_attn_weights", "scale_attn_by_inverse_layer_idx",
    "reorder_and_upcast_attn", "tie_word_embeddings", "bos_token_id", "eos_token_id",
    "model_type", "architectures",
];

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
        Self::from_json(&value, path)
    }

    /// Parses a `config.json` already read; `path` is only used in error messages.
    pub fn from_json(value: &Value, path: &Path) -> Result<Self, ConfigError> {
        let fields = Fields {
            path,
            map: value.as_object().ok_or_else(|| ConfigError::BadField {
                path: path.to_path_buf(),
                field: "(top level)",
                found: kind_of(value).to_string(),
                expected: "a JSON object".to_string(),
            })?,
        };
        fields.check_architecture()?;

        let activation = fields
            .string("activation_function")?
            .unwrap_or_else(|| "gelu_new".into());
        let activation_function = Activation::parse(&activation).ok_or_else(|| {
            fields.bad(
                "activation_function",
                format!("\"{activation}\""),
                "\"gelu_new\", \"gelu_pytorch_tanh\" or \"gelu\"",
            )
        })?;
        // Older configs (the original gpt2 upload) also have n_ctx, always equal to n_positions.
        let n_positions = fields.usize_required("n_positions")?;
        if let Some(n_ctx) = fields.usize("n_ctx")? {
            if n_ctx != n_positions {
                return Err(fields.bad(
                    "n_ctx",
                    n_ctx.to_string(),
                    &format!("equal to n_positions ({n_positions})"),
                ));
            }
        }
        let config = Self {
            vocab_size: fields.usize_required("vocab_size")?,
            n_positions,
            n_embd: fields.usize_required("n_embd")?,
            n_layer: fields.usize_required("n_layer")?,
            n_head: fields.usize_required("n_head")?,
            n_inner: fields.usize("n_inner")?,
            activation_function,
            layer_norm_epsilon: fields.f64("layer_norm_epsilon")?.unwrap_or(1e-5),
            resid_pdrop: fields.f64("resid_pdrop")?.unwrap_or(0.1),
            embd_pdrop: fields.f64("embd_pdrop")?.unwrap_or(0.1),
            attn_pdrop: fields.f64("attn_pdrop")?.unwrap_or(0.1),
            initializer_range: fields.f64("initializer_range")?.unwrap_or(0.02),
            scale_attn_weights: fields.bool("scale_attn_weights")?.unwrap_or(true),
            scale_attn_by_inverse_layer_idx: fields
                .bool("scale_attn_by_inverse_layer_idx")?
                .unwrap_or(false),
            tie_word_embeddings: fields.bool("tie_word_embeddings")?.unwrap_or(true),
            bos_token_id: fields.u32("bos_token_id")?,
            eos_token_id: fields.u32("eos_token_id")?,
            extra: fields
                .map
                .iter()
                .filter(|(k, _)| !KNOWN_KEYS.contains(&k.as_str()))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        };
        // `reorder_and_upcast_attn` only changes the precision of the attention scores of fp16
        // models; in f32 it is the computation we do, so it is accepted either way.
        fields.bool("reorder_and_upcast_attn")?;
        config.validate(path)?;
        Ok(config)
    }

    /// The `config.json` we write: `extra` keys first, then every typed field, in HF's spelling.
    pub fn to_json(&self) -> Value {
        let mut map = self.extra.clone();
        let typed = json!({
            "model_type": "gpt2",
            "architectures": ["GPT2LMHeadModel"],
            "vocab_size": self.vocab_size,
            "n_positions": self.n_positions,
            "n_embd": self.n_embd,
            "n_layer": self.n_layer,
            "n_head": self.n_head,
            "n_inner": self.n_inner,
            "activation_function": self.activation_function.hf_name(),
            "layer_norm_epsilon": self.layer_norm_epsilon,
            "resid_pdrop": self.resid_pdrop,
            "embd_pdrop": self.embd_pdrop,
            "attn_pdrop": self.attn_pdrop,
            "initializer_range": self.initializer_range,
            "scale_attn_weights": self.scale_attn_weights,
            "scale_attn_by_inverse_layer_idx": self.scale_attn_by_inverse_layer_idx,
            "reorder_and_upcast_attn": false,
            "tie_word_embeddings": self.tie_word_embeddings,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
        });
        if let Value::Object(typed) = typed {
            map.extend(typed);
        }
        Value::Object(map)
    }
}

/// Typed access to the fields of one `config.json`, with errors naming the file and the field.
struct Fields<'a> {
    path: &'a Path,
    map: &'a Map<String, Value>,
}

impl Fields<'_> {
    fn bad(&self, field: &'static str, found: String, expected: &str) -> ConfigError {
        ConfigError::BadField {
            path: self.path.to_path_buf(),
            field,
            found,
            expected: expected.to_string(),
        }
    }

    /// `None` when the key is absent or null.
    fn get(&self, field: &'static str) -> Option<&Value> {
        self.map.get(field).filter(|v| !v.is_null())
    }

    fn usize(&self, field: &'static str) -> Result<Option<usize>, ConfigError> {
        self.get(field)
            .map(|v| {
                v.as_u64()
                    .map(|n| n as usize)
                    .ok_or_else(|| self.bad(field, show(v), "a non-negative integer"))
            })
            .transpose()
    }

    fn usize_required(&self, field: &'static str) -> Result<usize, ConfigError> {
        self.usize(field)?.ok_or(ConfigError::MissingField {
            path: self.path.to_path_buf(),
            field,
        })
    }

    fn u32(&self, field: &'static str) -> Result<Option<u32>, ConfigError> {
        self.get(field)
            .map(|v| {
                v.as_u64()
                    .and_then(|n| u32::try_from(n).ok())
                    .ok_or_else(|| self.bad(field, show(v), "a token id"))
            })
            .transpose()
    }

    fn f64(&self, field: &'static str) -> Result<Option<f64>, ConfigError> {
        self.get(field)
            .map(|v| {
                v.as_f64()
                    .ok_or_else(|| self.bad(field, show(v), "a number"))
            })
            .transpose()
    }

    fn bool(&self, field: &'static str) -> Result<Option<bool>, ConfigError> {
        self.get(field)
            .map(|v| {
                v.as_bool()
                    .ok_or_else(|| self.bad(field, show(v), "true or false"))
            })
            .transpose()
    }

    fn string(&self, field: &'static str) -> Result<Option<String>, ConfigError> {
        self.get(field)
            .map(|v| {
                v.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| self.bad(field, show(v), "a string"))
            })
            .transpose()
    }

    /// `model_type` must be "gpt2" and `architectures` (when present) GPT-2 classes; a config
    /// with neither is not recognisably GPT-2.
    fn check_architecture(&self) -> Result<(), ConfigError> {
        let unsupported = |found: String| ConfigError::UnsupportedArchitecture {
            path: self.path.to_path_buf(),
            found,
        };
        let model_type = self.string("model_type")?;
        if let Some(model_type) = &model_type {
            if model_type != "gpt2" {
                return Err(unsupported(format!("model_type \"{model_type}\"")));
            }
        }
        let architectures = match self.get("architectures") {
            None => None,
            Some(Value::Array(items)) => Some(items),
            Some(v) => return Err(self.bad("architectures", show(v), "a list of class names")),
        };
        if let Some(items) = architectures {
            for item in items {
                if !matches!(item.as_str(), Some("GPT2LMHeadModel" | "GPT2Model")) {
                    return Err(unsupported(format!("architectures entry {}", show(item))));
                }
            }
        }
        if model_type.is_none() && architectures.is_none() {
            return Err(ConfigError::MissingField {
                path: self.path.to_path_buf(),
                field: "model_type",
            });
        }
        Ok(())
    }
}

fn show(value: &Value) -> String {
    let text = value.to_string();
    if text.len() > 60 {
        format!("{}...", &text[..57])
    } else {
        text
    }
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(value: Value) -> Result<Gpt2Config, ConfigError> {
        Gpt2Config::from_json(&value, Path::new("config.json"))
    }

    #[test]
    fn round_trips_through_json_with_extra_keys() {
        let mut config = Gpt2Config::tiny();
        config.extra.insert("torch_dtype".into(), json!("float32"));
        assert_eq!(parse(config.to_json()).unwrap(), config);
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
        let mut json = Gpt2Config::tiny().to_json();
        json.as_object_mut().unwrap().remove("n_embd");
        assert!(matches!(
            parse(json).unwrap_err(),
            ConfigError::MissingField {
                field: "n_embd",
                ..
            }
        ));

        let mut json = Gpt2Config::tiny().to_json();
        json["n_head"] = json!("four");
        assert!(matches!(
            parse(json).unwrap_err(),
            ConfigError::BadField {
                field: "n_head",
                ..
            }
        ));

        let mut json = Gpt2Config::tiny().to_json();
        json["n_head"] = json!(5);
        assert!(matches!(
            parse(json).unwrap_err(),
            ConfigError::BadField {
                field: "n_head",
                ..
            }
        ));

        let mut json = Gpt2Config::tiny().to_json();
        json["activation_function"] = json!("relu");
        assert!(matches!(
            parse(json).unwrap_err(),
            ConfigError::BadField {
                field: "activation_function",
                ..
            }
        ));
    }
}
