//! Tokenized caches: a corpus is tokenized once into a binary file that is memory-mapped after.
//!
//! Layout (little-endian):
//! ```text
//! 0   magic "FP8TOKC\x01"
//! 8   u64 byte offset of the header      16  u64 header length     24  u64 reserved (0)
//! 32  tokens, u16 when the vocabulary fits in 16 bits, else u32
//! ..  (8-aligned) example index: per example 4 x u64 = start, prompt_len, completion_len, label
//! ..  loss mask (chat data only): one byte per token, 1 where the token carries the loss
//! ..  header: JSON (`CacheHeader`): tokenizer id, vocabulary, sources' sizes and mtimes, options
//! ```
//! Version 2 added the loss mask (multi-turn conversations); a version-1 cache is rebuilt.
//! The header is written last, so tokens stream straight to disk. A file is written with
//! [`crate::atomic::AtomicFile`] (a temporary of its own, renamed into place), so a reader never
//! sees half a cache and concurrent builds of one cache do not clobber each other. A cache whose
//! header does not match what would be built now (other tokenizer, changed source, other
//! options, other version) or that is damaged is rebuilt, never reused; the reason is logged.

use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::UNIX_EPOCH;

use memmap2::Mmap;
use serde::{Deserialize, Serialize};

use crate::atomic::AtomicFile;
use crate::error::{CacheError, DataError};
use crate::kind::DataKind;
use crate::stream::TokenStream;

const MAGIC: &[u8; 8] = b"FP8TOKC\x01";
/// Bumped whenever the layout or the way a corpus is tokenized changes.
pub const CACHE_VERSION: u32 = 2;
const PREFIX_BYTES: u64 = 32;
const INDEX_ENTRY_BYTES: u64 = 32;
/// Label stored for examples without one (prompt/completion data).
pub(crate) const NO_LABEL: u64 = u64::MAX;

/// Size and modification time of one source file, as seen when the cache was built.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceStamp {
    pub path: String,
    pub bytes: u64,
    pub mtime_ns: u64,
}

impl SourceStamp {
    pub(crate) fn of(path: &Path) -> Result<SourceStamp, DataError> {
        let meta = std::fs::metadata(path).map_err(|e| DataError::io(path, e))?;
        let mtime_ns = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos() as u64);
        Ok(SourceStamp {
            path: path.display().to_string(),
            bytes: meta.len(),
            mtime_ns,
        })
    }
}

/// What a cache must have been built from; compared field by field with a file's header.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheKey {
    pub version: u32,
    pub kind: DataKind,
    pub tokenizer_id: String,
    pub vocab_size: usize,
    pub eot_token: u32,
    pub sources: Vec<SourceStamp>,
    /// Everything else that changes the tokens: formats, JSONL fields, CSV options.
    pub options: String,
}

impl CacheKey {
    fn token_bytes(&self) -> u64 {
        if self.vocab_size <= 1 << 16 {
            2
        } else {
            4
        }
    }

    fn first_difference(&self, other: &CacheKey) -> Option<&'static str> {
        if self.version != other.version {
            Some("cache format version")
        } else if self.tokenizer_id != other.tokenizer_id
            || self.vocab_size != other.vocab_size
            || self.eot_token != other.eot_token
        {
            Some("tokenizer")
        } else if self.sources != other.sources {
            Some("source files (size or modification time)")
        } else if self.kind != other.kind || self.options != other.options {
            Some("data options")
        } else {
            None
        }
    }
}

/// The header stored in a cache file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheHeader {
    #[serde(flatten)]
    pub key: CacheKey,
    pub token_bytes: u64,
    pub n_tokens: u64,
    pub n_examples: u64,
    pub index_offset: u64,
    /// Byte offset of the per-token loss mask (`n_tokens` bytes), for chat data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mask_offset: Option<u64>,
}

/// One example in a cache: tokens `start..start+prompt_len` are the prompt, the next
/// `completion_len` the completion. In a cache with a loss mask (a conversation) the prompt is
/// the tokens before the first that carries the loss, and the mask says which of the rest do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExampleEntry {
    pub start: u64,
    pub prompt_len: u64,
    pub completion_len: u64,
    pub label: Option<u64>,
}

/// An open, validated cache.
#[derive(Clone)]
pub struct TokenCache {
    pub path: PathBuf,
    pub header: CacheHeader,
    map: Arc<Mmap>,
}

impl std::fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "TokenCache({}, {} tokens)",
            self.path.display(),
            self.header.n_tokens
        )
    }
}

impl TokenCache {
    /// Opens `path` if it is a sound cache built for `key`; otherwise says why not.
    pub fn open(path: &Path, key: &CacheKey) -> Result<TokenCache, CacheError> {
        let path_buf = || path.to_path_buf();
        let file = File::open(path).map_err(|source| CacheError::Open {
            path: path_buf(),
            source,
        })?;
        // SAFETY: caches are only ever replaced by rename, never written in place, so the
        // mapped file does not change under us (unless someone edits it by hand).
        let map = unsafe { Mmap::map(&file) }.map_err(|source| CacheError::Map {
            path: path_buf(),
            source,
        })?;
        let header = parse_header(path, &map)?;
        if let Some(what) = key.first_difference(&header.key) {
            return Err(CacheError::Stale {
                path: path_buf(),
                what,
            });
        }
        let tokens_end = PREFIX_BYTES + header.n_tokens * header.token_bytes;
        let index_end = header.index_offset + header.n_examples * INDEX_ENTRY_BYTES;
        let mask_fits = header.mask_offset.is_none_or(|at| {
            at >= index_end && at.saturating_add(header.n_tokens) <= map.len() as u64
        });
        if header.token_bytes != key.token_bytes()
            || header.index_offset < tokens_end
            || index_end > map.len() as u64
            || !mask_fits
        {
            return Err(CacheError::BadSizes { path: path_buf() });
        }
        Ok(TokenCache {
            path: path_buf(),
            header,
            map: Arc::new(map),
        })
    }

    /// All tokens.
    pub fn tokens(&self) -> TokenStream {
        let h = &self.header;
        TokenStream::mapped(
            self.map.clone(),
            PREFIX_BYTES as usize,
            h.token_bytes as usize,
            h.n_tokens as usize,
        )
    }

    /// The loss mask of tokens `range` (1: the token carries the loss), if the cache has one.
    pub fn loss_mask(&self, range: std::ops::Range<usize>) -> Option<&[u8]> {
        let at = self.header.mask_offset? as usize;
        Some(&self.map[at + range.start..at + range.end])
    }

    /// Number of examples (0 for language-model data).
    pub fn num_examples(&self) -> usize {
        self.header.n_examples as usize
    }

    /// Example `i` (< `num_examples()`).
    pub fn example(&self, i: usize) -> ExampleEntry {
        let at = (self.header.index_offset + i as u64 * INDEX_ENTRY_BYTES) as usize;
        let word = |k: usize| {
            let b = &self.map[at + 8 * k..at + 8 * k + 8];
            u64::from_le_bytes(b.try_into().expect("8-byte slice"))
        };
        let label = word(3);
        ExampleEntry {
            start: word(0),
            prompt_len: word(1),
            completion_len: word(2),
            label: (label != NO_LABEL).then_some(label),
        }
    }
}

fn parse_header(path: &Path, map: &[u8]) -> Result<CacheHeader, CacheError> {
    let path_buf = || path.to_path_buf();
    if map.len() < PREFIX_BYTES as usize || &map[..8] != MAGIC {
        return Err(CacheError::BadMagic { path: path_buf() });
    }
    let word = |k: usize| u64::from_le_bytes(map[8 * k..8 * k + 8].try_into().expect("8 bytes"));
    let (offset, len) = (word(1) as usize, word(2) as usize);
    let end = offset
        .checked_add(len)
        .filter(|&e| e <= map.len())
        .ok_or_else(|| CacheError::TruncatedHeader { path: path_buf() })?;
    serde_json::from_slice(&map[offset..end]).map_err(|source| CacheError::BadHeader {
        path: path_buf(),
        source,
    })
}

/// Streams tokens into a new cache file; `finish` makes it visible under its final name.
/// Dropped unfinished (an error while tokenizing), it leaves no file behind.
pub(crate) struct CacheWriter {
    final_path: PathBuf,
    out: AtomicFile,
    key: CacheKey,
    token_bytes: u64,
    n_tokens: u64,
    index: Vec<[u64; 4]>,
    /// The loss mask so far, when examples carry one (chat data); kept in memory, one byte
    /// per token, and written after the index.
    mask: Option<Vec<u8>>,
    scratch: Vec<u8>,
}

impl CacheWriter {
    pub(crate) fn create(final_path: &Path, key: CacheKey) -> Result<Self, DataError> {
        let dir = final_path.parent().unwrap_or(Path::new("."));
        let err = |e| DataError::CacheWrite {
            path: final_path.to_path_buf(),
            source: e,
        };
        std::fs::create_dir_all(dir).map_err(err)?;
        let mut out = AtomicFile::with_capacity(1 << 20, final_path).map_err(err)?;
        out.write_all(MAGIC)
            .and_then(|_| out.write_all(&[0u8; 24]))
            .map_err(err)?;
        let token_bytes = key.token_bytes();
        Ok(CacheWriter {
            final_path: final_path.to_path_buf(),
            out,
            key,
            token_bytes,
            n_tokens: 0,
            index: Vec::new(),
            mask: None,
            scratch: Vec::new(),
        })
    }

    fn err(&self, e: std::io::Error) -> DataError {
        DataError::CacheWrite {
            path: self.final_path.clone(),
            source: e,
        }
    }

    /// Appends tokens to the stream.
    pub(crate) fn push_tokens(&mut self, tokens: &[u32]) -> Result<(), DataError> {
        self.scratch.clear();
        if self.token_bytes == 2 {
            for &t in tokens {
                // The key's vocabulary fits in u16, so every id of that tokenizer does too.
                let t = u16::try_from(t).map_err(|_| {
                    self.err(std::io::Error::other(format!(
                        "token {t} exceeds the vocabulary"
                    )))
                })?;
                self.scratch.extend_from_slice(&t.to_le_bytes());
            }
        } else {
            tokens
                .iter()
                .for_each(|t| self.scratch.extend_from_slice(&t.to_le_bytes()));
        }
        let res = self.out.write_all(&self.scratch);
        res.map_err(|e| self.err(e))?;
        self.n_tokens += tokens.len() as u64;
        Ok(())
    }

    /// Appends one example: its prompt and completion tokens, and its label index if any.
    pub(crate) fn push_example(
        &mut self,
        prompt: &[u32],
        completion: &[u32],
        label: Option<usize>,
    ) -> Result<(), DataError> {
        let start = self.n_tokens;
        self.push_tokens(prompt)?;
        self.push_tokens(completion)?;
        let label = label.map_or(NO_LABEL, |l| l as u64);
        self.index
            .push([start, prompt.len() as u64, completion.len() as u64, label]);
        Ok(())
    }

    /// Appends one example with a per-token loss mask (`mask[k]` is 1 where `tokens[k]`
    /// carries the loss). Its prompt is the tokens before the first that does. A cache holds
    /// masked examples only, or none (checked by the caller: one kind per cache).
    pub(crate) fn push_masked_example(
        &mut self,
        tokens: &[u32],
        mask: &[u8],
    ) -> Result<(), DataError> {
        debug_assert_eq!(tokens.len(), mask.len());
        let start = self.n_tokens;
        self.push_tokens(tokens)?;
        let prompt = mask.iter().take_while(|&&m| m == 0).count() as u64;
        let n = tokens.len() as u64;
        self.index.push([start, prompt, n - prompt, NO_LABEL]);
        let all = self.mask.get_or_insert_with(Vec::new);
        all.resize(start as usize, 0); // tokens pushed without a mask carry no loss
        all.extend_from_slice(mask);
        Ok(())
    }

    pub(crate) fn num_tokens(&self) -> u64 {
        self.n_tokens
    }

    /// Writes index and header, commits the file (sync, rename into place) and opens it.
    pub(crate) fn finish(self) -> Result<TokenCache, DataError> {
        let CacheWriter {
            final_path,
            mut out,
            key,
            token_bytes,
            n_tokens,
            index,
            mask,
            ..
        } = self;
        let err = |e| DataError::CacheWrite {
            path: final_path.clone(),
            source: e,
        };
        let tokens_end = PREFIX_BYTES + n_tokens * token_bytes;
        let index_offset = tokens_end.div_ceil(8) * 8;
        let index_end = index_offset + index.len() as u64 * INDEX_ENTRY_BYTES;
        let mask = mask.map(|mut m| {
            m.resize(n_tokens as usize, 0);
            m
        });
        let header = CacheHeader {
            key: key.clone(),
            token_bytes,
            n_tokens,
            n_examples: index.len() as u64,
            index_offset,
            mask_offset: mask.as_ref().map(|_| index_end),
        };
        let json = serde_json::to_vec(&header).map_err(|e| err(std::io::Error::other(e)))?;
        let header_offset = index_end + mask.as_ref().map_or(0, |m| m.len() as u64);
        // On an error, `out` is dropped uncommitted, which deletes its temporary.
        let written = (|| -> std::io::Result<()> {
            out.write_all(&vec![0u8; (index_offset - tokens_end) as usize])?;
            for entry in &index {
                for w in entry {
                    out.write_all(&w.to_le_bytes())?;
                }
            }
            if let Some(m) = &mask {
                out.write_all(m)?;
            }
            out.write_all(&json)?;
            out.seek(SeekFrom::Start(8))?;
            out.write_all(&header_offset.to_le_bytes())?;
            out.write_all(&(json.len() as u64).to_le_bytes())?;
            out.commit()
        })();
        written.map_err(err)?;
        TokenCache::open(&final_path, &key).map_err(|e| err(std::io::Error::other(e)))
    }
}
