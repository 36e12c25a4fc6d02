//! Writing checkpoints in the Hugging Face layout of the model's family, so `transformers`
//! loads them: tensors by the model's parameter names, which are the family's Hugging Face
//! names (GPT-2: with the `transformer.` prefix, as recent `save_pretrained` writes them; a
//! tied head is not a parameter, so it is not written and `transformers` re-ties it; Conv1D
//! weights stay `[in, out]`).
//! A checkpoint directory is written beside its target under a temporary name and renamed into
//! place, so a crash never leaves a half-written `model.safetensors` under the real name.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use datasets::atomic::{replace_dir, write_atomic};

use burn::tensor::backend::Backend;
use safetensors::{Dtype, View};

use super::error::CheckpointError;
use super::load::CONFIG_FILE;
use super::safetensors_file::WEIGHTS_FILE;
use crate::model::lora;
use crate::model::names::{param_values, param_values_where};
use crate::model::{Model, ModelConfig};

/// An f32 tensor to write: name, shape, values (row-major).
pub struct NamedTensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub values: Vec<f32>,
}

/// Writes `dir` (config.json + model.safetensors) atomically: into a temporary sibling
/// directory first, then renamed. An existing `dir` is replaced as a whole.
pub fn save_checkpoint<B: Backend>(model: &Model<B>, dir: &Path) -> Result<(), CheckpointError> {
    let write_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| CheckpointError::Write { path, source }
    };
    let (staging, retired) = staging_dir(dir).map_err(write_err(dir))?;
    write_checkpoint_files(model, &staging)?;
    replace_dir(&staging, dir, &retired).map_err(write_err(dir))
}

/// An empty staging folder beside `dir` (`.NAME.tmp-PID`, created with `dir`'s parent), and the
/// name `dir` is moved to while the staging folder replaces it (`.NAME.old-PID`): for
/// `datasets::atomic::replace_dir`, so a crash never leaves a half-written folder under `dir`.
pub fn staging_dir(dir: &Path) -> std::io::Result<(PathBuf, PathBuf)> {
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = dir.file_name().ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "checkpoint path has no directory name",
        )
    })?;
    fs::create_dir_all(&parent)?;
    let sibling = |tag: &str| {
        parent.join(format!(
            ".{}.{tag}-{}",
            name.to_string_lossy(),
            std::process::id()
        ))
    };
    let (staging, retired) = (sibling("tmp"), sibling("old"));
    if staging.exists() {
        fs::remove_dir_all(&staging)?;
    }
    fs::create_dir(&staging)?;
    Ok((staging, retired))
}

/// Writes config.json and model.safetensors into an existing directory (for callers that stage
/// more files, e.g. training state, before renaming the directory themselves).
pub fn write_checkpoint_files<B: Backend>(
    model: &Model<B>,
    dir: &Path,
) -> Result<(), CheckpointError> {
    write_checkpoint_tensors(&model.config(), &model_tensors(model), dir)
}

/// Every parameter of `model` on the host, by Hugging Face name, in module order.
pub fn model_tensors<B: Backend>(model: &Model<B>) -> Vec<NamedTensor> {
    named_tensors(param_values(model))
}

/// The LoRA factors of `model` on the host, by PEFT's names (`adapter_model.safetensors`).
pub fn adapter_tensors<B: Backend>(model: &Model<B>) -> Vec<NamedTensor> {
    let mut tensors = named_tensors(param_values_where(model, lora::is_adapter_param));
    for t in &mut tensors {
        t.name = lora::peft_name(&t.name);
    }
    tensors
}

fn named_tensors(values: Vec<(String, burn::tensor::TensorData)>) -> Vec<NamedTensor> {
    values
        .into_iter()
        .map(|(name, data)| NamedTensor {
            name,
            shape: data.shape.to_vec(),
            values: data
                .convert::<f32>()
                .into_vec::<f32>()
                .expect("converted to f32"),
        })
        .collect()
}

/// [`write_checkpoint_files`] with the parameters already on the host.
pub fn write_checkpoint_tensors(
    config: &ModelConfig,
    tensors: &[NamedTensor],
    dir: &Path,
) -> Result<(), CheckpointError> {
    let config_path = dir.join(CONFIG_FILE);
    let text = serde_json::to_string_pretty(&config.to_json()).expect("a JSON value serialises");
    write_atomic(&config_path, text.as_bytes()).map_err(|source| CheckpointError::Write {
        path: config_path,
        source,
    })?;
    let weights_path = dir.join(WEIGHTS_FILE);
    write_safetensors(&weights_path, tensors).map_err(|source| CheckpointError::Write {
        path: weights_path,
        source,
    })
}

/// Writes f32 tensors as a safetensors file with `{"format": "pt"}` metadata (which
/// `transformers` requires), atomically (a temporary file, fsync, rename).
pub fn write_safetensors(path: &Path, tensors: &[NamedTensor]) -> std::io::Result<()> {
    let views: Vec<(String, F32View<'_>)> = tensors
        .iter()
        .map(|t| (t.name.clone(), F32View(t)))
        .collect();
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    let bytes = safetensors::serialize(views, Some(metadata))
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{e:?}")))?;
    write_atomic(path, &bytes)
}

/// Lets the `safetensors` crate serialise our tensors (little-endian f32).
struct F32View<'a>(&'a NamedTensor);

impl View for F32View<'_> {
    fn dtype(&self) -> Dtype {
        Dtype::F32
    }
    fn shape(&self) -> &[usize] {
        &self.0.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        self.0
            .values
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect::<Vec<u8>>()
            .into()
    }
    fn data_len(&self) -> usize {
        self.0.values.len() * 4
    }
}
