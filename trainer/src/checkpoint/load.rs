//! Strict loading of Hugging Face GPT-2 checkpoints into [`Gpt2`].
//!
//! Every model parameter must be found with the shape `config.json` implies, and every tensor
//! of the file must be used (nanoGPT's `from_pretrained` asserts the same). Tolerated, as
//! docs/design.md lists: names with or without the `transformer.` prefix; the attention-mask buffers
//! `h.N.attn.bias` / `h.N.attn.masked_bias` of old uploads; `lm_head.weight` equal to `wte`
//! when the head is tied. Conv1D weights are `[in, out]` in the file and in the model's
//! `Projection`: they are used as they are, never transposed.

use std::collections::BTreeMap;
use std::path::Path;

use burn::tensor::{backend::Backend, TensorData};

use super::error::CheckpointError;
use super::safetensors_file::WeightFiles;
use crate::model::names::{param_shapes, replace_params};
use crate::model::Gpt2Config;
use crate::model::{Gpt2, ModelOptions};

/// The architecture file of a checkpoint directory.
pub const CONFIG_FILE: &str = "config.json";

/// Loads `DIR/config.json` and `DIR/model.safetensors` (or its shards).
pub fn load_checkpoint<B: Backend>(
    dir: &Path,
    options: &ModelOptions,
    device: &B::Device,
) -> Result<Gpt2<B>, CheckpointError> {
    let config = Gpt2Config::from_file(&dir.join(CONFIG_FILE))?;
    let weights = WeightFiles::open_dir(dir)?;
    load_weights(&config, &weights, options, device)
}

/// Builds a model for `config` with the tensors of `weights`.
pub fn load_weights<B: Backend>(
    config: &Gpt2Config,
    weights: &WeightFiles,
    options: &ModelOptions,
    device: &B::Device,
) -> Result<Gpt2<B>, CheckpointError> {
    let model = Gpt2::<B>::new(config, options, device)?;

    // Model name -> name in the file, for every tensor that must become a parameter.
    let mut sources: BTreeMap<String, String> = BTreeMap::new();
    let mut tied_head = None;
    for name in weights.names() {
        if is_attention_buffer(name) {
            continue;
        }
        let model_name = model_name(name);
        if model_name == "lm_head.weight" && config.tie_word_embeddings {
            tied_head = Some(name);
            continue;
        }
        if let Some(first) = sources.insert(model_name.clone(), name.to_string()) {
            return Err(CheckpointError::DuplicateTensor {
                path: weights.path_of(name).to_path_buf(),
                tensor: model_name,
                first,
                second: name.to_string(),
            });
        }
    }

    // Check names and shapes before reading any data.
    let expected: BTreeMap<String, Vec<usize>> = param_shapes(&model).into_iter().collect();
    for (model_name, file_name) in &sources {
        if !expected.contains_key(model_name) {
            return Err(CheckpointError::UnexpectedTensor {
                path: weights.path_of(file_name).to_path_buf(),
                tensor: file_name.clone(),
            });
        }
    }
    for (model_name, shape) in &expected {
        let file_name = sources
            .get(model_name)
            .ok_or_else(|| CheckpointError::MissingTensor {
                path: weights.origin().to_path_buf(),
                tensor: model_name.clone(),
            })?;
        check_shape(weights, file_name, shape)?;
    }
    if let Some(head) = tied_head {
        check_tied_head(weights, head, &sources["transformer.wte.weight"], config)?;
    }

    replace_params(
        model,
        |model_name, shape| {
            let file_name = &sources[model_name];
            let values = weights.read_f32(file_name)?;
            // NaN or inf weights would only show up later as NaN logits or losses.
            if let Some((index, &value)) = values.iter().enumerate().find(|(_, v)| !v.is_finite()) {
                return Err(CheckpointError::NonFinite {
                    path: weights.path_of(file_name).to_path_buf(),
                    tensor: file_name.clone(),
                    index,
                    value,
                });
            }
            Ok(TensorData::new(values, shape.to_vec()))
        },
        device,
    )
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

fn check_shape(
    weights: &WeightFiles,
    file_name: &str,
    expected: &[usize],
) -> Result<(), CheckpointError> {
    let found = &weights
        .entry(file_name)
        .expect("name comes from the file")
        .shape;
    if found != expected {
        return Err(CheckpointError::ShapeMismatch {
            path: weights.path_of(file_name).to_path_buf(),
            tensor: file_name.to_string(),
            expected: expected.to_vec(),
            found: found.clone(),
        });
    }
    Ok(())
}

/// A tied checkpoint may still carry `lm_head.weight`; it must then be `wte` exactly.
fn check_tied_head(
    weights: &WeightFiles,
    head: &str,
    wte: &str,
    config: &Gpt2Config,
) -> Result<(), CheckpointError> {
    check_shape(weights, head, &[config.vocab_size, config.n_embd])?;
    let same = weights
        .read_f32(head)?
        .iter()
        .zip(weights.read_f32(wte)?)
        .all(|(a, b)| a.to_bits() == b.to_bits());
    if !same {
        return Err(CheckpointError::UntiedHead {
            path: weights.path_of(head).to_path_buf(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
