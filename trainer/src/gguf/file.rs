//! The GGUF container (llama.cpp's `gguf.cpp`, versions 2 and 3, little-endian): a header, typed
//! metadata, tensor descriptions, then the tensors' bytes at aligned offsets. Every count and
//! size the file claims is checked against the bytes that are there before anything is
//! allocated for it, so a truncated or lying file is an error naming the key or tensor, never a
//! huge allocation or a panic.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use super::dequant::GgmlType;
use super::GgufError;

/// "GGUF" as the file's first four bytes.
const MAGIC: &[u8; 4] = b"GGUF";
/// Tensor data alignment when `general.alignment` is absent.
const DEFAULT_ALIGNMENT: u64 = 32;
/// Dimensions a tensor may have (ggml's `GGML_MAX_DIMS`).
const MAX_DIMS: u32 = 4;
/// Arrays of arrays nest at most this deep (llama.cpp's files never nest).
const MAX_NESTING: usize = 2;

/// A metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum MetaValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    Str(String),
    Array(Vec<MetaValue>),
}

impl MetaValue {
    /// The value as an unsigned integer, for any integer type holding a non-negative value.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Self::U8(v) => Some(v.into()),
            Self::U16(v) => Some(v.into()),
            Self::U32(v) => Some(v.into()),
            Self::U64(v) => Some(v),
            Self::I8(v) => u64::try_from(v).ok(),
            Self::I16(v) => u64::try_from(v).ok(),
            Self::I32(v) => u64::try_from(v).ok(),
            Self::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// The value as a float, for the float and integer types.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Self::F32(v) => Some(v.into()),
            Self::F64(v) => Some(v),
            Self::I8(v) => Some(v.into()),
            Self::I16(v) => Some(v.into()),
            Self::I32(v) => Some(v.into()),
            Self::I64(v) => Some(v as f64),
            _ => self.as_u64().map(|v| v as f64),
        }
    }

    /// The GGUF name of the value's type, for errors.
    pub fn type_name(&self) -> &'static str {
        match self {
            Self::U8(_) => "uint8",
            Self::I8(_) => "int8",
            Self::U16(_) => "uint16",
            Self::I16(_) => "int16",
            Self::U32(_) => "uint32",
            Self::I32(_) => "int32",
            Self::U64(_) => "uint64",
            Self::I64(_) => "int64",
            Self::F32(_) => "float32",
            Self::F64(_) => "float64",
            Self::Bool(_) => "bool",
            Self::Str(_) => "string",
            Self::Array(_) => "array",
        }
    }
}

/// One tensor's description.
#[derive(Clone, Debug)]
pub struct TensorInfo {
    pub name: String,
    /// ggml's `ne`: the first dimension is the contiguous one (a `[rows, cols]` matrix is
    /// `[cols, rows]` here).
    pub dims: Vec<u64>,
    pub ty: GgmlType,
    /// Where its bytes are in the file (absolute), and how many.
    pub start: usize,
    pub len: usize,
}

impl TensorInfo {
    /// The number of elements.
    pub fn elements(&self) -> usize {
        self.dims.iter().product::<u64>() as usize
    }

    /// The shape in row-major (PyTorch) order: `dims` reversed.
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }
}

/// A parsed GGUF file, its bytes memory-mapped.
pub struct GgufFile {
    pub path: PathBuf,
    pub version: u32,
    pub metadata: BTreeMap<String, MetaValue>,
    pub tensors: Vec<TensorInfo>,
    bytes: memmap2::Mmap,
}

impl fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("metadata", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

impl GgufFile {
    /// Opens and parses `path`.
    pub fn open(path: &Path) -> Result<Self, GgufError> {
        let io = |source| GgufError::Io {
            path: path.to_path_buf(),
            source,
        };
        // Checked before it is opened: opening a FIFO would wait for a writer.
        let file = datasets::input::open_regular(path).map_err(io)?;
        let meta = file.metadata().map_err(io)?;
        if !meta.is_file() {
            return Err(GgufError::bad(path, "the file", "is not a regular file"));
        }
        // SAFETY: the file is opened read-only; as with every memory-mapped checkpoint, a
        // process truncating it while we read is outside what we defend against.
        let bytes = unsafe { memmap2::Mmap::map(&file) }.map_err(io)?;
        let (version, metadata, tensors) = parse(path, &bytes)?;
        Ok(Self {
            path: path.to_path_buf(),
            version,
            metadata,
            tensors,
            bytes,
        })
    }
}

/// The version, metadata and tensor descriptions of the GGUF file `bytes` (read from `path`).
#[allow(clippy::type_complexity)]
fn parse(
    path: &Path,
    bytes: &[u8],
) -> Result<(u32, BTreeMap<String, MetaValue>, Vec<TensorInfo>), GgufError> {
    let mut r = Reader {
        path,
        bytes,
        pos: 0,
    };
    let magic = r.take(4, "the header (magic)")?;
    if magic != MAGIC {
        return Err(GgufError::bad(
            path,
            "the header",
            format!(
                "not a GGUF file: it begins with {:?}, not \"GGUF\"",
                String::from_utf8_lossy(magic)
            ),
        ));
    }
    let version = r.u32("the header (version)")?;
    if !(2..=3).contains(&version) {
        return Err(GgufError::bad(
            path,
            "the header",
            format!("GGUF version {version} is not supported (2 and 3 are)"),
        ));
    }
    let tensor_count = r.u64("the header (tensor count)")?;
    let kv_count = r.u64("the header (metadata count)")?;
    // Each entry takes at least 8 bytes on disk: a count beyond that is a lie.
    for (count, what) in [(tensor_count, "tensor count"), (kv_count, "metadata count")] {
        if count > (r.remaining() / 8) as u64 {
            return Err(GgufError::bad(
                path,
                "the header",
                format!(
                    "{what} {count} cannot fit in the {} bytes that follow: the file is \
                     truncated or its header is wrong",
                    r.remaining()
                ),
            ));
        }
    }
    let mut metadata = BTreeMap::new();
    for i in 0..kv_count {
        let key = r.string(&format!("metadata entry {i} (its key)"))?;
        let ty = r.u32(&format!("metadata key `{key}` (its type)"))?;
        let value = r.value(&key, ty, 0)?;
        if metadata.insert(key.clone(), value).is_some() {
            return Err(GgufError::bad(
                path,
                &format!("metadata key `{key}`"),
                "appears twice",
            ));
        }
    }
    let alignment = match metadata.get("general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some(MetaValue::U32(a)) if a.is_power_of_two() => u64::from(*a),
        Some(v) => {
            return Err(GgufError::bad(
                path,
                "metadata key `general.alignment`",
                format!("must be a uint32 power of two, not {v:?}"),
            ))
        }
    };
    let mut raw = Vec::new();
    for i in 0..tensor_count {
        let name = r.string(&format!("tensor {i} (its name)"))?;
        let what = format!("tensor `{name}`");
        let n_dims = r.u32(&what)?;
        if n_dims == 0 || n_dims > MAX_DIMS {
            return Err(GgufError::bad(
                path,
                &what,
                format!("has {n_dims} dimensions (1 to {MAX_DIMS} are allowed)"),
            ));
        }
        let dims = (0..n_dims)
            .map(|_| r.u64(&what))
            .collect::<Result<Vec<_>, _>>()?;
        let type_id = r.u32(&what)?;
        let offset = r.u64(&what)?;
        raw.push((name, dims, type_id, offset));
    }
    let data_start = (r.pos as u64).div_ceil(alignment) * alignment;
    let mut tensors = Vec::with_capacity(raw.len());
    let mut names = std::collections::HashSet::new();
    for (name, dims, type_id, offset) in raw {
        let what = format!("tensor `{name}`");
        if !names.insert(name.clone()) {
            return Err(GgufError::bad(path, &what, "appears twice"));
        }
        let ty = GgmlType::from_id(type_id).ok_or_else(|| {
            GgufError::bad(
                path,
                &what,
                format!(
                    "has ggml type {type_id}{}, which this importer does not read \
                         (it reads {})",
                    GgmlType::known_name(type_id)
                        .map(|n| format!(" ({n})"))
                        .unwrap_or_default(),
                    GgmlType::supported_names()
                ),
            )
        })?;
        let elements = dims
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .filter(|&n| n > 0 && n <= bytes.len() as u64 * ty.block_elements() as u64)
            .ok_or_else(|| {
                GgufError::bad(
                    path,
                    &what,
                    format!("shape {dims:?} is empty or larger than the file could hold"),
                )
            })?;
        if dims[0] % ty.block_elements() as u64 != 0 {
            return Err(GgufError::bad(
                path,
                &what,
                format!(
                    "its rows of {} elements do not divide into {} blocks of {}",
                    dims[0],
                    ty.name(),
                    ty.block_elements()
                ),
            ));
        }
        let len = elements / ty.block_elements() as u64 * ty.block_bytes() as u64;
        if offset % alignment != 0 {
            return Err(GgufError::bad(
                path,
                &what,
                format!("its data offset {offset} is not a multiple of the alignment {alignment}"),
            ));
        }
        let start = data_start.checked_add(offset);
        let end = start.and_then(|s| s.checked_add(len));
        let (Some(start), Some(end)) = (start, end) else {
            return Err(GgufError::bad(path, &what, "its data offset overflows"));
        };
        if end > bytes.len() as u64 {
            return Err(GgufError::bad(
                path,
                &what,
                format!(
                    "its {len} bytes at offset {offset} (bytes {start}..{end}) lie past the \
                         end of the file ({} bytes): the file is truncated or the offset is wrong",
                    bytes.len()
                ),
            ));
        }
        tensors.push(TensorInfo {
            name,
            dims,
            ty,
            start: start as usize,
            len: len as usize,
        });
    }
    let mut by_start: Vec<&TensorInfo> = tensors.iter().collect();
    by_start.sort_by_key(|t| t.start);
    for pair in by_start.windows(2) {
        if pair[0].start + pair[0].len > pair[1].start {
            return Err(GgufError::bad(
                path,
                &format!("tensor `{}`", pair[1].name),
                format!("its data overlaps that of tensor `{}`", pair[0].name),
            ));
        }
    }
    Ok((version, metadata, tensors))
}

impl GgufFile {
    /// The bytes of `tensor`.
    pub fn data(&self, tensor: &TensorInfo) -> &[u8] {
        &self.bytes[tensor.start..tensor.start + tensor.len]
    }

    /// The tensor named `name`.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// `key`'s value, which must exist.
    pub fn get(&self, key: &str) -> Result<&MetaValue, GgufError> {
        self.metadata.get(key).ok_or_else(|| {
            GgufError::bad(&self.path, &format!("metadata key `{key}`"), "is missing")
        })
    }

    /// `key` as an unsigned integer (absent: `None`).
    pub fn u64_opt(&self, key: &str) -> Result<Option<u64>, GgufError> {
        self.metadata
            .get(key)
            .map(|v| {
                v.as_u64()
                    .ok_or_else(|| self.wrong_type(key, "an unsigned integer", v))
            })
            .transpose()
    }

    /// `key` as an unsigned integer, which must exist.
    pub fn u64(&self, key: &str) -> Result<u64, GgufError> {
        let v = self.get(key)?;
        v.as_u64()
            .ok_or_else(|| self.wrong_type(key, "an unsigned integer", v))
    }

    /// `key` as a float (absent: `None`).
    pub fn f64_opt(&self, key: &str) -> Result<Option<f64>, GgufError> {
        self.metadata
            .get(key)
            .map(|v| {
                v.as_f64()
                    .ok_or_else(|| self.wrong_type(key, "a number", v))
            })
            .transpose()
    }

    /// `key` as a string (absent: `None`).
    pub fn str_opt(&self, key: &str) -> Result<Option<&str>, GgufError> {
        match self.metadata.get(key) {
            None => Ok(None),
            Some(MetaValue::Str(s)) => Ok(Some(s)),
            Some(v) => Err(self.wrong_type(key, "a string", v)),
        }
    }

    /// `key` as a bool (absent: `None`).
    pub fn bool_opt(&self, key: &str) -> Result<Option<bool>, GgufError> {
        match self.metadata.get(key) {
            None => Ok(None),
            Some(MetaValue::Bool(b)) => Ok(Some(*b)),
            Some(v) => Err(self.wrong_type(key, "a bool", v)),
        }
    }

    /// `key` as an array of strings (absent: `None`).
    pub fn strings_opt(&self, key: &str) -> Result<Option<Vec<&str>>, GgufError> {
        let Some(v) = self.metadata.get(key) else {
            return Ok(None);
        };
        let MetaValue::Array(items) = v else {
            return Err(self.wrong_type(key, "an array of strings", v));
        };
        items
            .iter()
            .map(|item| match item {
                MetaValue::Str(s) => Ok(s.as_str()),
                other => Err(self.wrong_type(key, "an array of strings", other)),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }

    /// `key` as an array of integers (absent: `None`).
    pub fn ints_opt(&self, key: &str) -> Result<Option<Vec<i64>>, GgufError> {
        let Some(v) = self.metadata.get(key) else {
            return Ok(None);
        };
        let MetaValue::Array(items) = v else {
            return Err(self.wrong_type(key, "an array of integers", v));
        };
        items
            .iter()
            .map(|item| match *item {
                MetaValue::I32(x) => Ok(i64::from(x)),
                MetaValue::I64(x) => Ok(x),
                MetaValue::I8(x) => Ok(i64::from(x)),
                MetaValue::I16(x) => Ok(i64::from(x)),
                ref other => other
                    .as_u64()
                    .and_then(|x| i64::try_from(x).ok())
                    .ok_or_else(|| self.wrong_type(key, "an array of integers", other)),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }

    fn wrong_type(&self, key: &str, wanted: &str, found: &MetaValue) -> GgufError {
        GgufError::bad(
            &self.path,
            &format!("metadata key `{key}`"),
            format!("must be {wanted}, not a {}", found.type_name()),
        )
    }
}

/// A cursor over the file's bytes that names what it was reading when they run out.
struct Reader<'a> {
    path: &'a Path,
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], GgufError> {
        if n > self.remaining() {
            return Err(GgufError::bad(
                self.path,
                what,
                format!(
                    "the file ends at byte {} while {n} more bytes were to be read at byte {}: \
                     it is truncated",
                    self.bytes.len(),
                    self.pos
                ),
            ));
        }
        let out = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], GgufError> {
        Ok(self.take(N, what)?.try_into().expect("N bytes"))
    }

    fn u32(&mut self, what: &str) -> Result<u32, GgufError> {
        self.array(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: &str) -> Result<u64, GgufError> {
        self.array(what).map(u64::from_le_bytes)
    }

    /// A length-prefixed UTF-8 string.
    fn string(&mut self, what: &str) -> Result<String, GgufError> {
        let len = self.u64(what)?;
        let len = usize::try_from(len)
            .ok()
            .filter(|&l| l <= self.remaining())
            .ok_or_else(|| {
                GgufError::bad(
                    self.path,
                    what,
                    format!(
                        "a string of {len} bytes is claimed at byte {} but only {} remain: the \
                         file is truncated or the length is wrong",
                        self.pos,
                        self.remaining()
                    ),
                )
            })?;
        let bytes = self.take(len, what)?;
        String::from_utf8(bytes.to_vec()).map_err(|e| {
            GgufError::bad(
                self.path,
                what,
                format!(
                    "a string is not UTF-8 (at its byte {})",
                    e.utf8_error().valid_up_to()
                ),
            )
        })
    }

    /// A value of GGUF type `ty` (gguf.h's `gguf_type`).
    fn value(&mut self, key: &str, ty: u32, depth: usize) -> Result<MetaValue, GgufError> {
        let what = format!("metadata key `{key}`");
        Ok(match ty {
            0 => MetaValue::U8(self.array::<1>(&what)?[0]),
            1 => MetaValue::I8(self.array::<1>(&what)?[0] as i8),
            2 => MetaValue::U16(u16::from_le_bytes(self.array(&what)?)),
            3 => MetaValue::I16(i16::from_le_bytes(self.array(&what)?)),
            4 => MetaValue::U32(u32::from_le_bytes(self.array(&what)?)),
            5 => MetaValue::I32(i32::from_le_bytes(self.array(&what)?)),
            6 => MetaValue::F32(f32::from_le_bytes(self.array(&what)?)),
            7 => match self.array::<1>(&what)?[0] {
                0 => MetaValue::Bool(false),
                1 => MetaValue::Bool(true),
                b => {
                    return Err(GgufError::bad(
                        self.path,
                        &what,
                        format!("a bool must be 0 or 1, not {b}"),
                    ))
                }
            },
            8 => MetaValue::Str(self.string(&what)?),
            9 => {
                if depth >= MAX_NESTING {
                    return Err(GgufError::bad(
                        self.path,
                        &what,
                        format!("arrays nest deeper than {MAX_NESTING}"),
                    ));
                }
                let item_ty = self.u32(&what)?;
                let count = self.u64(&what)?;
                // Every item takes at least one byte.
                if count > self.remaining() as u64 {
                    return Err(GgufError::bad(
                        self.path,
                        &what,
                        format!(
                            "an array of {count} items is claimed but only {} bytes remain: the file \
                             is truncated or the length is wrong",
                            self.remaining()
                        ),
                    ));
                }
                let mut items = Vec::with_capacity(count as usize);
                for _ in 0..count {
                    items.push(self.value(key, item_ty, depth + 1)?);
                }
                MetaValue::Array(items)
            }
            10 => MetaValue::U64(u64::from_le_bytes(self.array(&what)?)),
            11 => MetaValue::I64(i64::from_le_bytes(self.array(&what)?)),
            12 => MetaValue::F64(f64::from_le_bytes(self.array(&what)?)),
            other => {
                return Err(GgufError::bad(
                    self.path,
                    &what,
                    format!("has value type {other}, which GGUF does not define (0 to 12)"),
                ))
            }
        })
    }
}
