//! Strict loading of Hugging Face checkpoints into a [`Model`].
//!
//! Every model parameter must be found with the shape `config.json` implies, and every tensor
//! of the file must be used (nanoGPT's `from_pretrained` asserts the same). What a family's
//! uploads may carry besides (GPT-2: names without the `transformer.` prefix, attention-mask
//! buffers, a stored copy of the tied head) is the family's to say
//! ([`ModelConfig::file_tensor`]). Weights are used in the file's layout (GPT-2's Conv1D
//! weights are `[in, out]` in the file and in the model), never transposed.

use std::collections::BTreeMap;
use std::path::Path;

use burn::tensor::{backend::Backend, TensorData};

use super::error::CheckpointError;
use super::safetensors_file::WeightFiles;
use crate::model::base_storage::BaseStorage;
use crate::model::config::FileTensor;
use crate::model::lora;
use crate::model::names::{param_shapes, replace_params, replace_params_where};
use crate::model::{Model, ModelConfig, ModelOptions};

/// The architecture file of a checkpoint directory.
pub const CONFIG_FILE: &str = "config.json";

/// Loads `DIR/config.json` and `DIR/model.safetensors` (or its shards); or, for a LoRA adapter
/// folder (`adapter_config.json`, [`lora`]), its base checkpoint with the adapter on.
pub fn load_checkpoint<B: Backend>(
    dir: &Path,
    options: &ModelOptions,
    device: &B::Device,
) -> Result<Model<B>, CheckpointError> {
    load_checkpoint_storing(dir, options, device, None)
}

/// [`load_checkpoint`], keeping the projection weights `storage` names as their FP8 casts as
/// they are read (`precision.base_storage: "fp8"`): the f32 base is never whole in memory.
pub fn load_checkpoint_storing<B: Backend>(
    dir: &Path,
    options: &ModelOptions,
    device: &B::Device,
    mut storage: Option<BaseStorage>,
) -> Result<Model<B>, CheckpointError> {
    if lora::is_adapter_dir(dir) {
        let (config, base) = adapter_and_base(dir)?;
        let mut model = load_checkpoint_storing(&base, options, device, storage)?;
        model.add_lora(&config.lora, 0);
        return load_adapter_weights(model, dir, device);
    }
    let config = ModelConfig::from_file(&dir.join(CONFIG_FILE))?;
    let weights = WeightFiles::open_dir(dir)?;
    let mut model = load_weights_with(&config, &weights, options, device, storage.as_mut())?;
    if let Some(storage) = storage {
        storage.attach(&mut model);
    }
    Ok(model)
}

/// An adapter folder's settings and the base checkpoint folder it names (itself a full
/// checkpoint, not another adapter).
pub fn adapter_and_base(
    dir: &Path,
) -> Result<(lora::AdapterConfig, std::path::PathBuf), CheckpointError> {
    let bad = |(path, message)| CheckpointError::BadAdapter { path, message };
    let config = lora::read_adapter_config(dir).map_err(bad)?;
    let base = lora::base_dir(dir, &config).map_err(bad)?;
    Ok((config, base))
}

/// Replaces the model's LoRA factors with those of `DIR/adapter_model.safetensors` (PEFT's
/// names): every factor present with its shape and finite values, no other tensor.
pub fn load_adapter_weights<B: Backend>(
    model: Model<B>,
    dir: &Path,
    device: &B::Device,
) -> Result<Model<B>, CheckpointError> {
    let path = dir.join(lora::ADAPTER_WEIGHTS_FILE);
    let weights = WeightFiles::open_files(std::slice::from_ref(&path), path.clone())?;
    let expected: BTreeMap<String, Vec<usize>> = param_shapes(&model)
        .into_iter()
        .filter(|(name, _)| lora::is_adapter_param(name))
        .collect();
    for name in weights.names() {
        if !lora::our_name(name).is_some_and(|ours| expected.contains_key(&ours)) {
            return Err(CheckpointError::UnexpectedAdapterTensor {
                path: path.clone(),
                tensor: name.to_string(),
            });
        }
    }
    for (ours, shape) in &expected {
        let file_name = lora::peft_name(ours);
        if weights.entry(&file_name).is_none() {
            return Err(CheckpointError::MissingTensor {
                path: path.clone(),
                tensor: file_name,
            });
        }
        check_shape(&weights, &file_name, shape)?;
    }
    replace_params_where(
        model,
        lora::is_adapter_param,
        |name, shape| {
            let file_name = lora::peft_name(name);
            let values = weights.read_f32(&file_name)?;
            if let Some((index, &value)) = values.iter().enumerate().find(|(_, v)| !v.is_finite()) {
                return Err(CheckpointError::NonFinite {
                    path: path.clone(),
                    tensor: file_name,
                    index,
                    value,
                });
            }
            Ok(TensorData::new(values, shape.to_vec()))
        },
        device,
    )
}

/// Builds a model for `config` with the tensors of `weights`.
pub fn load_weights<B: Backend>(
    config: &ModelConfig,
    weights: &WeightFiles,
    options: &ModelOptions,
    device: &B::Device,
) -> Result<Model<B>, CheckpointError> {
    load_weights_with(config, weights, options, device, None)
}

/// [`load_weights`], each value read passed through `storage` ([`BaseStorage::take`]).
fn load_weights_with<B: Backend>(
    config: &ModelConfig,
    weights: &WeightFiles,
    options: &ModelOptions,
    device: &B::Device,
    mut storage: Option<&mut BaseStorage>,
) -> Result<Model<B>, CheckpointError> {
    let model = Model::<B>::new(config, options, device)?;

    // Model name -> name in the file, for every tensor that must become a parameter.
    let mut sources: BTreeMap<String, String> = BTreeMap::new();
    let mut tied_head = None;
    for name in weights.names() {
        let model_name = match config.file_tensor(name) {
            FileTensor::Param(model_name) => model_name,
            FileTensor::Buffer => continue,
            FileTensor::TiedHead { embedding, shape } => {
                tied_head = Some((name, embedding, shape));
                continue;
            }
        };
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
                family: config.family_name(),
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
    if let Some((head, embedding, shape)) = tied_head {
        let stored = sources
            .get(&embedding)
            .ok_or_else(|| CheckpointError::MissingTensor {
                path: weights.origin().to_path_buf(),
                tensor: embedding.clone(),
            })?;
        check_tied_head(weights, head, stored, &embedding, &shape)?;
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
            let data = TensorData::new(values, shape.to_vec());
            Ok(match storage.as_deref_mut() {
                // Finite (checked above), so the cast exists.
                Some(storage) => storage.take(model_name, data).expect("finite values"),
                None => data,
            })
        },
        device,
    )
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

/// A tied checkpoint may still carry its head (GPT-2: `lm_head.weight`); it must then be the
/// embedding (`stored`, the file's name of `embedding`) exactly.
fn check_tied_head(
    weights: &WeightFiles,
    head: &str,
    stored: &str,
    embedding: &str,
    shape: &[usize],
) -> Result<(), CheckpointError> {
    check_shape(weights, head, shape)?;
    let same = weights
        .read_f32(head)?
        .iter()
        .zip(weights.read_f32(stored)?)
        .all(|(a, b)| a.to_bits() == b.to_bits());
    if !same {
        return Err(CheckpointError::UntiedHead {
            path: weights.path_of(head).to_path_buf(),
            head: head.to_string(),
            embedding: embedding.to_string(),
        });
    }
    Ok(())
}
