//! Memory-mapped `model.safetensors` files, single or sharded, read with the `safetensors` crate.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use safetensors::{Dtype, SafeTensorError, SafeTensors};
use serde_json::Value;

use super::error::CheckpointError;

/// Single-file weights (what `save_pretrained` writes below its shard size, and what we write).
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// Index of sharded weights: `{"weight_map": {tensor name: shard file}}`.
pub const WEIGHTS_INDEX_FILE: &str = "model.safetensors.index.json";

/// Where one tensor's bytes are.
#[derive(Clone, Debug)]
pub struct TensorEntry {
    /// Index into the opened files.
    file: usize,
    /// Element type as stored.
    pub dtype: Dtype,
    /// Shape as stored.
    pub shape: Vec<usize>,
    /// Absolute byte range in the file.
    range: std::ops::Range<usize>,
}

/// The tensors of one checkpoint, by their name in the file(s).
pub struct WeightFiles {
    files: Vec<(PathBuf, Mmap)>,
    tensors: BTreeMap<String, TensorEntry>,
    /// What errors about the whole set name: the single file or the index.
    origin: PathBuf,
}

impl WeightFiles {
    /// Opens the weights of a checkpoint directory (`model.safetensors` or a sharded index).
    pub fn open_dir(dir: &Path) -> Result<Self, CheckpointError> {
        let single = dir.join(WEIGHTS_FILE);
        let index = dir.join(WEIGHTS_INDEX_FILE);
        if single.is_file() {
            return Self::open_files(std::slice::from_ref(&single), single.clone());
        }
        if index.is_file() {
            return Self::open_index(&index);
        }
        for pickle in ["pytorch_model.bin", "pytorch_model.bin.index.json"] {
            if dir.join(pickle).is_file() {
                return Err(CheckpointError::PytorchUnsupported {
                    path: dir.join(pickle),
                    dir: dir.display().to_string(),
                });
            }
        }
        Err(CheckpointError::NoWeights {
            dir: dir.to_path_buf(),
        })
    }

    /// Opens a sharded checkpoint through its `model.safetensors.index.json`.
    pub fn open_index(index: &Path) -> Result<Self, CheckpointError> {
        let bad = |reason: String| CheckpointError::BadIndex {
            path: index.to_path_buf(),
            reason,
        };
        let text = datasets::input::read_text_limited(
            index,
            datasets::input::CONFIG_LIMIT,
            "safetensors index",
        )
        .map_err(|source| CheckpointError::Io {
            path: index.into(),
            source,
        })?;
        let json: Value =
            serde_json::from_str(&text).map_err(|e| bad(format!("not valid JSON: {e}")))?;
        let map = json
            .get("weight_map")
            .and_then(Value::as_object)
            .ok_or_else(|| bad("no `weight_map` object".into()))?;
        let mut placement: Vec<(&String, PathBuf)> = Vec::new();
        let mut shards: Vec<PathBuf> = Vec::new();
        for (tensor, shard) in map {
            let shard = shard
                .as_str()
                .ok_or_else(|| bad(format!("`weight_map.{tensor}` is not a file name")))?;
            let path = index.with_file_name(shard);
            if !shards.contains(&path) {
                shards.push(path.clone());
            }
            placement.push((tensor, path));
        }
        let files = Self::open_files(&shards, index.to_path_buf())?;
        // The index and the shards must agree, or a tensor might be looked for in the wrong place.
        for (tensor, shard) in placement {
            if files
                .tensors
                .get(tensor)
                .map(|e| files.files[e.file].0.as_path())
                != Some(shard.as_path())
            {
                return Err(CheckpointError::MissingTensor {
                    path: shard,
                    tensor: tensor.clone(),
                });
            }
        }
        Ok(files)
    }

    /// Opens and validates safetensors files; `origin` names the set in later errors.
    pub fn open_files(paths: &[PathBuf], origin: PathBuf) -> Result<Self, CheckpointError> {
        let mut files: Vec<(PathBuf, Mmap)> = Vec::new();
        let mut tensors: BTreeMap<String, TensorEntry> = BTreeMap::new();
        for path in paths {
            let file =
                datasets::input::open_regular(path).map_err(|source| CheckpointError::Io {
                    path: path.clone(),
                    source,
                })?;
            // SAFETY: the file is only read; a concurrent writer could change the bytes under us,
            // which Hugging Face's own loaders accept as well. We write checkpoints by rename.
            let mmap = unsafe { Mmap::map(&file) }.map_err(|source| CheckpointError::Io {
                path: path.clone(),
                source,
            })?;
            let (header_len, metadata) =
                SafeTensors::read_metadata(&mmap).map_err(|e| describe(path, &mmap, e))?;
            let data_start = 8 + header_len;
            for (name, info) in metadata.tensors() {
                let entry = TensorEntry {
                    file: files.len(),
                    dtype: info.dtype,
                    shape: info.shape.clone(),
                    range: data_start + info.data_offsets.0..data_start + info.data_offsets.1,
                };
                if let Some(previous) = tensors.insert(name.clone(), entry) {
                    return Err(CheckpointError::DuplicateTensor {
                        path: path.clone(),
                        tensor: name.clone(),
                        first: format!("{name} in {}", files[previous.file].0.display()),
                        second: format!("{name} in {}", path.display()),
                    });
                }
            }
            files.push((path.clone(), mmap));
        }
        Ok(Self {
            files,
            tensors,
            origin,
        })
    }

    /// The file or index errors about the whole checkpoint name.
    pub fn origin(&self) -> &Path {
        &self.origin
    }

    /// Every tensor name, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    /// A tensor's dtype and shape.
    pub fn entry(&self, name: &str) -> Option<&TensorEntry> {
        self.tensors.get(name)
    }

    /// The file holding a tensor.
    pub fn path_of(&self, name: &str) -> &Path {
        self.tensors
            .get(name)
            .map_or(&self.origin, |e| &self.files[e.file].0)
    }

    /// A tensor's values widened to f32 (F32 is copied bit for bit).
    pub fn read_f32(&self, name: &str) -> Result<Vec<f32>, CheckpointError> {
        let entry = self
            .tensors
            .get(name)
            .ok_or_else(|| CheckpointError::MissingTensor {
                path: self.origin.clone(),
                tensor: name.into(),
            })?;
        let map = &self.files[entry.file].1;
        let bytes = &map[entry.range.clone()];
        let values = match entry.dtype {
            Dtype::F32 => f32_from_le(bytes),
            Dtype::F16 => bytes
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            Dtype::BF16 => bytes
                .chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            Dtype::F64 => bytes
                .chunks_exact(8)
                .map(|b| f64::from_le_bytes(b.try_into().expect("chunks of 8")) as f32)
                .collect(),
            other => {
                return Err(CheckpointError::UnsupportedDtype {
                    path: self.path_of(name).to_path_buf(),
                    tensor: name.into(),
                    dtype: format!("{other:?}"),
                })
            }
        };
        release_pages(map, entry.range.clone());
        Ok(values)
    }
}

/// Drops the process's mapping of a tensor's pages once its values are read, so that the
/// checkpoint file does not count in resident memory beside the values read from it (a 0.5 GB
/// file would otherwise stay resident until the last tensor is read). The bytes stay in the
/// page cache, and a second read of the range faults them back in. Best effort: an error only
/// leaves the pages mapped.
fn release_pages(map: &Mmap, range: std::ops::Range<usize>) {
    #[cfg(unix)]
    // SAFETY: the map is a read-only shared mapping of a file (`Mmap::map`), so MADV_DONTNEED
    // drops our page table entries without changing what the range reads: a later access
    // faults the same file bytes back in. The caller's slices into the range have ended.
    unsafe {
        let _ = map.unchecked_advise_range(
            memmap2::UncheckedAdvice::DontNeed,
            range.start,
            range.len(),
        );
    }
    #[cfg(not(unix))]
    let _ = (map, range);
}

/// Little-endian f32 values (a safetensors F32 tensor's bytes).
pub fn f32_from_le(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

/// Turns a `safetensors` parse error into one naming the file and, for a truncated file, the
/// first tensor whose bytes are missing.
fn describe(path: &Path, bytes: &[u8], error: SafeTensorError) -> CheckpointError {
    if matches!(error, SafeTensorError::MetadataIncompleteBuffer) {
        if let Some(truncated) = find_truncated_tensor(path, bytes) {
            return truncated;
        }
    }
    // The crate's offset and shape errors do not say which tensor: find it.
    if let Some(reason) = find_bad_entry(bytes) {
        return CheckpointError::NotSafetensors {
            path: path.to_path_buf(),
            reason,
        };
    }
    use SafeTensorError as E;
    let reason = match error {
        E::HeaderTooSmall => "shorter than the 8-byte header length".to_string(),
        E::HeaderTooLarge | E::InvalidHeaderLength => {
            "the first 8 bytes are not a plausible header length".to_string()
        }
        E::MetadataIncompleteBuffer => {
            "the data section is longer than the header declares".to_string()
        }
        E::InvalidHeader(e) => format!("the header is not UTF-8 text ({e})"),
        E::InvalidHeaderStart => "the header does not start with `{` (not a JSON object)".into(),
        E::InvalidHeaderDeserialization(e) | E::JsonError(e) => {
            format!("the header is not the JSON a safetensors file holds: {e}")
        }
        E::TensorNotFound(name) => format!("no tensor `{name}`"),
        E::TensorInvalidInfo => "a tensor's shape, dtype and data offsets do not agree".to_string(),
        E::InvalidOffset(name) => {
            format!("tensor `{name}`: its data offsets overlap another tensor's or leave a gap")
        }
        E::IoError(e) => format!("cannot read it: {e}"),
        E::InvalidTensorView(dtype, shape, n) => {
            format!("a tensor of dtype {dtype:?} and shape {shape:?} cannot span {n} bytes")
        }
        E::ValidationOverflow => "a tensor's shape or byte size overflows".to_string(),
        E::MisalignedSlice => "a tensor of sub-byte elements does not end on a byte".to_string(),
        #[allow(unreachable_patterns)]
        other => other.to_string(),
    };
    CheckpointError::NotSafetensors {
        path: path.to_path_buf(),
        reason,
    }
}

/// Reads the header and finds the first tensor (in data order) whose dtype, shape and data
/// offsets disagree, described in words; `None` when every entry is consistent (or the header
/// itself does not parse).
fn find_bad_entry(bytes: &[u8]) -> Option<String> {
    let n = u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?);
    let end = 8usize.checked_add(usize::try_from(n).ok()?)?;
    let header: Value = serde_json::from_slice(bytes.get(8..end)?).ok()?;
    let mut entries: Vec<(&String, &Value)> = header
        .as_object()?
        .iter()
        .filter(|(name, _)| name.as_str() != "__metadata__")
        .collect();
    let start_of = |info: &Value| info["data_offsets"][0].as_u64().unwrap_or(0);
    entries.sort_by_key(|(_, info)| start_of(info));
    let mut previous_end = 0u64;
    for (name, info) in entries {
        let dtype = info["dtype"].as_str().unwrap_or("");
        let size: u64 = match dtype {
            "F64" | "I64" | "U64" => 8,
            "F32" | "I32" | "U32" => 4,
            "F16" | "BF16" | "I16" | "U16" => 2,
            "I8" | "U8" | "BOOL" | "F8_E4M3" | "F8_E5M2" | "F8_E8M0" => 1,
            // Sub-byte, complex or unknown types: the crate's own message says enough.
            _ => return None,
        };
        let Some(shape) = info["shape"]
            .as_array()
            .and_then(|s| s.iter().map(Value::as_u64).collect::<Option<Vec<u64>>>())
        else {
            return Some(format!("tensor `{name}`: `shape` is not a list of sizes"));
        };
        let offsets = info["data_offsets"].as_array();
        let (Some(start), Some(stop)) = (
            offsets.and_then(|o| o.first()).and_then(Value::as_u64),
            offsets.and_then(|o| o.get(1)).and_then(Value::as_u64),
        ) else {
            return Some(format!(
                "tensor `{name}`: `data_offsets` is not [start, end]"
            ));
        };
        let needed = shape.iter().try_fold(size, |acc, &d| acc.checked_mul(d));
        let Some(needed) = needed else {
            return Some(format!("tensor `{name}`: shape {shape:?} overflows"));
        };
        if stop < start || stop - start != needed {
            return Some(format!(
                "tensor `{name}`: shape {shape:?} of {dtype} needs {needed} bytes, but its \
                 data_offsets [{start}, {stop}] span {}",
                stop.saturating_sub(start)
            ));
        }
        if start != previous_end {
            return Some(format!(
                "tensor `{name}`: its data starts at byte {start} of the data section, where \
                 the previous tensor ended at {previous_end} (overlap or gap)"
            ));
        }
        previous_end = stop;
    }
    None
}

/// Reads the header (already known to parse) and finds a tensor that ends past the file's end.
fn find_truncated_tensor(path: &Path, bytes: &[u8]) -> Option<CheckpointError> {
    let n = u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?) as usize;
    let header: Value = serde_json::from_slice(bytes.get(8..8 + n)?).ok()?;
    let available = bytes.len() - 8 - n;
    let mut entries: Vec<(String, usize, usize)> = header
        .as_object()?
        .iter()
        .filter(|(name, _)| name.as_str() != "__metadata__")
        .filter_map(|(name, info)| {
            let offsets = info.get("data_offsets")?.as_array()?;
            Some((
                name.clone(),
                offsets.first()?.as_u64()? as usize,
                offsets.get(1)?.as_u64()? as usize,
            ))
        })
        .collect();
    entries.sort_by_key(|e| e.1);
    let (tensor, start, end) = entries.into_iter().find(|e| e.2 > available)?;
    Some(CheckpointError::Truncated {
        path: path.to_path_buf(),
        tensor,
        start,
        end,
        available,
    })
}
