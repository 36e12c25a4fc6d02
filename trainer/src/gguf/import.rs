//! A GGUF file as a Hugging Face folder: `config.json` from the `{arch}.*` metadata (as
//! `transformers`' GGUF loader maps it), every tensor dequantized to f32 under its Hugging Face
//! name with llama.cpp's Q/K row order undone, the tokenizer files, `generation_config.json`.
//! Written into a staging folder, loaded back strictly (weights and tokenizer), then renamed
//! into place: a failed import leaves no folder, an existing one is replaced only with
//! `--overwrite`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use datasets::atomic::{replace_dir, write_atomic};
use serde_json::{json, Value};

use super::file::{GgufFile, TensorInfo};
use super::{tokenizer, GgufError};
use crate::checkpoint::{load_checkpoint, staging_dir, write_checkpoint_tensors, NamedTensor};
use crate::device::CpuBackend;
use crate::error::Error;
use crate::model::{ModelConfig, ModelOptions};

/// The GGUF architectures this importer maps, and their Hugging Face class.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    /// `general.architecture` "llama" (Llama 2/3, SmolLM2, TinyLlama, Mistral 7B as llama.cpp
    /// converts it): Q and K rows in llama.cpp's rotary order.
    Llama,
    /// "qwen2": Q/K/V biases, rows in Hugging Face order.
    Qwen2,
}

impl Arch {
    fn of(file: &GgufFile) -> Result<Self, GgufError> {
        match file.str_opt("general.architecture")? {
            Some("llama") => Ok(Self::Llama),
            Some("qwen2") => Ok(Self::Qwen2),
            Some(other) => Err(GgufError::bad(
                &file.path,
                "metadata key `general.architecture`",
                format!("\"{other}\" is not a family this trainer imports (\"llama\", \"qwen2\")"),
            )),
            None => Err(GgufError::bad(
                &file.path,
                "metadata key `general.architecture`",
                "is missing",
            )),
        }
    }

    fn key(self) -> &'static str {
        match self {
            Self::Llama => "llama",
            Self::Qwen2 => "qwen2",
        }
    }
}

/// What an import did.
#[derive(Debug)]
pub struct ImportSummary {
    pub out: PathBuf,
    pub architecture: &'static str,
    /// `general.name`, when the file has one.
    pub name: Option<String>,
    pub parameters: usize,
    /// Tensors per ggml type.
    pub types: BTreeMap<&'static str, usize>,
    pub seconds: f64,
}

impl ImportSummary {
    /// One line for the terminal.
    pub fn summary(&self) -> String {
        let types: Vec<String> = self.types.iter().map(|(t, n)| format!("{n} {t}")).collect();
        format!(
            "imported {} ({} architecture, {:.1}M parameters; tensors: {}) into {} in {:.1} s",
            self.name.as_deref().unwrap_or("the model"),
            self.architecture,
            self.parameters as f64 / 1e6,
            types.join(", "),
            self.out.display(),
            self.seconds
        )
    }
}

/// Imports `gguf` into the folder `out` (replacing an existing one only when `overwrite`).
pub fn import_gguf(gguf: &Path, out: &Path, overwrite: bool) -> Result<ImportSummary, Error> {
    let started = Instant::now();
    if out.exists() && !overwrite {
        return Err(Error::Argument {
            flag: "--out",
            message: format!(
                "{} exists; give another folder or --overwrite to replace it",
                out.display()
            ),
        });
    }
    if out.exists() && !out.is_dir() {
        return Err(Error::Argument {
            flag: "--out",
            message: format!("{} exists and is not a folder", out.display()),
        });
    }
    let file = GgufFile::open(gguf)?;
    let arch = Arch::of(&file)?;
    let value = config_json(&file, arch)?;
    let config = ModelConfig::from_json(value, gguf).map_err(crate::CheckpointError::from)?;
    let tensors = hf_tensors(&file, arch, &config)?;
    let parameters = tensors.iter().map(|t| t.values.len()).sum();
    let mut types = BTreeMap::new();
    for t in &file.tensors {
        *types.entry(t.ty.name()).or_insert(0) += 1;
    }

    let (staging, retired) = staging_dir(out).map_err(Error::io(out))?;
    let written = (|| -> Result<(), Error> {
        write_checkpoint_tensors(&config, &tensors, &staging)?;
        drop(tensors);
        for f in tokenizer::checkpoint_files(&file, config.max_positions())? {
            let path = staging.join(&f.name);
            write_atomic(&path, &f.contents).map_err(Error::io(&path))?;
        }
        // What the folder is: loaded back as every command will load it.
        load_checkpoint::<CpuBackend>(&staging, &ModelOptions::default(), &Default::default())?;
        datasets::tokenizer_from_checkpoint_dir(&staging).map_err(|source| Error::Tokenizer {
            origin: format!("{} (imported from {})", out.display(), gguf.display()),
            source,
        })?;
        Ok(())
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_dir_all(&staging);
        return Err(e);
    }
    replace_dir(&staging, out, &retired).map_err(Error::io(out))?;
    Ok(ImportSummary {
        out: out.to_path_buf(),
        architecture: arch.key(),
        name: file.str_opt("general.name")?.map(str::to_string),
        parameters,
        types,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// `config.json` from the `{arch}.*` keys, in the transformers-4 spelling both transformers 4
/// and 5 read (top-level `rope_theta`), as `transformers`' GGUF loader maps them.
fn config_json(file: &GgufFile, arch: Arch) -> Result<Value, GgufError> {
    let a = arch.key();
    let key = |k: &str| format!("{a}.{k}");
    let positive = |k: &str| -> Result<u64, GgufError> {
        let v = file.u64(&key(k))?;
        if v == 0 {
            return Err(GgufError::bad(
                &file.path,
                &format!("metadata key `{}`", key(k)),
                "must be positive",
            ));
        }
        Ok(v)
    };
    let hidden = positive("embedding_length")?;
    let heads = positive("attention.head_count")?;
    let kv_heads = match file.u64_opt(&key("attention.head_count_kv")) {
        Ok(v) => v.unwrap_or(heads),
        Err(_) => {
            return Err(GgufError::bad(
                &file.path,
                &format!("metadata key `{}`", key("attention.head_count_kv")),
                "per-layer head counts are not supported (one number is)",
            ))
        }
    };
    let head_dim = match file.u64_opt(&key("attention.key_length"))? {
        Some(d) => d,
        None => file
            .u64_opt(&key("rope.dimension_count"))?
            .unwrap_or(hidden / heads),
    };
    let embeddings = file
        .tensor("token_embd.weight")
        .ok_or_else(|| GgufError::bad(&file.path, "tensor `token_embd.weight`", "is missing"))?;
    let vocab = match file.u64_opt(&key("vocab_size"))? {
        Some(v) => v,
        None => embeddings.dims.get(1).copied().unwrap_or(0),
    };
    let rms_eps = file
        .f64_opt(&key("attention.layer_norm_rms_epsilon"))?
        .ok_or_else(|| {
            GgufError::bad(
                &file.path,
                &format!("metadata key `{}`", key("attention.layer_norm_rms_epsilon")),
                "is missing",
            )
        })?;
    let rope_theta = file.f64_opt(&key("rope.freq_base"))?.unwrap_or(10_000.0);
    let rope_scaling = match file.str_opt(&key("rope.scaling.type"))? {
        None | Some("none") => Value::Null,
        Some("linear") => {
            let factor = file.f64_opt(&key("rope.scaling.factor"))?.ok_or_else(|| {
                GgufError::bad(
                    &file.path,
                    &format!("metadata key `{}`", key("rope.scaling.factor")),
                    "is missing (rope.scaling.type is \"linear\")",
                )
            })?;
            json!({"type": "linear", "factor": factor})
        }
        Some(other) => {
            return Err(GgufError::bad(
                &file.path,
                &format!("metadata key `{}`", key("rope.scaling.type")),
                format!("rotary scaling \"{other}\" is not supported (\"linear\" is)"),
            ))
        }
    };
    if file.tensor("rope_freqs.weight").is_some() {
        return Err(GgufError::bad(
            &file.path,
            "tensor `rope_freqs.weight`",
            "Llama 3.1-style rotary scaling from a GGUF is not supported yet (the file stores \
             the scaled frequencies, not the config that made them)",
        ));
    }
    let id = |k: &str| file.u64_opt(&format!("tokenizer.ggml.{k}"));
    let mut config = json!({
        "architectures": [match arch {
            Arch::Llama => "LlamaForCausalLM",
            Arch::Qwen2 => "Qwen2ForCausalLM",
        }],
        "model_type": a,
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": positive("feed_forward_length")?,
        "num_hidden_layers": positive("block_count")?,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": positive("context_length")?,
        "rms_norm_eps": rms_eps,
        "rope_theta": rope_theta,
        "rope_scaling": rope_scaling,
        "tie_word_embeddings": file.tensor("output.weight").is_none(),
        "torch_dtype": "float32",
    });
    if arch == Arch::Llama {
        config["attention_bias"] = file.tensor("blk.0.attn_q.bias").is_some().into();
        config["mlp_bias"] = false.into();
    }
    if let Some(bos) = id("bos_token_id")? {
        config["bos_token_id"] = bos.into();
    }
    if let Some(eos) = id("eos_token_id")? {
        config["eos_token_id"] = eos.into();
    }
    Ok(config)
}

/// The Hugging Face name of a GGUF tensor, and whether its rows are in llama.cpp's rotary
/// order (the Q or K projection of a "llama" file: the heads' count to undo it with).
fn hf_name(name: &str, layers: u64) -> Option<(String, Rows)> {
    let top = match name {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(top) = top {
        return Some((top.to_string(), Rows::AsStored));
    }
    let rest = name.strip_prefix("blk.")?;
    let (layer, rest) = rest.split_once('.')?;
    let layer: u64 = layer.parse().ok().filter(|&l| l < layers)?;
    let (part, kind) = rest.rsplit_once('.')?;
    if kind != "weight" && kind != "bias" {
        return None;
    }
    let (hf, rows) = match part {
        "attn_norm" => ("input_layernorm", Rows::AsStored),
        "ffn_norm" => ("post_attention_layernorm", Rows::AsStored),
        "attn_q" => ("self_attn.q_proj", Rows::RotaryQ),
        "attn_k" => ("self_attn.k_proj", Rows::RotaryK),
        "attn_v" => ("self_attn.v_proj", Rows::AsStored),
        "attn_output" => ("self_attn.o_proj", Rows::AsStored),
        "ffn_gate" => ("mlp.gate_proj", Rows::AsStored),
        "ffn_up" => ("mlp.up_proj", Rows::AsStored),
        "ffn_down" => ("mlp.down_proj", Rows::AsStored),
        _ => return None,
    };
    Some((format!("model.layers.{layer}.{hf}.{kind}"), rows))
}

/// How a tensor's rows are ordered in the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Rows {
    AsStored,
    /// llama.cpp's `permute` of a Q projection (over the attention heads) ...
    RotaryQ,
    /// ... and of a K projection (over the key/value heads).
    RotaryK,
}

/// Every tensor dequantized, by Hugging Face name, with Q/K rows back in Hugging Face order.
fn hf_tensors(
    file: &GgufFile,
    arch: Arch,
    config: &ModelConfig,
) -> Result<Vec<NamedTensor>, GgufError> {
    let ModelConfig::Llama(c) = config else {
        unreachable!("GGUF architectures map to the Llama family");
    };
    let mut out = Vec::with_capacity(file.tensors.len());
    for t in &file.tensors {
        let what = format!("tensor `{}`", t.name);
        let (name, rows) = hf_name(&t.name, c.num_hidden_layers as u64).ok_or_else(|| {
            GgufError::bad(
                &file.path,
                &what,
                format!(
                    "is not a tensor of a {} model with {} layers (token_embd, output_norm, \
                     output, blk.N.{{attn_norm, attn_q, attn_k, attn_v, attn_output, ffn_norm, \
                     ffn_gate, ffn_up, ffn_down}})",
                    arch.key(),
                    c.num_hidden_layers
                ),
            )
        })?;
        let mut values = t.ty.dequantize(file.data(t));
        let heads = match (arch, rows) {
            (Arch::Llama, Rows::RotaryQ) => Some(c.num_attention_heads),
            (Arch::Llama, Rows::RotaryK) => Some(c.num_key_value_heads),
            _ => None,
        };
        if let Some(heads) = heads {
            values = unpermute_rows(&values, t, heads)
                .map_err(|m| GgufError::bad(&file.path, &what, m))?;
        }
        if let Some(bad) = values.iter().position(|v| !v.is_finite()) {
            return Err(GgufError::bad(
                &file.path,
                &what,
                format!("element {bad} dequantizes to {} (not finite)", values[bad]),
            ));
        }
        out.push(NamedTensor {
            name,
            shape: t.shape(),
            values,
        });
    }
    Ok(out)
}

/// Undoes llama.cpp's `permute(w, n_head)` (convert_hf_to_gguf.py): within each head of `hd`
/// rows, Hugging Face row `t * hd / 2 + i` was stored as row `2 i + t`.
fn unpermute_rows(values: &[f32], t: &TensorInfo, heads: usize) -> Result<Vec<f32>, String> {
    let shape = t.shape();
    let rows = shape[0];
    let cols = values.len() / rows;
    if heads == 0 || !rows.is_multiple_of(2 * heads) {
        return Err(format!(
            "its {rows} rows do not split into {heads} heads of an even size"
        ));
    }
    let hd = rows / heads;
    let half = hd / 2;
    let mut out = vec![0f32; values.len()];
    for h in 0..heads {
        for tt in 0..2 {
            for i in 0..half {
                let (to, from) = (h * hd + tt * half + i, h * hd + 2 * i + tt);
                out[to * cols..(to + 1) * cols]
                    .copy_from_slice(&values[from * cols..(from + 1) * cols]);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::GgmlType;

    #[test]
    fn gguf_names_map_to_hugging_face_names() {
        let cases = [
            ("token_embd.weight", Some("model.embed_tokens.weight")),
            ("output.weight", Some("lm_head.weight")),
            (
                "blk.1.attn_q.weight",
                Some("model.layers.1.self_attn.q_proj.weight"),
            ),
            (
                "blk.0.attn_k.bias",
                Some("model.layers.0.self_attn.k_proj.bias"),
            ),
            (
                "blk.1.ffn_down.weight",
                Some("model.layers.1.mlp.down_proj.weight"),
            ),
            ("blk.2.attn_q.weight", None), // only 2 layers
            ("blk.0.attn_q.scale", None),
            ("rope_freqs.weight", None),
        ];
        for (gguf, hf) in cases {
            assert_eq!(hf_name(gguf, 2).map(|(n, _)| n).as_deref(), hf, "{gguf}");
        }
    }

    #[test]
    fn rows_come_back_in_hugging_face_order() {
        // 2 heads of 4 rows, 1 column: Hugging Face rows 0..8; llama.cpp stores head h's rows
        // as [0, 2, 1, 3] + 4h.
        let stored = [0., 2., 1., 3., 4., 6., 5., 7.];
        let t = TensorInfo {
            name: "blk.0.attn_q.weight".into(),
            dims: vec![1, 8],
            ty: GgmlType::F32,
            start: 0,
            len: 32,
        };
        let back = unpermute_rows(&stored, &t, 2).unwrap();
        assert_eq!(back, [0., 1., 2., 3., 4., 5., 6., 7.]);
    }
}
