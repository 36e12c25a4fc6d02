//! A read-only token sequence: a memory-mapped cache (u16 or u32 little-endian) or, for tests and
//! small data, a vector. Slicing is free; reads copy into the caller's buffer.

use std::ops::Range;
use std::sync::Arc;

use memmap2::Mmap;

/// Tokens `start..start+len` of some storage.
#[derive(Clone)]
pub struct TokenStream {
    storage: Storage,
    start: usize,
    len: usize,
}

#[derive(Clone)]
enum Storage {
    Owned(Arc<[u32]>),
    /// `width`-byte little-endian tokens from byte `offset` of the map.
    Mapped {
        map: Arc<Mmap>,
        offset: usize,
        width: usize,
    },
}

impl std::fmt::Debug for TokenStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match &self.storage {
            Storage::Owned(_) => "owned".to_string(),
            Storage::Mapped { width, .. } => format!("mapped u{}", width * 8),
        };
        write!(
            f,
            "TokenStream({kind}, {}..{})",
            self.start,
            self.start + self.len
        )
    }
}

impl TokenStream {
    /// A stream over tokens held in memory.
    pub fn from_vec(tokens: Vec<u32>) -> Self {
        let len = tokens.len();
        TokenStream {
            storage: Storage::Owned(tokens.into()),
            start: 0,
            len,
        }
    }

    /// `len` tokens of `width` bytes (2 or 4) at byte `offset` of `map`. The caller has
    /// checked that they lie inside the map.
    pub(crate) fn mapped(map: Arc<Mmap>, offset: usize, width: usize, len: usize) -> Self {
        debug_assert!(width == 2 || width == 4);
        debug_assert!(offset + width * len <= map.len());
        TokenStream {
            storage: Storage::Mapped { map, offset, width },
            start: 0,
            len,
        }
    }

    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when there are no tokens.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Token `i` (panics past the end, like slice indexing; callers index within `len`).
    pub fn get(&self, i: usize) -> u32 {
        let mut one = [0u32];
        self.copy_to(i, &mut one);
        one[0]
    }

    /// Copies tokens `start..start + out.len()` into `out`.
    pub fn copy_to(&self, start: usize, out: &mut [u32]) {
        assert!(
            start + out.len() <= self.len,
            "token range past the end of the stream"
        );
        let first = self.start + start;
        match &self.storage {
            Storage::Owned(v) => out.copy_from_slice(&v[first..first + out.len()]),
            Storage::Mapped {
                map,
                offset,
                width: 2,
            } => {
                let bytes = &map[offset + 2 * first..offset + 2 * (first + out.len())];
                for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                    *o = u32::from(u16::from_le_bytes([c[0], c[1]]));
                }
            }
            Storage::Mapped { map, offset, .. } => {
                let bytes = &map[offset + 4 * first..offset + 4 * (first + out.len())];
                for (o, c) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                    *o = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                }
            }
        }
    }

    /// Appends tokens `range` to `out`.
    pub fn extend_into(&self, range: Range<usize>, out: &mut Vec<u32>) {
        let at = out.len();
        out.resize(at + range.len(), 0);
        self.copy_to(range.start, &mut out[at..]);
    }

    /// The sub-stream `range` (no copy).
    pub fn slice(&self, range: Range<usize>) -> TokenStream {
        assert!(
            range.start <= range.end && range.end <= self.len,
            "slice past the end"
        );
        TokenStream {
            storage: self.storage.clone(),
            start: self.start + range.start,
            len: range.len(),
        }
    }

    /// All tokens, copied.
    pub fn to_vec(&self) -> Vec<u32> {
        let mut v = Vec::with_capacity(self.len);
        self.extend_into(0..self.len, &mut v);
        v
    }
}
