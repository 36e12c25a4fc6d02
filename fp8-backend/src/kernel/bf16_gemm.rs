//! The FP8 linear layer's GEMMs on the CPU in bfloat16: `C = A B`, A and B in bf16, C in f32,
//! on AVX512_BF16's `vdpbf16ps` (docs/design.md, "The CPU FP8 GEMM").
//!
//! Why bf16 is exact here: every E4M3 and E5M2 value of either family, subnormals included, and
//! every such value times a power of two in f32's normal range, has at most 4 significant bits
//! and an exponent f32 (hence bf16) can hold. So a fake-quantized FP8 operand is the same number
//! in bf16, and a product of two of them (at most 8 significant bits) is exact in f32. Only the
//! order of the f32 additions differs from the f32 GEMM's.
//!
//! The engine is ours (a BLIS-style blocked GEMM: packed panels, a 12x32 register tile of
//! `vdpbf16ps`, rayon threads), not a library's: neither the `gemm` crate (no bf16 dot products;
//! its f16 path converts to f32) nor `matrixmultiply` has one, oneDNN would be a system
//! dependency of every build and of the README's commands, and the kernel is about 300 lines.
//!
//! `vdpbf16ps` computes, per f32 lane, `acc + a[2j] b[2j] + a[2j+1] b[2j+1]` over bf16 pairs
//! along K; the packed panels hold K in pairs: A as `(A[i, 2p], A[i, 2p+1])` per row, B as
//! `(B[2p, j], B[2p+1, j])` per column, each pair one u32 (low half first). An odd K is padded
//! with a zero, edges of M and N with zero rows and columns.

use std::sync::OnceLock;

use rayon::prelude::*;

/// Rows of the register tile.
const MR: usize = 12;
/// Columns of the register tile: two vectors of 16 f32.
const NR: usize = 32;
/// K per packed block (a multiple of 2): a B micro-panel is KC * NR * 2 bytes = 16 KiB, half
/// of Zen 4's L1 data cache.
const KC: usize = 256;
/// The most rows of A one task packs: 192 * KC * 2 bytes = 96 KiB, within L2 (1 MiB).
const MC_MAX: usize = 192;
/// The most columns of B packed at once: NC * KC * 2 bytes = 2 MiB.
const NC: usize = 4096;

/// The environment variable that chooses the CPU GEMM of FP8 operands: `bf16` (the default
/// where the CPU has AVX512_BF16) or `f32` (today's emulation: FP8 values multiplied as f32).
pub const CPU_GEMM_ENV: &str = "FP8_CPU_GEMM";

/// How FP8 operands are multiplied on the CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CpuGemm {
    /// As bf16 with f32 accumulation (`vdpbf16ps`).
    Bf16,
    /// As f32 (the exact fallback on CPUs without AVX512_BF16).
    F32,
}

impl CpuGemm {
    /// What `FP8_CPU_GEMM` asks for (unset or empty: `bf16` where the CPU has it), or why the
    /// value is not understood.
    pub fn from_env() -> Result<Self, String> {
        let value = std::env::var(CPU_GEMM_ENV).unwrap_or_default();
        match value.as_str() {
            "" | "auto" | "bf16" if supported() => Ok(Self::Bf16),
            "" | "auto" | "f32" => Ok(Self::F32),
            // Asked for by name on a CPU without the instruction: the exact fallback, said once.
            "bf16" => {
                log::warn!(
                    "{CPU_GEMM_ENV}=bf16: this CPU has no AVX512_BF16; FP8 GEMMs run in f32"
                );
                Ok(Self::F32)
            }
            other => Err(format!(
                "{other:?} is not one of \"bf16\", \"f32\", \"auto\" (unset: \"auto\")"
            )),
        }
    }

    /// The process's choice, read once (an unknown value falls back to the default, with a
    /// warning; the trainer's command line rejects it before anything runs).
    pub fn selected() -> Self {
        static SELECTED: OnceLock<CpuGemm> = OnceLock::new();
        *SELECTED.get_or_init(|| {
            Self::from_env().unwrap_or_else(|e| {
                log::warn!("{CPU_GEMM_ENV}: {e}; using the default");
                if supported() {
                    Self::Bf16
                } else {
                    Self::F32
                }
            })
        })
    }
}

/// Whether this CPU has the instructions of the bf16 GEMM (AVX-512 F and BW, AVX512_BF16).
pub fn supported() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// A read-only matrix of bf16 bit patterns (`T = u16`; FP8 codes for [`CodesRef`]):
/// `rows x cols`, element `(r, c)` at `data[offset + r * rs + c * cs]` (strides in elements,
/// possibly negative).
#[derive(Clone, Copy, Debug)]
pub struct MatRef<'a, T = u16> {
    data: &'a [T],
    offset: usize,
    rows: usize,
    cols: usize,
    rs: isize,
    cs: isize,
}

impl<'a, T: Copy> MatRef<'a, T> {
    /// A view of `data`; panics unless every element it names lies within `data`.
    pub fn new(
        data: &'a [T],
        offset: usize,
        rows: usize,
        cols: usize,
        rs: isize,
        cs: isize,
    ) -> Self {
        if rows > 0 && cols > 0 {
            let (mut lo, mut hi) = (offset as isize, offset as isize);
            for (n, s) in [(rows, rs), (cols, cs)] {
                let reach = (n as isize - 1) * s;
                if reach < 0 {
                    lo += reach;
                } else {
                    hi += reach;
                }
            }
            assert!(
                lo >= 0 && (hi as usize) < data.len(),
                "bf16 GEMM: a {rows}x{cols} view (offset {offset}, strides {rs}, {cs}) reaches \
                 outside its {} elements",
                data.len()
            );
        }
        Self {
            data,
            offset,
            rows,
            cols,
            rs,
            cs,
        }
    }

    /// A row-major `rows x cols` matrix.
    pub fn row_major(data: &'a [T], rows: usize, cols: usize) -> Self {
        Self::new(data, 0, rows, cols, cols as isize, 1)
    }

    /// The transposed view (no copy).
    pub fn t(self) -> Self {
        Self {
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
            ..self
        }
    }

    /// Row `r`, columns `c0..c0 + len`, as a slice (the view's columns are contiguous).
    #[inline(always)]
    fn row(&self, r: usize, c0: usize, len: usize) -> &'a [T] {
        debug_assert_eq!(self.cs, 1);
        let i = (self.offset as isize + r as isize * self.rs + c0 as isize) as usize;
        &self.data[i..i + len]
    }

    /// Column `c`, rows `r0..r0 + len`, as a slice (the view's rows are contiguous).
    #[inline(always)]
    fn col(&self, c: usize, r0: usize, len: usize) -> &'a [T] {
        debug_assert_eq!(self.rs, 1);
        let i = (self.offset as isize + c as isize * self.cs + r0 as isize) as usize;
        &self.data[i..i + len]
    }

    #[inline(always)]
    fn at(&self, r: usize, c: usize) -> T {
        // In range: `new` checked the corners, and callers stay within rows x cols.
        let i = self.offset as isize + r as isize * self.rs + c as isize * self.cs;
        self.data[i as usize]
    }
}

/// A read-only matrix of FP8 codes (bytes) with the bf16 bit pattern of each code's value
/// (its scale included): an FP8-stored weight as the B operand of [`gemm_codes`], decoded
/// while it is packed.
#[derive(Clone, Copy, Debug)]
pub struct CodesRef<'a> {
    codes: MatRef<'a, u8>,
    lut: &'a [u16; 256],
}

impl<'a> CodesRef<'a> {
    /// The view `codes` read through `lut`.
    pub fn new(codes: MatRef<'a, u8>, lut: &'a [u16; 256]) -> Self {
        Self { codes, lut }
    }
}

/// What the GEMM driver needs of its B operand: its shape and its packing.
trait PackB: Sync {
    fn rows(&self) -> usize;
    fn cols(&self) -> usize;
    /// Packs columns `j0..j1` (at most NR), K `pc..pc+kc`: pair `p` of column `j` at
    /// `p * NR + j`, zeros beyond the edges.
    fn pack(&self, pc: usize, kc: usize, j0: usize, j1: usize, dst: &mut [u32]);
}

impl PackB for MatRef<'_> {
    fn rows(&self) -> usize {
        self.rows
    }
    fn cols(&self) -> usize {
        self.cols
    }
    fn pack(&self, pc: usize, kc: usize, j0: usize, j1: usize, dst: &mut [u32]) {
        pack_b(self, &|bits: u16| u32::from(bits), pc, kc, j0, j1, dst)
    }
}

impl PackB for CodesRef<'_> {
    fn rows(&self) -> usize {
        self.codes.rows
    }
    fn cols(&self) -> usize {
        self.codes.cols
    }
    fn pack(&self, pc: usize, kc: usize, j0: usize, j1: usize, dst: &mut [u32]) {
        let lut = self.lut;
        pack_b(
            &self.codes,
            &|code: u8| u32::from(lut[usize::from(code)]),
            pc,
            kc,
            j0,
            j1,
            dst,
        )
    }
}

/// `c = a @ b` (c row-major, `a.rows x b.cols`, overwritten), bf16 products accumulated in f32,
/// on the current rayon pool. Panics if the CPU lacks the instructions ([`supported`]) or the
/// shapes disagree.
pub fn gemm(a: MatRef<'_>, b: MatRef<'_>, c: &mut [f32]) {
    run(a, &b, c)
}

/// [`gemm`] with B an FP8-stored matrix, each code read as its bf16 value from the table while
/// B is packed: the same packed panels, hence the same bits, as [`gemm`] of B's values in bf16.
pub fn gemm_codes(a: MatRef<'_>, b: CodesRef<'_>, c: &mut [f32]) {
    run(a, &b, c)
}

/// The blocked GEMM over any packable B.
fn run(a: MatRef<'_>, b: &impl PackB, c: &mut [f32]) {
    let (m, k, n) = (a.rows, a.cols, b.cols());
    assert_eq!(
        b.rows(),
        k,
        "bf16 GEMM: inner dimensions {k} and {} differ",
        b.rows()
    );
    assert_eq!(
        c.len(),
        m * n,
        "bf16 GEMM: output of {} for {m}x{n}",
        c.len()
    );
    assert!(supported(), "bf16 GEMM on a CPU without AVX512_BF16");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        c.fill(0.0);
        return;
    }
    let threads = rayon::current_num_threads().max(1);
    // Row blocks: a multiple of the threads when there are enough rows, so that each thread gets
    // about as many rows; column chunks share out what rows cannot (few rows: generation).
    let row_blocks = {
        let wanted = threads * m.div_ceil(threads * MC_MAX);
        wanted.min(m.div_ceil(MR)).max(1)
    };
    let mc = m.div_ceil(row_blocks).div_ceil(MR) * MR;
    let row_blocks = m.div_ceil(mc);
    let c_ptr = SendPtr(c.as_mut_ptr());
    let mut packed_b: Vec<u32> = Vec::new();
    for jc in (0..n).step_by(NC) {
        let nc = NC.min(n - jc);
        let panels = nc.div_ceil(NR);
        let col_chunks = (2 * threads).div_ceil(row_blocks).min(panels).max(1);
        let panels_per_chunk = panels.div_ceil(col_chunks);
        for pc in (0..k).step_by(KC) {
            let kc = KC.min(k - pc);
            let kp = kc.div_ceil(2);
            packed_b.resize(panels * kp * NR, 0);
            packed_b
                .par_chunks_mut(kp * NR)
                .enumerate()
                .for_each(|(p, dst)| {
                    b.pack(pc, kc, jc + p * NR, (jc + nc).min(jc + p * NR + NR), dst)
                });
            let packed_b = &packed_b;
            let first = pc == 0;
            (0..row_blocks * col_chunks)
                .into_par_iter()
                .for_each(|task| {
                    let (rb, cb) = (task / col_chunks, task % col_chunks);
                    let (i0, i1) = (rb * mc, ((rb + 1) * mc).min(m));
                    let (p0, p1) = (
                        cb * panels_per_chunk,
                        ((cb + 1) * panels_per_chunk).min(panels),
                    );
                    if i0 >= i1 || p0 >= p1 {
                        return;
                    }
                    let mut packed_a = vec![0u32; (i1 - i0).div_ceil(MR) * MR * kp];
                    pack_a(&a, i0, i1, pc, kc, &mut packed_a);
                    for p in p0..p1 {
                        let j0 = jc + p * NR;
                        let nr = NR.min(jc + nc - j0);
                        let bp = &packed_b[p * kp * NR..(p + 1) * kp * NR];
                        for (t, ap) in packed_a.chunks_exact(MR * kp).enumerate() {
                            let r0 = i0 + t * MR;
                            let mr = MR.min(i1 - r0);
                            // SAFETY: rows r0..r0+mr and columns j0..j0+nr of the m x n output;
                            // tasks cover disjoint (row block, column chunk) tiles, so no two
                            // threads write the same element.
                            unsafe {
                                tile(kp, ap, bp, c_ptr.get().add(r0 * n + j0), n, mr, nr, first);
                            }
                        }
                    }
                });
        }
    }
}

/// The output pointer, shared by tasks that write disjoint tiles.
#[derive(Clone, Copy)]
struct SendPtr(*mut f32);

impl SendPtr {
    /// The pointer (a method, so that closures capture the `Sync` wrapper, not its field).
    fn get(self) -> *mut f32 {
        self.0
    }
}
// SAFETY: see the call in `gemm`: tasks write disjoint elements.
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

/// Packs rows `i0..i1`, K `pc..pc+kc` of `a` into micro-panels of MR rows: pair `p` of row `i` of
/// a panel at `p * MR + i`, zeros beyond the edges.
fn pack_a(a: &MatRef<'_>, i0: usize, i1: usize, pc: usize, kc: usize, dst: &mut [u32]) {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f,avx512bw")]
        unsafe fn wide(
            a: &MatRef<'_>,
            i0: usize,
            i1: usize,
            pc: usize,
            kc: usize,
            dst: &mut [u32],
        ) {
            pack_a_body(a, i0, i1, pc, kc, dst)
        }
        // SAFETY: `gemm` runs only where `supported()` (AVX-512 F and BW among them).
        unsafe { wide(a, i0, i1, pc, kc, dst) }
    }
    #[cfg(not(target_arch = "x86_64"))]
    pack_a_body(a, i0, i1, pc, kc, dst)
}

/// [`pack_a`]'s loops, compiled once more for AVX-512 (the packing loops vectorize there).
#[inline(always)]
fn pack_a_body(a: &MatRef<'_>, i0: usize, i1: usize, pc: usize, kc: usize, dst: &mut [u32]) {
    let kp = kc.div_ceil(2);
    for (t, panel) in dst.chunks_exact_mut(MR * kp).enumerate() {
        let r0 = i0 + t * MR;
        let mr = MR.min(i1 - r0);
        if a.cs == 1 {
            // Rows contiguous along K (the forward's X, dX's dY): a pair is two neighbours.
            for i in 0..mr {
                let row = a.row(r0 + i, pc, kc);
                for (p, pair) in row.chunks(2).enumerate() {
                    let hi = pair.get(1).map_or(0, |&h| u32::from(h));
                    panel[p * MR + i] = u32::from(pair[0]) | (hi << 16);
                }
            }
        } else if a.rs == 1 {
            // Columns contiguous along M (dW's X^T): pair p interleaves two columns' runs.
            for p in 0..kp {
                let c = pc + 2 * p;
                let lo = a.col(c, r0, mr);
                let out = &mut panel[p * MR..p * MR + mr];
                if c + 1 < pc + kc {
                    let hi = a.col(c + 1, r0, mr);
                    for ((o, &l), &h) in out.iter_mut().zip(lo).zip(hi) {
                        *o = u32::from(l) | (u32::from(h) << 16);
                    }
                } else {
                    for (o, &l) in out.iter_mut().zip(lo) {
                        *o = u32::from(l);
                    }
                }
            }
        } else {
            for i in 0..mr {
                let r = r0 + i;
                for p in 0..kp {
                    let c = pc + 2 * p;
                    let hi = if c + 1 < pc + kc {
                        u32::from(a.at(r, c + 1))
                    } else {
                        0
                    };
                    panel[p * MR + i] = u32::from(a.at(r, c)) | (hi << 16);
                }
            }
        }
        if mr < MR {
            for p in 0..kp {
                panel[p * MR + mr..(p + 1) * MR].fill(0);
            }
        }
    }
}

/// Packs columns `j0..j1` (at most NR), K `pc..pc+kc` of `b`, each element's bf16 bits given by
/// `bits`: pair `p` of column `j` at `p * NR + j`, zeros beyond the edges.
fn pack_b<T: Copy + Sync, F: Fn(T) -> u32>(
    b: &MatRef<'_, T>,
    bits: &F,
    pc: usize,
    kc: usize,
    j0: usize,
    j1: usize,
    dst: &mut [u32],
) {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f,avx512bw")]
        unsafe fn wide<T: Copy + Sync, F: Fn(T) -> u32>(
            b: &MatRef<'_, T>,
            bits: &F,
            pc: usize,
            kc: usize,
            j0: usize,
            j1: usize,
            dst: &mut [u32],
        ) {
            pack_b_body(b, bits, pc, kc, j0, j1, dst)
        }
        // SAFETY: as in `pack_a`.
        unsafe { wide(b, bits, pc, kc, j0, j1, dst) }
    }
    #[cfg(not(target_arch = "x86_64"))]
    pack_b_body(b, bits, pc, kc, j0, j1, dst)
}

/// [`pack_b`]'s loops (see [`pack_a_body`]).
#[inline(always)]
fn pack_b_body<T: Copy, F: Fn(T) -> u32>(
    b: &MatRef<'_, T>,
    bits: &F,
    pc: usize,
    kc: usize,
    j0: usize,
    j1: usize,
    dst: &mut [u32],
) {
    let kp = kc.div_ceil(2);
    let nr = j1 - j0;
    if b.rs == 1 {
        // Columns contiguous along K (dX's W^T): a pair is two neighbours.
        for j in 0..nr {
            let col = b.col(j0 + j, pc, kc);
            for (p, pair) in col.chunks(2).enumerate() {
                let hi = pair.get(1).map_or(0, |&h| bits(h));
                dst[p * NR + j] = bits(pair[0]) | (hi << 16);
            }
        }
        for p in 0..kp {
            dst[p * NR + nr..(p + 1) * NR].fill(0);
        }
        return;
    }
    for p in 0..kp {
        let out = &mut dst[p * NR..(p + 1) * NR];
        let k0 = pc + 2 * p;
        let has_hi = k0 + 1 < pc + kc;
        if b.cs == 1 {
            // Rows contiguous along N (the forward's W, dW's dY): interleave two rows' runs.
            let lo = b.row(k0, j0, nr);
            if has_hi {
                let hi = b.row(k0 + 1, j0, nr);
                for ((o, &l), &h) in out.iter_mut().zip(lo).zip(hi) {
                    *o = bits(l) | (bits(h) << 16);
                }
            } else {
                for (o, &l) in out.iter_mut().zip(lo) {
                    *o = bits(l);
                }
            }
        } else {
            for (j, o) in out.iter_mut().enumerate().take(nr) {
                let hi = if has_hi {
                    bits(b.at(k0 + 1, j0 + j))
                } else {
                    0
                };
                *o = bits(b.at(k0, j0 + j)) | (hi << 16);
            }
        }
        out[nr..].fill(0);
    }
}

/// One MR x NR tile: `C[0..mr, 0..nr] (+)= A_panel B_panel` over `kp` pairs (`first`: store,
/// else add to what is there).
///
/// # Safety
/// `c` must address an `mr x nr` block with row stride `ldc`, valid for reads and writes; the
/// CPU must have AVX-512 F and AVX512_BF16.
#[allow(clippy::too_many_arguments)]
unsafe fn tile(
    kp: usize,
    a: &[u32],
    b: &[u32],
    c: *mut f32,
    ldc: usize,
    mr: usize,
    nr: usize,
    first: bool,
) {
    assert!(a.len() >= kp * MR && b.len() >= kp * NR);
    #[cfg(target_arch = "x86_64")]
    {
        if mr == MR && nr == NR {
            // SAFETY: the panels hold kp pairs (asserted), `c` a full tile (caller); the CPU
            // was checked in `gemm`.
            unsafe { x86::kernel_12x32(kp, a.as_ptr(), b.as_ptr(), c, ldc, !first) };
            return;
        }
        // An edge tile: computed whole into a buffer, its valid part copied out.
        let mut acc = [0.0f32; MR * NR];
        // SAFETY: as above; `acc` is a full tile with row stride NR.
        unsafe { x86::kernel_12x32(kp, a.as_ptr(), b.as_ptr(), acc.as_mut_ptr(), NR, false) };
        for i in 0..mr {
            for j in 0..nr {
                // SAFETY: within the caller's mr x nr block.
                unsafe {
                    let p = c.add(i * ldc + j);
                    *p = if first {
                        acc[i * NR + j]
                    } else {
                        *p + acc[i * NR + j]
                    };
                }
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (kp, a, b, c, ldc, mr, nr, first);
        unreachable!("bf16 GEMM without x86_64");
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{MR, NR};
    use std::arch::x86_64::*;

    /// `c[i * ldc + j] (+)= sum over pairs` of the packed panels (`add`: add to what is there),
    /// in registers: 24 accumulators (12 rows x 2 vectors), two B loads and twelve broadcasts
    /// of A pairs per K pair.
    ///
    /// # Safety
    /// `a` holds `kp * MR`, `b` `kp * NR` u32, `c` addresses an MR x NR block with row stride
    /// `ldc`, valid for reads and writes; the CPU has AVX-512 F and AVX512_BF16.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub(super) unsafe fn kernel_12x32(
        kp: usize,
        a: *const u32,
        b: *const u32,
        c: *mut f32,
        ldc: usize,
        add: bool,
    ) {
        let mut acc = [[_mm512_setzero_ps(); 2]; MR];
        for p in 0..kp {
            // SAFETY: pair p of each panel is in range (caller).
            unsafe {
                let bp = b.add(p * NR);
                let b0: __m512bh = std::mem::transmute(_mm512_loadu_si512(bp.cast()));
                let b1: __m512bh = std::mem::transmute(_mm512_loadu_si512(bp.add(16).cast()));
                let ap = a.add(p * MR);
                for (i, row) in acc.iter_mut().enumerate() {
                    let ai: __m512bh = std::mem::transmute(_mm512_set1_epi32(*ap.add(i) as i32));
                    row[0] = _mm512_dpbf16_ps(row[0], ai, b0);
                    row[1] = _mm512_dpbf16_ps(row[1], ai, b1);
                }
            }
        }
        for (i, row) in acc.iter().enumerate() {
            // SAFETY: c's block has MR rows of NR f32 (caller).
            unsafe {
                let ci = c.add(i * ldc);
                let (mut v0, mut v1) = (row[0], row[1]);
                if add {
                    v0 = _mm512_add_ps(v0, _mm512_loadu_ps(ci));
                    v1 = _mm512_add_ps(v1, _mm512_loadu_ps(ci.add(16)));
                }
                _mm512_storeu_ps(ci, v0);
                _mm512_storeu_ps(ci.add(16), v1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::Fp8Format;
    use crate::scaling::quantize_scaled;

    /// Unit roundoff of f32.
    const U: f64 = 1.0 / (1u64 << 24) as f64;

    /// The bound on an f32 sum of `k` exact products (Higham, "Accuracy and Stability of
    /// Numerical Algorithms", 2nd ed., eq. 3.4 with exact products): any order of the k - 1
    /// additions is within gamma(k - 1) * sum |a b| of the exact result, gamma(n) = n u / (1 - n u).
    /// Blocking over K adds the blocks' partial sums in f32, one more addition on the path of
    /// each: gamma(k) covers it.
    fn bound(k: usize, abs_sum: f64) -> f64 {
        let n = k as f64;
        n * U / (1.0 - n * U) * abs_sum
    }

    /// Pseudo-random FP8 operands (`format` at `bias`, with zeros, sign changes, subnormals,
    /// saturated values) as bf16 bits; each value checked exact in bf16.
    fn operand(len: usize, format: Fp8Format, bias: i32, seed: u64) -> Vec<u16> {
        let mut s = seed;
        (0..len)
            .map(|_| {
                s = s
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                let u = ((s >> 11) as f64 / (1u64 << 53) as f64) as f32;
                let e = ((s >> 3) % 24) as i32 - 16;
                let x = (2.0 * u - 1.0) * 2f32.powi(e) * format.max() * 2f32.powi(-bias);
                let q = quantize_scaled(x, format, bias);
                let b = (q.to_bits() >> 16) as u16;
                assert_eq!(f32::from_bits(u32::from(b) << 16), q, "not exact in bf16");
                b
            })
            .collect()
    }

    fn value(b: u16) -> f64 {
        f64::from(f32::from_bits(u32::from(b) << 16))
    }

    /// Checks `gemm(a, b)` element by element against the f64 product of the same operands.
    fn check(a: MatRef<'_>, b: MatRef<'_>, what: &str) {
        let (m, k, n) = (a.rows, a.cols, b.cols);
        let mut c = vec![f32::NAN; m * n];
        gemm(a, b, &mut c);
        for i in 0..m {
            for j in 0..n {
                let (mut exact, mut abs_sum) = (0.0f64, 0.0f64);
                for p in 0..k {
                    let prod = value(a.at(i, p)) * value(b.at(p, j));
                    exact += prod;
                    abs_sum += prod.abs();
                }
                let got = f64::from(c[i * n + j]);
                assert!(
                    (got - exact).abs() <= bound(k, abs_sum),
                    "{what} {m}x{k}x{n}: C[{i},{j}] = {got:e}, exact {exact:e}, bound {:e}",
                    bound(k, abs_sum)
                );
            }
        }
    }

    fn skip() -> bool {
        if supported() {
            return false;
        }
        eprintln!("skipped: this CPU has no AVX512_BF16");
        true
    }

    /// Every layout of the linear layer's GEMMs (row-major, transposed A, transposed B), on shapes
    /// around the tile and block edges (MR 12, NR 32, KC 256, an odd K, one row, one column).
    #[test]
    fn equals_the_f64_product_within_the_f32_accumulation_bound() {
        if skip() {
            return;
        }
        let shapes = [
            (1, 1, 1),
            (1, 768, 40),
            (5, 3, 7),
            (12, 256, 32),
            (13, 257, 33),
            (25, 513, 95),
            (200, 255, 64),
            (37, 600, 130),
        ];
        for (s, &(m, k, n)) in shapes.iter().enumerate() {
            let a_data = operand(m * k, Fp8Format::E4M3Fnuz, 3, s as u64);
            let b_data = operand(k * n, Fp8Format::E5M2Fnuz, -2, 100 + s as u64);
            for (a_t, b_t) in [(false, false), (false, true), (true, false), (true, true)] {
                let a = if a_t {
                    MatRef::row_major(&a_data, k, m).t()
                } else {
                    MatRef::row_major(&a_data, m, k)
                };
                let b = if b_t {
                    MatRef::row_major(&b_data, n, k).t()
                } else {
                    MatRef::row_major(&b_data, k, n)
                };
                check(a, b, &format!("A^T {a_t}, B^T {b_t}"));
            }
        }
    }

    /// Views that are neither row- nor column-major (an offset, padded rows, a negative stride)
    /// take the general packing path.
    #[test]
    fn strided_views_equal_the_f64_product() {
        if skip() {
            return;
        }
        let (m, k, n) = (14, 41, 35);
        let a_data = operand(3 * m * k + 5, Fp8Format::E4M3Fn, 0, 7);
        let b_data = operand(2 * k * n + 3, Fp8Format::E4M3Fn, 5, 8);
        // A: every other column of a [m, 3k] buffer, from offset 5.
        let a = MatRef::new(&a_data, 5, m, k, 3 * k as isize, 2);
        // B: rows read bottom-up (negative row stride), columns 2 apart.
        let b = MatRef::new(&b_data, (k - 1) * 2 * n, k, n, -2 * n as isize, 2);
        check(a, b, "strided");
    }

    /// More than NC columns: two column blocks.
    #[test]
    fn wide_outputs_span_column_blocks() {
        if skip() {
            return;
        }
        let (m, k, n) = (3, 20, NC + 40);
        let a_data = operand(m * k, Fp8Format::E4M3Fnuz, 0, 11);
        let b_data = operand(k * n, Fp8Format::E4M3Fnuz, 0, 12);
        check(
            MatRef::row_major(&a_data, m, k),
            MatRef::row_major(&b_data, k, n),
            "wide",
        );
    }

    /// Sums of small integers are exact in f32 in any order: the result must be exact, which
    /// no packing or tiling slip survives.
    #[test]
    fn integer_products_are_exact() {
        if skip() {
            return;
        }
        let (m, k, n) = (29, 300, 70);
        let int = |i: usize, salt: usize| ((i * 7 + salt * 13) % 15) as f32 - 7.0;
        let bits = |x: f32| (x.to_bits() >> 16) as u16;
        let a_data: Vec<u16> = (0..m * k).map(|i| bits(int(i, 1))).collect();
        let b_data: Vec<u16> = (0..k * n).map(|i| bits(int(i, 2))).collect();
        let mut c = vec![0.0f32; m * n];
        gemm(
            MatRef::row_major(&a_data, m, k),
            MatRef::row_major(&b_data, k, n),
            &mut c,
        );
        for i in 0..m {
            for j in 0..n {
                let want: f32 = (0..k).map(|p| int(i * k + p, 1) * int(p * n + j, 2)).sum();
                assert_eq!(c[i * n + j], want, "C[{i},{j}]");
            }
        }
    }

    #[test]
    #[should_panic(expected = "reaches outside")]
    fn views_beyond_their_data_are_refused() {
        let data = [0u16; 10];
        let _ = MatRef::new(&data, 2, 3, 3, 3, 1);
    }
}
