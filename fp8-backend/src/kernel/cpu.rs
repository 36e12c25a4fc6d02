//! Fake quantization over f32 slices: the CPU kernels behind every host-side backend.
//!
//! Two passes over memory, each split into chunks across rayon's threads: one for the amax, one
//! for the cast. Both loops are branch-free integer and float arithmetic on each element, so the
//! compiler vectorizes them. They agree bit for bit with the scalar reference
//! [`crate::quantize_scaled`] (tested against the `ml_dtypes` golden data).

use burn::tensor::bf16;
use rayon::prelude::*;

use crate::format::{pow2, Fp8Format};
use crate::kernel::QuantStats;
use crate::multiversion;
use crate::scaling::{bias_for, BiasRule};
use crate::simd::Isa;

/// Elements per rayon task: large enough to amortize scheduling, small enough to balance.
const CHUNK: usize = 1 << 16;

/// 2^23: adding and subtracting it rounds a non-negative f32 below 2^22 to an integer with the
/// FPU's round-to-nearest-even.
const ROUND_MAGIC: f32 = 8_388_608.0;

/// The largest |x| as f32 bits. On non-negative floats the bit order is the numeric order, and
/// NaNs (above 0x7f80_0000) sort above infinity, so a non-finite tensor cannot hide.
pub fn amax_bits(xs: &[f32]) -> u32 {
    amax_bits_on(Isa::best(), xs)
}

fn amax_bits_on(isa: Isa, xs: &[f32]) -> u32 {
    xs.par_chunks(CHUNK)
        .map(|c| amax_chunk(isa, c))
        .max()
        .unwrap_or(0)
}

/// The per-call constants of the cast loop.
#[derive(Clone, Copy)]
#[doc(hidden)]
pub struct CastParams {
    scale: f32,
    unscale: f32,
    max: f32,
    /// f32 biased exponent of the format's smallest normal: below it the spacing stays fixed.
    emin_biased: u32,
    mantissa_bits: u32,
}

impl CastParams {
    fn new(format: Fp8Format, bias: i32) -> Self {
        Self {
            scale: pow2(bias),
            unscale: pow2(-bias),
            max: format.max(),
            emin_biased: (format.min_normal_exp() + 127) as u32,
            mantissa_bits: format.mantissa_bits(),
        }
    }

    /// `fake_quant(x * 2^bias) * 2^-bias` without branches.
    #[inline(always)]
    fn cast(&self, x: f32) -> f32 {
        let bits = x.to_bits();
        let sign = bits & 0x8000_0000;
        let a = f32::from_bits(bits & 0x7fff_ffff) * self.scale;
        // Spacing of the format around `a`: q = 2^(e - m), e = max(exponent(a), emin). Both q and
        // 1/q are built from bits; `a * (1/q)` is exact and below 2^(m+1).
        let e = (a.to_bits() >> 23).max(self.emin_biased);
        let q = f32::from_bits((e - self.mantissa_bits) << 23);
        let inv_q = f32::from_bits((254 + self.mantissa_bits - e) << 23);
        let r = ((a * inv_q + ROUND_MAGIC) - ROUND_MAGIC) * q;
        // Saturate (inf included). A NaN fails the comparison and stays NaN through `r`.
        let r = if a >= self.max { self.max } else { r };
        f32::from_bits(r.to_bits() | sign) * self.unscale
    }
}

/// Fake-quantizes `src` into `dst` with a known bias.
pub fn cast_into(src: &[f32], dst: &mut [f32], format: Fp8Format, bias: i32) {
    cast_into_on(Isa::best(), src, dst, CastParams::new(format, bias));
}

fn cast_into_on<D: CastOut>(isa: Isa, src: &[f32], dst: &mut [D], p: CastParams) {
    assert_eq!(src.len(), dst.len(), "cast: slices of different lengths");
    dst.par_chunks_mut(CHUNK)
        .zip(src.par_chunks(CHUNK))
        .for_each(|(d, s)| D::cast_chunk(isa, p, s, d));
}

/// What the cast loops write: the fake-quantized value as f32, or the same value as bf16 (an
/// FP8 value times a power of two is exact in bf16: `kernel/bf16_gemm.rs`), the CPU FP8 GEMM's
/// operand, written in the same pass.
pub trait CastOut: Copy + Send + Sync + 'static {
    #[doc(hidden)]
    fn cast_chunk(isa: Isa, p: CastParams, s: &[f32], d: &mut [Self]);
    #[doc(hidden)]
    fn cast_chunk_counting(isa: Isa, p: CastParams, s: &[f32], d: &mut [Self]) -> (u64, u64, u64);
    #[doc(hidden)]
    fn round_chunk(isa: Isa, s: &[f32], d: &mut [Self]);
    /// A cast's output (an f32 on the FP8 grid times a power of two) as `Self`, exactly.
    #[doc(hidden)]
    fn from_cast(y: f32) -> Self;
}

impl CastOut for f32 {
    fn cast_chunk(isa: Isa, p: CastParams, s: &[f32], d: &mut [Self]) {
        cast_chunk(isa, p, s, d)
    }
    fn cast_chunk_counting(isa: Isa, p: CastParams, s: &[f32], d: &mut [Self]) -> (u64, u64, u64) {
        cast_chunk_counting(isa, p, s, d)
    }
    fn round_chunk(isa: Isa, s: &[f32], d: &mut [Self]) {
        round_chunk_f32(isa, s, d)
    }
    #[inline(always)]
    fn from_cast(y: f32) -> Self {
        y
    }
}

impl CastOut for bf16 {
    fn cast_chunk(isa: Isa, p: CastParams, s: &[f32], d: &mut [Self]) {
        cast_chunk_bf16(isa, p, s, d)
    }
    fn cast_chunk_counting(isa: Isa, p: CastParams, s: &[f32], d: &mut [Self]) -> (u64, u64, u64) {
        cast_chunk_counting_bf16(isa, p, s, d)
    }
    fn round_chunk(isa: Isa, s: &[f32], d: &mut [Self]) {
        round_chunk_bf16(isa, s, d)
    }
    /// Its upper 16 bits, which hold all of it (its lower 16 are zero), a NaN kept a NaN (quiet
    /// bit set, should its payload lie in the lower half only).
    #[inline(always)]
    fn from_cast(y: f32) -> Self {
        let bits = y.to_bits();
        let nan = u32::from((bits & 0x7fff_ffff) > 0x7f80_0000) << 6;
        bf16::from_bits(((bits >> 16) | nan) as u16)
    }
}

/// The cast loop over one chunk, writing `D` (inlined into each build of the chunk functions).
#[inline(always)]
fn cast_loop<D: CastOut>(p: CastParams, s: &[f32], d: &mut [D]) {
    for (o, &x) in d.iter_mut().zip(s) {
        *o = D::from_cast(p.cast(x));
    }
}

/// [`cast_loop`], also counting (underflows, non-zero inputs, saturations).
#[inline(always)]
fn cast_loop_counting<D: CastOut>(p: CastParams, s: &[f32], d: &mut [D]) -> (u64, u64, u64) {
    // u32 counters per chunk (CHUNK < 2^32) vectorize better than u64.
    let (mut under, mut nonzero, mut sat) = (0u32, 0u32, 0u32);
    for (o, &x) in d.iter_mut().zip(s) {
        let y = p.cast(x);
        *o = D::from_cast(y);
        let nz = x != 0.0;
        nonzero += nz as u32;
        under += (nz & (y == 0.0)) as u32;
        sat += (x.abs() * p.scale > p.max) as u32;
    }
    (under.into(), nonzero.into(), sat.into())
}

multiversion! {
    /// The cast loop over one chunk. `p` is passed by value: read through the closure's captured
    /// reference, LLVM cannot tell that writes to `d` leave it unchanged and the loop does not
    /// vectorize (measured: 6x slower).
    #[inline(never)]
    fn cast_chunk(p: CastParams, s: &[f32], d: &mut [f32]) -> () {
        cast_loop(p, s, d)
    }
}

multiversion! {
    /// The cast loop, also counting (underflows, non-zero inputs, saturations).
    #[inline(never)]
    fn cast_chunk_counting(p: CastParams, s: &[f32], d: &mut [f32]) -> (u64, u64, u64) {
        cast_loop_counting(p, s, d)
    }
}

multiversion! {
    /// [`cast_chunk`] writing bf16.
    #[inline(never)]
    fn cast_chunk_bf16(p: CastParams, s: &[f32], d: &mut [bf16]) -> () {
        cast_loop(p, s, d)
    }
}

multiversion! {
    /// [`cast_chunk_counting`] writing bf16.
    #[inline(never)]
    fn cast_chunk_counting_bf16(p: CastParams, s: &[f32], d: &mut [bf16]) -> (u64, u64, u64) {
        cast_loop_counting(p, s, d)
    }
}

/// The upper 16 bits of `x` rounded to bfloat16: round to nearest, ties to even (a carry into
/// the exponent is the right result, up to infinity); a NaN stays a NaN (quiet bit set).
#[inline(always)]
fn bf16_bits_rne(x: f32) -> u16 {
    let b = x.to_bits();
    let rounded = b.wrapping_add(0x7fff + ((b >> 16) & 1)) >> 16;
    let nan = (b & 0x7fff_ffff) > 0x7f80_0000;
    (if nan { (b >> 16) | 0x40 } else { rounded }) as u16
}

multiversion! {
    /// Rounds one chunk to bf16, written as f32.
    #[inline(never)]
    fn round_chunk_f32(s: &[f32], d: &mut [f32]) -> () {
        for (o, &x) in d.iter_mut().zip(s) {
            *o = f32::from_bits(u32::from(bf16_bits_rne(x)) << 16);
        }
    }
}

multiversion! {
    /// Rounds one chunk to bf16.
    #[inline(never)]
    fn round_chunk_bf16(s: &[f32], d: &mut [bf16]) -> () {
        for (o, &x) in d.iter_mut().zip(s) {
            *o = bf16::from_bits(bf16_bits_rne(x));
        }
    }
}

/// Rounds `src` to bfloat16 (round to nearest even; the `bf16` precision's cast), written as f32
/// or as bf16, in chunks across rayon's threads.
pub fn round_bf16<D: CastOut>(src: &[f32], dst: &mut [D]) {
    round_bf16_on(Isa::best(), src, dst)
}

fn round_bf16_on<D: CastOut>(isa: Isa, src: &[f32], dst: &mut [D]) {
    assert_eq!(src.len(), dst.len(), "round: slices of different lengths");
    dst.par_chunks_mut(CHUNK)
        .zip(src.par_chunks(CHUNK))
        .for_each(|(d, s)| D::round_chunk(isa, s, d));
}

multiversion! {
    /// max(|x| bits) over one chunk.
    #[inline(never)]
    fn amax_chunk(s: &[f32]) -> u32 {
        s.iter().fold(0u32, |m, x| m.max(x.to_bits() & 0x7fff_ffff))
    }
}

/// Like [`cast_into`], also counting underflows (non-zero in, zero out), non-zero inputs, and
/// saturations (|x * 2^bias| > max, infinities included).
fn cast_into_counting<D: CastOut>(
    isa: Isa,
    src: &[f32],
    dst: &mut [D],
    p: CastParams,
) -> (u64, u64, u64) {
    assert_eq!(src.len(), dst.len(), "cast: slices of different lengths");
    dst.par_chunks_mut(CHUNK)
        .zip(src.par_chunks(CHUNK))
        .map(|(d, s)| D::cast_chunk_counting(isa, p, s, d))
        .reduce(|| (0, 0, 0), |a, b| (a.0 + b.0, a.1 + b.1, a.2 + b.2))
}

/// What the host kernels return: the cast values, or why there are none.
pub enum HostQuant {
    /// The quantized values and, if asked for, their statistics.
    Done(Option<QuantStats>),
    /// The amax was infinite or NaN: `dst` is untouched and no bias was derived.
    NonFinite(f32),
}

/// Amax, bias and cast of one tensor's values, the way the decorator wants them, written as f32
/// or (the same values) as bf16.
pub fn quantize_slice<D: CastOut>(
    src: &[f32],
    dst: &mut [D],
    format: Fp8Format,
    rule: BiasRule,
    want_stats: bool,
) -> HostQuant {
    quantize_slice_on(Isa::best(), src, dst, format, rule, want_stats)
}

fn quantize_slice_on<D: CastOut>(
    isa: Isa,
    src: &[f32],
    dst: &mut [D],
    format: Fp8Format,
    rule: BiasRule,
    want_stats: bool,
) -> HostQuant {
    // CSCALE needs no amax unless statistics are wanted.
    let need_amax = want_stats || matches!(rule, BiasRule::Amax { .. });
    let amax = if need_amax {
        f32::from_bits(amax_bits_on(isa, src))
    } else {
        0.0
    };
    let bias = match bias_for(rule, amax, format) {
        Ok(b) => b,
        Err(e) => return HostQuant::NonFinite(e.amax),
    };
    let p = CastParams::new(format, bias);
    if !want_stats {
        cast_into_on(isa, src, dst, p);
        return HostQuant::Done(None);
    }
    let (under, nonzero, sat) = cast_into_counting(isa, src, dst, p);
    let n = src.len().max(1) as f64;
    HostQuant::Done(Some(QuantStats {
        amax,
        bias,
        underflow_frac: if nonzero == 0 {
            0.0
        } else {
            (under as f64 / nonzero as f64) as f32
        },
        saturated_frac: (sat as f64 / n) as f32,
        numel: src.len(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scaling::quantize_scaled;

    /// Biases of the sweeps: both clipping limits and values between.
    const SWEEP_BIASES: [i32; 5] = [-31, -3, 0, 5, 31];

    /// Written to the output before each loop runs: 12345 has 13 significant bits, so it is no
    /// FP8 value at any scale, and an element a loop forgets to write cannot pass for a result.
    const POISON: f32 = 12345.0;

    /// Every 997th f32 bit pattern (both signs, all exponents, NaNs and infinities): 4.3M values,
    /// 66 chunks, the last one partial and not a whole number of AVX2 vectors long. Then, for
    /// every format and sweep bias, the values that sit on an edge once scaled (max, the
    /// smallest normal and subnormal, half the smallest subnormal, the first value that rounds
    /// above max), each with its two neighbours on either side and both signs: the sparse sweep
    /// rarely lands on one exactly.
    fn bit_pattern_sweep() -> Vec<f32> {
        let mut xs: Vec<f32> = (0..u32::MAX / 997)
            .map(|i| f32::from_bits(i * 997))
            .collect();
        for f in Fp8Format::ALL {
            let half_ulp_of_max =
                pow2(f.max().log2().floor() as i32 - f.mantissa_bits() as i32 - 1);
            let edges = [
                f.max(),
                f.max() + half_ulp_of_max,
                f.min_normal(),
                f.min_subnormal(),
                f.min_subnormal() / 2.0,
            ];
            for bias in SWEEP_BIASES {
                for edge in edges {
                    let bits = (edge * pow2(-bias)).to_bits();
                    for b in bits - 2..=bits + 2 {
                        xs.extend([f32::from_bits(b), -f32::from_bits(b)]);
                    }
                }
            }
        }
        xs
    }

    /// `isa` where this CPU runs it; elsewhere `None`, with a note that its tests are skipped.
    fn on_this_cpu(isa: Isa) -> Option<Isa> {
        if isa.supported() {
            return Some(isa);
        }
        eprintln!("skipped: this CPU cannot run {isa:?}");
        None
    }

    fn avx2() -> Option<Isa> {
        #[cfg(target_arch = "x86_64")]
        return on_this_cpu(Isa::Avx2);
        #[cfg(not(target_arch = "x86_64"))]
        None
    }

    fn avx512() -> Option<Isa> {
        #[cfg(target_arch = "x86_64")]
        return on_this_cpu(Isa::Avx512);
        #[cfg(not(target_arch = "x86_64"))]
        None
    }

    /// Same bits, or both NaN, or both zero (the sign of zero is free: docs/design.md).
    fn same(kernel: f32, reference: f32) -> bool {
        kernel.to_bits() == reference.to_bits()
            || (kernel.is_nan() && reference.is_nan())
            || (kernel == 0.0 && reference == 0.0)
    }

    /// (underflows, non-zero inputs, saturations) as `QuantStats` defines them, element by
    /// element: `qs` are the scalar reference's outputs; saturation is `|x| * 2^bias > max`,
    /// evaluated in f64, where the product is exact and cannot overflow.
    fn reference_counts(xs: &[f32], qs: &[f32], format: Fp8Format, bias: i32) -> (u64, u64, u64) {
        let (mut under, mut nonzero, mut sat) = (0, 0, 0);
        for (&x, &q) in xs.iter().zip(qs) {
            if x != 0.0 {
                nonzero += 1;
                under += u64::from(q == 0.0);
            }
            sat += u64::from(f64::from(x.abs()) * 2f64.powi(bias) > f64::from(format.max()));
        }
        (under, nonzero, sat)
    }

    /// The cast loop and the counting cast loop of build `isa`, over the sweep, against the scalar
    /// reference: every output, and the three counts.
    fn check_cast_loops(isa: Isa) {
        let xs = bit_pattern_sweep();
        let mut out = vec![0.0; xs.len()];
        let mut out16 = vec![bf16::ZERO; xs.len()];
        for f in Fp8Format::ALL {
            for bias in SWEEP_BIASES {
                let want: Vec<f32> = xs.iter().map(|&x| quantize_scaled(x, f, bias)).collect();
                let want_counts = reference_counts(&xs, &want, f, bias);
                // The sweep reaches both ends of every format at every bias.
                assert!(want_counts.0 > 0 && want_counts.2 > 0, "{f} bias {bias}");
                let p = CastParams::new(f, bias);
                for counting in [false, true] {
                    out.fill(POISON);
                    let name = if counting { "counting cast" } else { "cast" };
                    let counts = if counting {
                        Some(cast_into_counting(isa, &xs, &mut out, p))
                    } else {
                        cast_into_on(isa, &xs, &mut out, p);
                        None
                    };
                    if let Some(i) = (0..xs.len()).find(|&i| !same(out[i], want[i])) {
                        panic!(
                            "{isa:?} {name} loop, {f} bias {bias}: x={:e} ({:08x}) kernel {:e} \
                             reference {:e}",
                            xs[i],
                            xs[i].to_bits(),
                            out[i],
                            want[i]
                        );
                    }
                    if let Some(counts) = counts {
                        assert_eq!(
                            counts, want_counts,
                            "{isa:?} counting loop, {f} bias {bias}: \
                             (underflows, non-zero inputs, saturations)"
                        );
                    }
                    // The bf16 loops: the same values, every one of them exact in bf16.
                    out16.fill(bf16::from_f32(POISON));
                    let counts16 = if counting {
                        Some(cast_into_counting(isa, &xs, &mut out16, p))
                    } else {
                        cast_into_on(isa, &xs, &mut out16, p);
                        None
                    };
                    if let Some(i) = (0..xs.len()).find(|&i| !same(out16[i].to_f32(), want[i])) {
                        panic!(
                            "{isa:?} bf16 {name} loop, {f} bias {bias}: x={:e} kernel {:e} \
                             reference {:e}",
                            xs[i],
                            out16[i].to_f32(),
                            want[i]
                        );
                    }
                    assert_eq!(
                        counts16, counts,
                        "{isa:?} bf16 counting loop, {f} bias {bias}"
                    );
                }
            }
        }
    }

    /// The bf16 rounding loops of build `isa` against the `half` crate's `bf16::from_f32` (round
    /// to nearest even) over the sweep, and on the ties and carries around every exponent.
    fn check_round_loops(isa: Isa) {
        let mut xs = bit_pattern_sweep();
        for e in 0u32..255 {
            for low in [0x7fff, 0x8000, 0x8001, 0x1_7fff, 0x1_8000, 0x7f_ffff] {
                let b = (e << 23) | low;
                xs.extend([f32::from_bits(b), -f32::from_bits(b)]);
            }
        }
        let mut as_f32 = vec![POISON; xs.len()];
        let mut as_bf16 = vec![bf16::from_f32(POISON); xs.len()];
        round_bf16_on(isa, &xs, &mut as_f32);
        round_bf16_on(isa, &xs, &mut as_bf16);
        for (i, &x) in xs.iter().enumerate() {
            let want = bf16::from_f32(x);
            if want.is_nan() {
                assert!(
                    as_bf16[i].is_nan() && as_f32[i].is_nan(),
                    "{isa:?}: NaN {:08x}",
                    x.to_bits()
                );
                continue;
            }
            assert_eq!(
                as_bf16[i].to_bits(),
                want.to_bits(),
                "{isa:?}: {x:e} ({:08x})",
                x.to_bits()
            );
            assert_eq!(
                as_f32[i].to_bits(),
                want.to_f32().to_bits(),
                "{isa:?}: {x:e} as f32"
            );
        }
    }

    #[test]
    fn bf16_rounding_loops_match_the_half_crate() {
        for isa in Isa::available() {
            check_round_loops(isa);
        }
    }

    /// The amax loop of build `isa` against a scalar max of |x| bits: over whole tensors (through
    /// the chunked reduction) and over short windows (every length around the vector widths),
    /// each in both orders, so that the largest element sits in the first and in the last lane.
    fn check_amax_loop(isa: Isa) {
        let reference = |v: &[f32]| {
            v.iter()
                .map(|x| x.to_bits() & 0x7fff_ffff)
                .max()
                .unwrap_or(0)
        };
        let reversed = |v: &[f32]| v.iter().rev().copied().collect::<Vec<f32>>();
        let xs = bit_pattern_sweep();
        let finite: Vec<f32> = xs.iter().copied().filter(|x| x.is_finite()).collect();
        for (name, v) in [("sweep", &xs), ("finite part of the sweep", &finite)] {
            assert_eq!(amax_bits_on(isa, v), reference(v), "{isa:?} amax, {name}");
            let r = reversed(v);
            assert_eq!(
                amax_bits_on(isa, &r),
                reference(v),
                "{isa:?} amax, {name} reversed"
            );
        }
        // Bits of a finite amax are the numeric max |x|; a NaN anywhere wins.
        let numeric = finite.iter().fold(0f32, |m, x| m.max(x.abs()));
        assert_eq!(f32::from_bits(amax_bits_on(isa, &finite)), numeric);
        assert!(f32::from_bits(amax_bits_on(isa, &xs)).is_nan());
        for len in (0..=33).chain([255, 1000, CHUNK - 1, CHUNK + 1]) {
            for start in (0..xs.len() - len).step_by(xs.len() / 37) {
                let w = &xs[start..start + len];
                let want = reference(w);
                assert_eq!(amax_chunk(isa, w), want, "{isa:?} amax, {len} at {start}");
                let r = reversed(w);
                assert_eq!(
                    amax_chunk(isa, &r),
                    want,
                    "{isa:?} amax, {len} at {start} reversed"
                );
            }
        }
    }

    /// `quantize_slice`'s fractions from the counts of build `isa`.
    fn check_statistics(isa: Isa) {
        // E4M3Fnuz with bias 0: 1e-4 underflows (below 2^-11, half the smallest subnormal),
        // 300 and -inf saturate, 0 is neither.
        let src = [1.0, 1e-4, 300.0, f32::NEG_INFINITY, 0.0];
        let mut dst = [0.0; 5];
        let rule = BiasRule::Constant(0);
        let HostQuant::Done(Some(s)) =
            quantize_slice_on(isa, &src, &mut dst, Fp8Format::E4M3Fnuz, rule, true)
        else {
            panic!("{isa:?}: expected statistics")
        };
        assert_eq!(s.underflow_frac, 0.25, "{isa:?}"); // 1 of 4 non-zero inputs
        assert_eq!(s.saturated_frac, 0.4, "{isa:?}"); // 2 of 5 elements
        assert_eq!(dst, [1.0, 0.0, 240.0, -240.0, 0.0], "{isa:?}");
    }

    #[test]
    fn baseline_cast_loops_match_scalar_reference_on_a_sweep() {
        check_cast_loops(Isa::Baseline);
    }

    #[test]
    fn avx2_cast_loops_match_scalar_reference_on_a_sweep() {
        if let Some(isa) = avx2() {
            check_cast_loops(isa);
        }
    }

    #[test]
    fn baseline_amax_loop_matches_scalar_max_on_a_sweep() {
        check_amax_loop(Isa::Baseline);
    }

    #[test]
    fn avx2_amax_loop_matches_scalar_max_on_a_sweep() {
        if let Some(isa) = avx2() {
            check_amax_loop(isa);
        }
    }

    #[test]
    fn baseline_statistics_count_underflow_and_saturation() {
        check_statistics(Isa::Baseline);
    }

    #[test]
    fn avx2_statistics_count_underflow_and_saturation() {
        if let Some(isa) = avx2() {
            check_statistics(isa);
        }
    }

    #[test]
    fn avx512_cast_loops_match_scalar_reference_on_a_sweep() {
        if let Some(isa) = avx512() {
            check_cast_loops(isa);
        }
    }

    #[test]
    fn avx512_amax_loop_matches_scalar_max_on_a_sweep() {
        if let Some(isa) = avx512() {
            check_amax_loop(isa);
        }
    }

    #[test]
    fn avx512_statistics_count_underflow_and_saturation() {
        if let Some(isa) = avx512() {
            check_statistics(isa);
        }
    }

    #[test]
    fn production_runs_the_fastest_build() {
        // Each wider build doubles the lanes; losing one would halve the cast's throughput
        // unnoticed.
        assert_eq!(Isa::best(), avx512().or_else(avx2).unwrap_or(Isa::Baseline));
    }

    #[test]
    fn amax_sees_nan_and_inf() {
        assert_eq!(f32::from_bits(amax_bits(&[1.0, -3.0, 2.0])), 3.0);
        assert!(f32::from_bits(amax_bits(&[1.0, f32::NEG_INFINITY])).is_infinite());
        assert!(f32::from_bits(amax_bits(&[f32::INFINITY, f32::NAN])).is_nan());
        assert_eq!(amax_bits(&[]), 0);
    }
}
