//! The FP8 GEMM on NVIDIA's FP8 tensor cores: cubecl's manual MMA (`mma.sync` m16n8k32 with
//! E4M3 or E5M2 operands and f32 accumulation, sm_89 and later), for the three GEMMs of a named
//! FP8 layer on a cubecl backend (docs/design.md, "The GPU FP8 GEMM").
//!
//! The operands arrive as the casts made them: f32 values `q * 2^-bias` with `q` on the FP8
//! grid. The GEMM multiplies each operand by a power of two, `2^shift` with `shift =
//! floor(log2(max / amax))` of the OCP format it goes into (`max` 448 for E4M3FN, 57344 for
//! E5M2), converts it to that format, multiplies on the tensor cores and scales the f32 result by
//! `2^-(shift_a + shift_b)`. The conversion is exact: `shift >= bias` (the cast saturated at
//! `max`), so a normal `q` keeps its three (two) mantissa bits and a subnormal one becomes a
//! subnormal or normal with the same bits, and nothing exceeds `max`. Only the OCP formats map
//! onto the hardware's: the FNUZ family's E4 reaches 2^-10, below E4M3FN's smallest subnormal
//! with `max` fixed, so FNUZ operands take the f32 GEMM ([`fp8_gemm`] declines).
//!
//! Hopper's FP8 MMA keeps fewer accumulator bits than f32 (DeepSeek-V3, section 3.3.2, measured
//! about 14 on its FP8 GEMMs), so each MMA starts from zero and its 32 products are added to an
//! f32 accumulator in registers: the reduced precision is confined to one instruction's sum.
//!
//! The same tiling runs with [`GemmEngine::Emulated`]: the operands are rounded to the OCP
//! format by the exact cast of `cube.rs` (a no-op for values on the grid, which the tests then
//! show) and multiplied in f32 by plain code. That runs on every cubecl runtime (wgpu on lavapipe
//! in CI) and tests everything but the MMA instruction and its register layout: the amax, the
//! shifts, the staging of strided and transposed views, the edges of partial tiles and the
//! scaling of the result. The register layout is cubecl's (`MmaDefinition::position_of_nth`),
//! whose own tests cover it on CUDA.
//!
//! A block of 128 units (four planes of 32) computes a 64 x 64 tile of the output, in steps of
//! 32 along K: the block stages A's 64 x 32 and B's 32 x 64 slices in shared memory (already in
//! the FP8 format), then each plane multiplies its 32 x 32 quarter as 2 x 4 MMAs of 16 x 8.

use burn::tensor::{DType, TensorMetadata};
use burn_cubecl::ops::numeric::empty_device;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::CubeRuntime;
use cubecl::features::MmaConfig;
use cubecl::ir::MatrixIdent;
use cubecl::prelude::*;
use cubecl::{e4m3, e5m2};

use super::cube::{bias_from_amax, cast_one, max_over_workgroup, ABS_MASK, INF_BITS};
use crate::format::Fp8Format;

/// Output rows and columns of one block.
const BM: usize = 64;
const BN: usize = 64;
/// The K step: one MMA's depth.
const BK: usize = 32;
/// Units of a block: four planes of 32 (the MMA's register layout is CUDA's, for 32 lanes).
const UNITS: u32 = 128;
const PLANE: u32 = 32;
/// Each plane's square of the block.
const QUARTER: usize = 32;
/// The MMA's shape.
const MMA_M: usize = 16;
const MMA_N: usize = 8;
/// Accumulators per unit: 32 x 32 outputs of a plane over its 32 lanes.
const ACC: usize = 32;
/// A's (and B's) slice of one K step, elements, and how many each unit stages.
const SLICE: u32 = (BM * BK) as u32;
const PER_UNIT: u32 = SLICE / UNITS;

/// Whether `FP8_GPU_GEMM` ([`super::GPU_GEMM_ENV`]) asks for the f32 GEMM, read once (an
/// unknown value means the default, with a warning; the trainer rejects it before anything runs).
pub fn gpu_gemm_f32() -> bool {
    static F32: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *F32.get_or_init(|| {
        super::gpu_gemm_f32_from_env().unwrap_or_else(|e| {
            log::warn!("{}: {e}; using the default", super::GPU_GEMM_ENV);
            false
        })
    })
}

/// How [`fp8_gemm`] multiplies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GemmEngine {
    /// The FP8 tensor cores (cubecl's manual MMA), where the device offers the operands' MMA.
    Mma,
    /// The same tiling with f32 products, on any cubecl runtime: for tests.
    Emulated,
}

/// Whether the device runs `mma.sync` m16n8k32 for these two OCP formats into f32.
pub fn mma_supported<R: CubeRuntime>(
    client: &ComputeClient<R>,
    a: Fp8Format,
    b: Fp8Format,
) -> bool {
    let (Some(a), Some(b)) = (ocp_type(a), ocp_type(b)) else {
        return false;
    };
    client.features().matmul.mma.contains(&MmaConfig {
        a_type: a,
        b_type: b,
        cd_type: f32::as_type_native_unchecked().storage_type(),
        m: MMA_M as u32,
        n: MMA_N as u32,
        k: BK as u32,
    })
}

/// The hardware's storage type of an OCP format; `None` for the FNUZ family.
fn ocp_type(format: Fp8Format) -> Option<StorageType> {
    match format {
        Fp8Format::E4M3Fn => Some(e4m3::as_type_native_unchecked().storage_type()),
        Fp8Format::E5M2 => Some(e5m2::as_type_native_unchecked().storage_type()),
        Fp8Format::E4M3Fnuz | Fp8Format::E5M2Fnuz => None,
    }
}

/// `lhs [m, k] @ rhs [k, n]` for operands on the grids of `formats` (the casts' output), on
/// `engine`; either operand may be a strided view (a transposed weight, `X^T`). `None` where this
/// GEMM does not apply and the caller multiplies in f32: an FNUZ format, a dtype other than f32,
/// an empty or oversized product, or (for [`GemmEngine::Mma`]) a device without the MMA.
///
/// An operand whose amax is not finite (a cast that passed its input on unchanged) makes every
/// output NaN.
pub fn fp8_gemm<R: CubeRuntime>(
    lhs: CubeTensor<R>,
    rhs: CubeTensor<R>,
    formats: (Fp8Format, Fp8Format),
    engine: GemmEngine,
) -> Option<CubeTensor<R>> {
    let (fa, fb) = formats;
    ocp_type(fa)?;
    ocp_type(fb)?;
    if lhs.dtype() != DType::F32 || rhs.dtype() != DType::F32 {
        return None;
    }
    let (ls, rs) = (lhs.shape(), rhs.shape());
    if ls.num_dims() != 2 || rs.num_dims() != 2 {
        return None;
    }
    let (m, k, n) = (ls[0], ls[1], rs[1]);
    assert_eq!(rs[0], k, "FP8 GEMM: [{m}, {k}] @ [{}, {n}]", rs[0]);
    let fits = |x: usize| x > 0 && x <= u32::MAX as usize;
    let strides_fit = lhs
        .meta
        .strides()
        .iter()
        .chain(rhs.meta.strides().iter())
        .all(|&s| s <= u32::MAX as usize);
    if !(fits(m * k) && fits(k * n) && fits(m * n) && strides_fit) {
        return None;
    }
    let client = lhs.client.clone();
    if engine == GemmEngine::Mma && !mma_supported::<R>(&client, fa, fb) {
        return None;
    }

    // Both operands' amax, as f32 bits in slots 0 and 1.
    let stats = client.create_from_slice(&[0u8; 8]);
    let stats_arg = || unsafe { ArrayArg::from_raw_parts(stats.clone(), 2) };
    for (slot, t) in [(0usize, &lhs), (1, &rhs)] {
        let (rows, cols) = (t.shape()[0], t.shape()[1]);
        let strides = t.meta.strides();
        let units = (rows * cols).div_ceil(UNITS as usize).min(4096) as u32;
        // SAFETY: the kernel reads `t` at `r * strides[0] + c * strides[1]` for r < rows and
        // c < cols (inside the view), and `stats` at `slot` < 2.
        unsafe {
            strided_amax_kernel::launch_unchecked::<R>(
                &client,
                CubeCount::new_1d(units),
                CubeDim::new_1d(UNITS),
                t.clone().into_array_arg(),
                stats_arg(),
                rows as u32,
                cols as u32,
                strides[0] as u32,
                strides[1] as u32,
                slot,
            );
        }
    }

    let out = empty_device::<R, f32>(client.clone(), lhs.device.clone(), [m, n].into());
    let (la, lb) = (lhs.meta.strides().clone(), rhs.meta.strides().clone());
    let count = CubeCount::Static(n.div_ceil(BN) as u32, m.div_ceil(BM) as u32, 1);
    let dim = CubeDim::new_1d(UNITS);
    let dims = GemmDims {
        m: m as u32,
        k: k as u32,
        n: n as u32,
        a_rs: la[0] as u32,
        a_cs: la[1] as u32,
        b_rs: lb[0] as u32,
        b_cs: lb[1] as u32,
    };
    macro_rules! launch {
        ($a:ty, $b:ty, $emulate:expr) => {
            // SAFETY: every read of `lhs` and `rhs` is at an index the kernel clamps into its
            // view (row < m, column < k or n), `out` ([m, n], contiguous) is written below m x n,
            // and `stats` is read at slots 0 and 1.
            unsafe {
                fp8_gemm_kernel::launch_unchecked::<$a, $b, R>(
                    &client,
                    count,
                    dim,
                    lhs.into_array_arg(),
                    rhs.into_array_arg(),
                    out.clone().into_array_arg(),
                    stats_arg(),
                    dims.m,
                    dims.k,
                    dims.n,
                    dims.a_rs,
                    dims.a_cs,
                    dims.b_rs,
                    dims.b_cs,
                    FormatArgs::of(fa).launch(),
                    FormatArgs::of(fb).launch(),
                    $emulate,
                )
            }
        };
    }
    match (engine, fa, fb) {
        (GemmEngine::Emulated, ..) => launch!(f32, f32, true),
        (GemmEngine::Mma, Fp8Format::E4M3Fn, Fp8Format::E4M3Fn) => launch!(e4m3, e4m3, false),
        (GemmEngine::Mma, Fp8Format::E5M2, Fp8Format::E4M3Fn) => launch!(e5m2, e4m3, false),
        (GemmEngine::Mma, Fp8Format::E4M3Fn, Fp8Format::E5M2) => launch!(e4m3, e5m2, false),
        (GemmEngine::Mma, ..) => launch!(e5m2, e5m2, false),
    }
    Some(out)
}

/// The sizes and strides of one product (host side).
struct GemmDims {
    m: u32,
    k: u32,
    n: u32,
    a_rs: u32,
    a_cs: u32,
    b_rs: u32,
    b_cs: u32,
}

/// What the kernel needs of an operand's format: its max as f32 bits (for the shift), and for
/// the emulated rounding its smallest normal exponent (biased as f32's) and mantissa bits.
struct FormatArgs {
    max_bits: u32,
    emin_biased: u32,
    mantissa_bits: u32,
}

impl FormatArgs {
    fn of(format: Fp8Format) -> Self {
        Self {
            max_bits: format.max().to_bits(),
            emin_biased: (format.min_normal_exp() + 127) as u32,
            mantissa_bits: format.mantissa_bits(),
        }
    }

    fn launch<R: Runtime>(self) -> FormatLaunch<R> {
        FormatLaunch::new(self.max_bits, self.emin_biased, self.mantissa_bits)
    }
}

/// [`FormatArgs`] on the device.
#[derive(CubeType, CubeLaunch, Clone, Copy)]
pub struct Format {
    max_bits: u32,
    emin_biased: u32,
    mantissa_bits: u32,
}

/// max |x| as f32 bits over a strided `rows x cols` view, atomically into `stats[slot]`.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn strided_amax_kernel(
    input: &Array<f32>,
    stats: &mut Array<Atomic<u32>>,
    rows: u32,
    cols: u32,
    row_stride: u32,
    col_stride: u32,
    #[comptime] slot: usize,
) {
    let n = (rows * cols) as usize;
    let stride = CUBE_COUNT * CUBE_DIM as usize;
    let mut m = 0u32;
    let mut i = ABSOLUTE_POS;
    while i < n {
        let r = i as u32 / cols;
        let c = i as u32 % cols;
        let x = input[(r * row_stride + c * col_stride) as usize];
        m = max(m, u32::reinterpret(x) & ABS_MASK);
        i += stride;
    }
    max_over_workgroup(m, stats, slot);
}

/// 2^e for a small integer `e`, from the exponent field.
#[cube]
fn pow2(e: i32) -> f32 {
    f32::reinterpret(u32::cast_from(127i32 + e) << 23)
}

/// One output block: see the module's documentation. `A` and `B` are the operands' FP8 types
/// (f32 with `emulate`).
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn fp8_gemm_kernel<A: Scalar, B: Scalar>(
    lhs: &Array<f32>,
    rhs: &Array<f32>,
    out: &mut Array<f32>,
    stats: &Array<u32>,
    m: u32,
    k: u32,
    n: u32,
    a_rs: u32,
    a_cs: u32,
    b_rs: u32,
    b_cs: u32,
    fa: Format,
    fb: Format,
    #[comptime] emulate: bool,
) {
    let (amax_a, amax_b) = (stats[0], stats[1]);
    let non_finite = amax_a >= INF_BITS || amax_b >= INF_BITS;
    let shift_a = bias_from_amax(amax_a, fa.max_bits, 0i32);
    let shift_b = bias_from_amax(amax_b, fb.max_bits, 0i32);
    let (scale_a, scale_b) = (pow2(shift_a), pow2(shift_b));
    let unscale = pow2(-shift_a - shift_b);

    let m0 = CUBE_POS_Y * BM as u32;
    let n0 = CUBE_POS_X * BN as u32;
    let mut stage_a = SharedMemory::<A>::new(BM * BK);
    let mut stage_b = SharedMemory::<B>::new(BK * BN);
    let mut acc = Array::<f32>::new(ACC);
    #[unroll]
    for i in 0..ACC {
        acc[i] = 0.0;
    }

    let mut k0 = 0u32;
    while k0 < k {
        // Stage A's [64, 32] and B's [32, 64] slices, zero outside the matrices.
        #[unroll]
        for j in 0..PER_UNIT {
            let e = UNIT_POS + j * UNITS;
            let (r, c) = (e / BK as u32, e % BK as u32);
            let (row, col) = (m0 + r, k0 + c);
            let inside = row < m && col < k;
            let x = lhs[select(inside, row * a_rs + col * a_cs, 0u32) as usize];
            let x = select(inside, x, 0.0f32);
            stage_a[e as usize] = to_format::<A>(x, scale_a, fa, emulate);

            let (r, c) = (e / BN as u32, e % BN as u32);
            let (row, col) = (k0 + r, n0 + c);
            let inside = row < k && col < n;
            let x = rhs[select(inside, row * b_rs + col * b_cs, 0u32) as usize];
            let x = select(inside, x, 0.0f32);
            stage_b[e as usize] = to_format::<B>(x, scale_b, fb, emulate);
        }
        sync_cube();
        if emulate {
            emulated_step::<A, B>(&stage_a, &stage_b, &mut acc);
        } else {
            mma_step::<A, B>(&stage_a, &stage_b, &mut acc);
        }
        sync_cube();
        k0 += BK as u32;
    }

    let nan = f32::reinterpret(0x7fc0_0000u32);
    let plane = UNIT_POS / PLANE;
    let lane = UNIT_POS % PLANE;
    let qm = m0 + (plane / 2) * QUARTER as u32;
    let qn = n0 + (plane % 2) * QUARTER as u32;
    if emulate {
        // Lane l holds column l of its plane's quarter, rows 0..32.
        #[unroll]
        for r in 0..ACC {
            let (row, col) = (qm + r as u32, qn + lane);
            if row < m && col < n {
                out[(row * n + col) as usize] = select(non_finite, nan, acc[r] * unscale);
            }
        }
    } else {
        let def = cmma::MmaDefinition::<A, B, f32>::new(MMA_M, MMA_N, BK);
        let per_lane = def.elems_per_lane(MatrixIdent::Accumulator);
        #[unroll]
        for t in 0..8usize {
            let (mi, ni) = (t / 4, t % 4);
            #[unroll]
            for e in 0..per_lane {
                let (r, c) = def.position_of_nth(lane, e as u32, MatrixIdent::Accumulator);
                let row = qm + (mi * MMA_M) as u32 + r;
                let col = qn + (ni * MMA_N) as u32 + c;
                if row < m && col < n {
                    let v = acc[t * per_lane + e] * unscale;
                    out[(row * n + col) as usize] = select(non_finite, nan, v);
                }
            }
        }
    }
}

/// `x * scale` in the operand's type: the hardware's conversion (round to nearest, saturating;
/// exact for values on the grid), or with `emulate` the exact cast of `cube.rs` to the format.
#[cube]
fn to_format<T: Scalar>(x: f32, scale: f32, f: Format, #[comptime] emulate: bool) -> T {
    if emulate {
        let y = cast_one(
            u32::reinterpret(x),
            scale,
            1.0f32,
            f.max_bits,
            f.emin_biased,
            f.mantissa_bits,
        );
        T::cast_from(y)
    } else {
        T::cast_from(x * scale)
    }
}

/// One K step with f32 products: lane l of plane p adds column l of p's quarter, per row.
#[cube]
fn emulated_step<A: Scalar, B: Scalar>(
    stage_a: &SharedMemory<A>,
    stage_b: &SharedMemory<B>,
    acc: &mut Array<f32>,
) {
    let plane = UNIT_POS / PLANE;
    let lane = UNIT_POS % PLANE;
    let qr = (plane / 2) as usize * QUARTER;
    let qc = (plane % 2) as usize * QUARTER + lane as usize;
    #[unroll]
    for r in 0..ACC {
        let mut sum = 0.0f32;
        for kk in 0..BK {
            sum +=
                f32::cast_from(stage_a[(qr + r) * BK + kk]) * f32::cast_from(stage_b[kk * BN + qc]);
        }
        acc[r] += sum;
    }
}

/// One K step on the tensor cores: each plane's quarter as 2 x 4 MMAs of 16 x 8 x 32, each from
/// a zero accumulator, its result added to `acc` in f32.
#[cube]
fn mma_step<A: Scalar, B: Scalar>(
    stage_a: &SharedMemory<A>,
    stage_b: &SharedMemory<B>,
    acc: &mut Array<f32>,
) {
    let def = cmma::MmaDefinition::<A, B, f32>::new(MMA_M, MMA_N, BK);
    let lane = UNIT_POS_PLANE;
    let plane = UNIT_POS / PLANE;
    let qr = (plane / 2) * QUARTER as u32;
    let qc = (plane % 2) * QUARTER as u32;

    let vs_a = def.vector_size(MatrixIdent::A);
    let size!(NA) = vs_a;
    let count_a = def.vectors_per_lane(MatrixIdent::A);
    let vs_b = def.vector_size(MatrixIdent::B);
    let size!(NB) = vs_b;
    let count_b = def.vectors_per_lane(MatrixIdent::B);
    let vs_c = def.vector_size(MatrixIdent::Accumulator);
    let size!(NC) = vs_c;
    let count_c = def.vectors_per_lane(MatrixIdent::Accumulator);
    let per_lane = def.elems_per_lane(MatrixIdent::Accumulator);

    let mut zero = Array::<Vector<f32, NC>>::new(count_c);
    #[unroll]
    for i in 0..count_c {
        zero[i] = Vector::empty().fill(0.0f32);
    }

    #[unroll]
    for mi in 0..2usize {
        let mut regs_a = Array::<Vector<A, NA>>::new(count_a);
        #[unroll]
        for i in 0..count_a {
            let mut reg = Vector::empty();
            #[unroll]
            for j in 0..vs_a {
                let (r, c) = def.position_of_nth(lane, (i * vs_a + j) as u32, MatrixIdent::A);
                reg[j] = stage_a[((qr + (mi * MMA_M) as u32 + r) * BK as u32 + c) as usize];
            }
            regs_a[i] = reg;
        }
        #[unroll]
        for ni in 0..4usize {
            let mut regs_b = Array::<Vector<B, NB>>::new(count_b);
            #[unroll]
            for i in 0..count_b {
                let mut reg = Vector::empty();
                #[unroll]
                for j in 0..vs_b {
                    let (r, c) = def.position_of_nth(lane, (i * vs_b + j) as u32, MatrixIdent::B);
                    reg[j] = stage_b[(r * BN as u32 + qc + (ni * MMA_N) as u32 + c) as usize];
                }
                regs_b[i] = reg;
            }
            let d = def.execute(&regs_a, &regs_b, &zero);
            let t = mi * 4 + ni;
            #[unroll]
            for i in 0..count_c {
                let v = d[i];
                #[unroll]
                for j in 0..vs_c {
                    acc[t * per_lane + i * vs_c + j] += v[j];
                }
            }
        }
    }
}
