//! ggml's tensor types and their dequantization to f32, as llama.cpp's `ggml-quants.c`
//! (`dequantize_row_*`) and gguf-py's `quants.py` (what `transformers` uses) define them. The
//! arithmetic is theirs in f32, in the same order and without fused multiply-adds, so the
//! results equal gguf-py's bit for bit (tested on `tests/fixtures/gguf/quants.gguf`).

use half::f16;
use rayon::prelude::*;

/// The tensor types this importer reads: the float types and the block quantizations real
/// files use most (llama.cpp's `Q4_0`, `Q4_1`, `Q8_0` and the K-quants `Q4_K`, `Q5_K`, `Q6_K`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GgmlType {
    F32,
    F16,
    Bf16,
    Q4_0,
    Q4_1,
    Q8_0,
    Q4K,
    Q5K,
    Q6K,
}

/// Elements in a K-quant super-block (`QK_K`).
const QK_K: usize = 256;
/// Elements in a `Q4_0` / `Q4_1` / `Q8_0` block.
const QK: usize = 32;

impl GgmlType {
    /// Every supported type.
    pub const ALL: [GgmlType; 9] = [
        Self::F32,
        Self::F16,
        Self::Bf16,
        Self::Q4_0,
        Self::Q4_1,
        Self::Q8_0,
        Self::Q4K,
        Self::Q5K,
        Self::Q6K,
    ];

    /// ggml's `ggml_type` number.
    pub fn id(self) -> u32 {
        match self {
            Self::F32 => 0,
            Self::F16 => 1,
            Self::Q4_0 => 2,
            Self::Q4_1 => 3,
            Self::Q8_0 => 8,
            Self::Q4K => 12,
            Self::Q5K => 13,
            Self::Q6K => 14,
            Self::Bf16 => 30,
        }
    }

    pub fn from_id(id: u32) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.id() == id)
    }

    /// ggml's name of the type.
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "F32",
            Self::F16 => "F16",
            Self::Bf16 => "BF16",
            Self::Q4_0 => "Q4_0",
            Self::Q4_1 => "Q4_1",
            Self::Q8_0 => "Q8_0",
            Self::Q4K => "Q4_K",
            Self::Q5K => "Q5_K",
            Self::Q6K => "Q6_K",
        }
    }

    /// The name of a ggml type this importer does not read, for its error.
    pub fn known_name(id: u32) -> Option<&'static str> {
        const OTHERS: [(u32, &str); 12] = [
            (6, "Q5_0"),
            (7, "Q5_1"),
            (9, "Q8_1"),
            (10, "Q2_K"),
            (11, "Q3_K"),
            (15, "Q8_K"),
            (16, "IQ2_XXS"),
            (17, "IQ2_XS"),
            (18, "IQ3_XXS"),
            (19, "IQ1_S"),
            (20, "IQ4_NL"),
            (23, "IQ4_XS"),
        ];
        OTHERS.iter().find(|(i, _)| *i == id).map(|(_, n)| *n)
    }

    /// The supported types' names, for errors.
    pub fn supported_names() -> String {
        Self::ALL.map(Self::name).join(", ")
    }

    /// Elements per block.
    pub fn block_elements(self) -> usize {
        match self {
            Self::F32 | Self::F16 | Self::Bf16 => 1,
            Self::Q4_0 | Self::Q4_1 | Self::Q8_0 => QK,
            Self::Q4K | Self::Q5K | Self::Q6K => QK_K,
        }
    }

    /// Bytes per block (ggml's `type_size`).
    pub fn block_bytes(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::F16 | Self::Bf16 => 2,
            Self::Q4_0 => 2 + QK / 2,
            Self::Q4_1 => 4 + QK / 2,
            Self::Q8_0 => 2 + QK,
            Self::Q4K => 4 + 12 + QK_K / 2,
            Self::Q5K => 4 + 12 + QK_K / 8 + QK_K / 2,
            Self::Q6K => QK_K / 2 + QK_K / 4 + QK_K / 16 + 2,
        }
    }

    /// `bytes` (whole blocks) dequantized to f32.
    pub fn dequantize(self, bytes: &[u8]) -> Vec<f32> {
        let (block, n) = (self.block_bytes(), self.block_elements());
        assert_eq!(bytes.len() % block, 0, "whole blocks");
        let mut out = vec![0f32; bytes.len() / block * n];
        let one: fn(&[u8], &mut [f32]) = match self {
            Self::F32 => |b, y| y[0] = f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            Self::F16 => |b, y| y[0] = half_at(b, 0),
            Self::Bf16 => {
                |b, y| y[0] = f32::from_bits(u32::from(u16::from_le_bytes([b[0], b[1]])) << 16)
            }
            Self::Q4_0 => q4_0,
            Self::Q4_1 => q4_1,
            Self::Q8_0 => q8_0,
            Self::Q4K => q4_k,
            Self::Q5K => q5_k,
            Self::Q6K => q6_k,
        };
        // Blocks in chunks big enough to be worth a thread.
        let per_chunk = (1 << 16) / n.max(1) + 1;
        out.par_chunks_mut(per_chunk * n)
            .zip(bytes.par_chunks(per_chunk * block))
            .for_each(|(y, b)| {
                for (y, b) in y.chunks_exact_mut(n).zip(b.chunks_exact(block)) {
                    one(b, y);
                }
            });
        out
    }
}

/// The little-endian f16 at `b[at..at + 2]`, widened.
fn half_at(b: &[u8], at: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[at], b[at + 1]])).to_f32()
}

/// `Q4_0`: `d` (f16), then 16 bytes of 4-bit values: the low nibbles are elements 0..16, the
/// high ones 16..32; `y = d * (q - 8)`.
fn q4_0(b: &[u8], y: &mut [f32]) {
    let d = half_at(b, 0);
    for (j, &q) in b[2..18].iter().enumerate() {
        y[j] = d * f32::from((q & 0x0F) as i8 - 8);
        y[j + 16] = d * f32::from((q >> 4) as i8 - 8);
    }
}

/// `Q4_1`: `d`, `m` (f16), 16 bytes of nibbles as `Q4_0`; `y = d * q + m`.
fn q4_1(b: &[u8], y: &mut [f32]) {
    let (d, m) = (half_at(b, 0), half_at(b, 2));
    for (j, &q) in b[4..20].iter().enumerate() {
        y[j] = d * f32::from(q & 0x0F) + m;
        y[j + 16] = d * f32::from(q >> 4) + m;
    }
}

/// `Q8_0`: `d` (f16), 32 signed bytes; `y = q * d`.
fn q8_0(b: &[u8], y: &mut [f32]) {
    let d = half_at(b, 0);
    for (y, &q) in y.iter_mut().zip(&b[2..34]) {
        *y = f32::from(q as i8) * d;
    }
}

/// The eight 6-bit scales and mins of a `Q4_K` / `Q5_K` super-block, from its 12 bytes
/// (ggml's `get_scale_min_k4`).
fn scales_mins(s: &[u8]) -> ([u8; 8], [u8; 8]) {
    let (mut sc, mut mn) = ([0u8; 8], [0u8; 8]);
    for j in 0..4 {
        sc[j] = s[j] & 0x3F;
        mn[j] = s[j + 4] & 0x3F;
        sc[j + 4] = (s[j + 8] & 0x0F) | ((s[j] >> 2) & 0x30);
        mn[j + 4] = (s[j + 8] >> 4) | ((s[j + 4] >> 2) & 0x30);
    }
    (sc, mn)
}

/// `Q4_K`: `d`, `dmin` (f16), 12 bytes of scales and mins, 128 bytes of nibbles. Sub-block `j`
/// (32 elements) is the low (even `j`) or high (odd `j`) nibbles of bytes `32 * (j / 2)..`;
/// `y = (d * sc[j]) * q - dmin * m[j]`.
fn q4_k(b: &[u8], y: &mut [f32]) {
    let (d, dmin) = (half_at(b, 0), half_at(b, 2));
    let (sc, mn) = scales_mins(&b[4..16]);
    let qs = &b[16..144];
    for j in 0..8 {
        let (scale, min) = (d * f32::from(sc[j]), dmin * f32::from(mn[j]));
        let (bytes, shift) = (&qs[32 * (j / 2)..32 * (j / 2) + 32], 4 * (j % 2));
        for (l, &q) in bytes.iter().enumerate() {
            y[32 * j + l] = scale * f32::from((q >> shift) & 0x0F) - min;
        }
    }
}

/// `Q5_K`: as `Q4_K` with a fifth bit: 32 bytes `qh` after the scales, bit `j` of `qh[l]` is
/// the high bit of element `l` of sub-block `j`.
fn q5_k(b: &[u8], y: &mut [f32]) {
    let (d, dmin) = (half_at(b, 0), half_at(b, 2));
    let (sc, mn) = scales_mins(&b[4..16]);
    let (qh, qs) = (&b[16..48], &b[48..176]);
    for j in 0..8 {
        let (scale, min) = (d * f32::from(sc[j]), dmin * f32::from(mn[j]));
        let (bytes, shift) = (&qs[32 * (j / 2)..32 * (j / 2) + 32], 4 * (j % 2));
        for (l, &q) in bytes.iter().enumerate() {
            let q = ((q >> shift) & 0x0F) | (((qh[l] >> j) & 1) << 4);
            y[32 * j + l] = scale * f32::from(q) - min;
        }
    }
}

/// `Q6_K`: 128 bytes of low nibbles `ql`, 64 bytes of 2-bit highs `qh`, 16 signed scales, `d`
/// (f16) last. Element `e = 128 h + 32 m + l` takes nibble `m / 2` of `ql[64 h + 32 (m % 2) + l]`
/// and bits `2 m..2 m + 2` of `qh[32 h + l]`; `y = (d * scale[e / 16]) * (q - 32)`.
fn q6_k(b: &[u8], y: &mut [f32]) {
    let (ql, qh, scales) = (&b[..128], &b[128..192], &b[192..208]);
    let d = half_at(b, 208);
    for (e, y) in y.iter_mut().enumerate() {
        let (h, m, l) = (e / 128, (e % 128) / 32, e % 32);
        let low = (ql[64 * h + 32 * (m % 2) + l] >> (4 * (m / 2))) & 0x0F;
        let high = (qh[32 * h + l] >> (2 * m)) & 0x03;
        let q = (low | (high << 4)) as i8 - 32;
        *y = (d * f32::from(scales[e / 16] as i8)) * f32::from(q);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_sizes_are_ggmls() {
        // ggml.c's type_traits: blck_size and type_size.
        let expected = [
            (GgmlType::F32, 1, 4),
            (GgmlType::F16, 1, 2),
            (GgmlType::Bf16, 1, 2),
            (GgmlType::Q4_0, 32, 18),
            (GgmlType::Q4_1, 32, 20),
            (GgmlType::Q8_0, 32, 34),
            (GgmlType::Q4K, 256, 144),
            (GgmlType::Q5K, 256, 176),
            (GgmlType::Q6K, 256, 210),
        ];
        for (ty, n, bytes) in expected {
            assert_eq!(
                (ty.block_elements(), ty.block_bytes()),
                (n, bytes),
                "{ty:?}"
            );
            assert_eq!(GgmlType::from_id(ty.id()), Some(ty));
        }
    }

    #[test]
    fn q4_0_by_hand() {
        // d = 0.5 (f16 0x3800); byte 0x2F: low nibble 15 -> (15 - 8) * 0.5, high 2 -> -3.
        let mut b = vec![0x00, 0x38];
        b.extend([0x2Fu8; 16]);
        let y = GgmlType::Q4_0.dequantize(&b);
        assert_eq!(y[0], 3.5);
        assert_eq!(y[16], -3.0);
    }
}
