//! The device kernels for Burn's cubecl backends (wgpu, and CUDA where `FP8_CUDA_KERNEL=device`
//! asks for them; the code is generic over the runtime).
//!
//! Two launches per tensor, and no host round trip unless statistics are asked for:
//!
//! 1. `amax_kernel` (FP8-AMAX, or when statistics are wanted): max |x| as f32 bits, reduced in
//!    each workgroup's shared memory and then with one atomic max per workgroup into a small
//!    device buffer. Bits, not floats: on non-negative floats their order is the numeric order,
//!    and NaNs sort above infinity, so a non-finite tensor shows in the amax.
//! 2. `cast_kernel`: every unit first recomputes the bias from that amax (a few integer ops,
//!    exactly `scaling::amax_bias`), then fake-quantizes its elements exactly like the CPU
//!    kernel's `CastParams::cast`. With statistics on it also counts underflows, non-zero inputs
//!    and saturations, reduced the same way as the amax.
//!
//! The amax and the bias stay on the device because reading them back would stall the queue at
//! every linear layer: the host would wait for the amax before it could launch the cast. The
//! price is that a non-finite amax is only known on the host when statistics are read back; in
//! the other case the cast kernel writes the input unchanged (the trait allows this).
//!
//! WGSL lets a compiler assume that no NaN or infinity occurs, so every test that must see them
//! (NaN passes through, infinity saturates, non-finite amax, statistics) works on bits, and the
//! rounding uses WGSL's `round` (ties to even by specification) rather than the 2^23 add/sub,
//! which a compiler free to reassociate could fold away.

use burn::tensor::ops::FloatTensor;
use burn::tensor::{DType, TensorMetadata};
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::{BoolElement, CubeBackend, CubeRuntime, FloatElement, IntElement};
use cubecl::prelude::*;

use super::{quantize_on_host, Fp8Kernels, QuantOutput, QuantStats};
use crate::format::Fp8Format;
use crate::scaling::{BiasRule, NonFiniteAmax};

/// Units per workgroup: a power of two (the shared-memory reductions halve it) and within
/// WebGPU's default limit of 256 invocations.
const WORKGROUP: u32 = 256;

/// At most this many workgroups; each unit then strides over the tensor. Enough to fill a GPU,
/// and it keeps the atomics on the stats buffer to a few thousand per launch.
const MAX_WORKGROUPS: u32 = 4096;

/// Slots of the per-call stats buffer (u32 each).
const AMAX: usize = 0;
const BIAS: usize = 1;
const NONZERO: usize = 2;
const UNDERFLOW: usize = 3;
const SATURATED: usize = 4;
const STATS_LEN: usize = 5;

const SIGN_BIT: u32 = 0x8000_0000;
pub(super) const ABS_MASK: u32 = 0x7fff_ffff;
/// Bits of +infinity; above it lie the NaNs.
pub(super) const INF_BITS: u32 = 0x7f80_0000;
const MANTISSA_MASK: u32 = 0x007f_ffff;

/// Largest |x| as bits over the first `n` elements, per unit over a grid-strided range, then per
/// workgroup, then one atomic max into `stats[AMAX]`.
#[cube(launch_unchecked)]
fn amax_kernel(input: &Array<f32>, stats: &mut Array<Atomic<u32>>, n: u32) {
    let n = n as usize;
    let stride = CUBE_COUNT * CUBE_DIM as usize;
    let mut m = 0u32;
    let mut i = ABSOLUTE_POS;
    while i < n {
        m = max(m, u32::reinterpret(input[i]) & ABS_MASK);
        i += stride;
    }

    max_over_workgroup(m, stats, AMAX);
}

/// The largest `value` of the workgroup's units (a power of two, at most [`WORKGROUP`]), reduced
/// in shared memory, then one atomic max into `stats[slot]`.
#[cube]
pub(super) fn max_over_workgroup(
    value: u32,
    stats: &mut Array<Atomic<u32>>,
    #[comptime] slot: usize,
) {
    let mut shared = SharedMemory::<u32>::new(WORKGROUP as usize);
    shared[UNIT_POS as usize] = value;
    sync_cube();
    let mut active = CUBE_DIM / 2;
    while active > 0 {
        if UNIT_POS < active {
            let other = shared[(UNIT_POS + active) as usize];
            shared[UNIT_POS as usize] = max(shared[UNIT_POS as usize], other);
        }
        sync_cube();
        active /= 2;
    }
    if UNIT_POS == 0 {
        stats[slot].fetch_max(shared[0]);
    }
}

/// `scaling::amax_bias` on the device: `clip(floor(log2(max / amax)) - margin, -31, 31)`, and 31
/// for a zero amax. `amax_bits` must be finite. floor(log2) comes from exponent fields: the
/// difference of the binary exponents, one less when amax's significand exceeds max's.
#[cube]
pub(super) fn bias_from_amax(amax_bits: u32, max_bits: u32, margin: i32) -> i32 {
    // f32 subnormals have no implicit bit: normalize them with the leading-zero count so that
    // their exponent and significand compare like any other (never reached in practice, since
    // their bias clips to 31, but it keeps the function exact).
    let is_normal = amax_bits > MANTISSA_MASK;
    let lz = i32::cast_from(amax_bits.leading_zeros());
    let exp_normal = i32::cast_from(amax_bits >> 23) - 127;
    // A subnormal's top bit is bit 31 - lz, worth 2^(31 - lz - 149).
    let exp_subnormal = -118i32 - lz;
    let exp_a = select(is_normal, exp_normal, exp_subnormal);
    // Shift a subnormal's top bit to bit 23, where the implicit bit of a normal sits.
    let shift = u32::cast_from(select(is_normal, 8i32, lz) - 8);
    let frac_a = (amax_bits << shift) & MANTISSA_MASK;

    let exp_max = i32::cast_from(max_bits >> 23) - 127;
    let frac_max = max_bits & MANTISSA_MASK;
    let k = exp_max - exp_a - select(frac_a > frac_max, 1i32, 0i32);
    // +-31 is `scaling::MAX_BIAS`.
    let bias = min(max(k - margin, -31i32), 31i32);
    select(amax_bits == 0, 31i32, bias)
}

/// Fake quantization of one f32 given as bits, scaled by 2^bias (`CastParams::cast`).
#[cube]
pub(super) fn cast_one(
    bits: u32,
    scale: f32,
    unscale: f32,
    max_bits: u32,
    emin_biased: u32,
    mantissa_bits: u32,
) -> f32 {
    let sign = bits & SIGN_BIT;
    let a = f32::reinterpret(bits & ABS_MASK) * scale;
    let a_bits = u32::reinterpret(a);
    // Spacing of the format around `a`: q = 2^(e - m), e = max(exponent(a), emin); q and 1/q are
    // built from bits, so `a * (1/q)` is exact and below 2^(m+1).
    let e = max(a_bits >> 23, emin_biased);
    let q = f32::reinterpret((e - mantissa_bits) << 23);
    let inv_q = f32::reinterpret((254 + mantissa_bits - e) << 23);
    let r = f32::round(a * inv_q) * q;
    // Saturate, infinity included (compared as bits: both sides are non-negative).
    let r = select(a_bits >= max_bits, f32::reinterpret(max_bits), r);
    let y = f32::reinterpret(u32::reinterpret(r) | sign) * unscale;
    // NaN stays NaN: the input itself is written.
    select((bits & ABS_MASK) > INF_BITS, f32::reinterpret(bits), y)
}

/// Sums `value` over the workgroup and adds the sum to `stats[slot]` with one atomic per
/// workgroup.
#[cube]
fn add_over_workgroup(
    value: u32,
    shared: &mut SharedMemory<u32>,
    stats: &mut Array<Atomic<u32>>,
    #[comptime] slot: usize,
) {
    sync_cube();
    shared[UNIT_POS as usize] = value;
    sync_cube();
    let mut active = CUBE_DIM / 2;
    while active > 0 {
        if UNIT_POS < active {
            let other = shared[(UNIT_POS + active) as usize];
            shared[UNIT_POS as usize] += other;
        }
        sync_cube();
        active /= 2;
    }
    if UNIT_POS == 0 {
        stats[slot].fetch_add(shared[0]);
    }
}

/// The bias (from `stats[AMAX]` or the constant), then the cast of every element; with `count`,
/// the statistics too. With `use_amax` and a non-finite amax the input is copied unchanged.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn cast_kernel(
    input: &Array<f32>,
    output: &mut Array<f32>,
    stats: &mut Array<Atomic<u32>>,
    n: u32,
    max_bits: u32,
    emin_biased: u32,
    mantissa_bits: u32,
    margin: i32,
    constant_bias: i32,
    #[comptime] use_amax: bool,
    #[comptime] count: bool,
) {
    let mut bias = constant_bias;
    let mut pass_through = false;
    if use_amax {
        let amax_bits = stats[AMAX].load();
        pass_through = amax_bits >= INF_BITS;
        bias = bias_from_amax(amax_bits, max_bits, margin);
    }
    if ABSOLUTE_POS == 0 {
        stats[BIAS].store(u32::reinterpret(bias));
    }
    // 2^bias and 2^-bias from their exponent fields (normal for |bias| <= 126, as on the CPU;
    // an amax bias is within +-31).
    let scale = f32::reinterpret(u32::cast_from(127i32 + bias) << 23);
    let unscale = f32::reinterpret(u32::cast_from(127i32 - bias) << 23);

    let n = n as usize;
    let stride = CUBE_COUNT * CUBE_DIM as usize;
    let mut nonzero = 0u32;
    let mut underflow = 0u32;
    let mut saturated = 0u32;
    let mut i = ABSOLUTE_POS;
    while i < n {
        let x = input[i];
        let bits = u32::reinterpret(x);
        let y = cast_one(bits, scale, unscale, max_bits, emin_biased, mantissa_bits);
        output[i] = select(pass_through, x, y);
        if count {
            // As the CPU kernel counts: non-zero in (NaN included), zero out; and
            // |x * 2^bias| > max, infinities included, NaN not.
            let abs_bits = bits & ABS_MASK;
            let is_nonzero = abs_bits != 0;
            let is_zero_out = (u32::reinterpret(y) & ABS_MASK) == 0;
            let scaled_bits = u32::reinterpret(f32::reinterpret(abs_bits) * scale);
            let is_saturated = abs_bits <= INF_BITS && scaled_bits > max_bits;
            nonzero += select(is_nonzero, 1u32, 0u32);
            underflow += select(is_nonzero && is_zero_out, 1u32, 0u32);
            saturated += select(is_saturated, 1u32, 0u32);
        }
        i += stride;
    }

    if count {
        let mut shared = SharedMemory::<u32>::new(WORKGROUP as usize);
        add_over_workgroup(nonzero, &mut shared, stats, NONZERO);
        add_over_workgroup(underflow, &mut shared, stats, UNDERFLOW);
        add_over_workgroup(saturated, &mut shared, stats, SATURATED);
    }
}

impl<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement> Fp8Kernels
    for CubeBackend<R, F, I, BT>
{
    fn fp8_quantize(
        tensor: FloatTensor<Self>,
        format: Fp8Format,
        rule: BiasRule,
        want_stats: bool,
    ) -> QuantOutput<Self> {
        let numel = tensor.shape().num_elements();
        // The kernels are f32 and count in u32; anything else (and the empty tensor, which no
        // launch covers) takes the host path, which is exact for every float dtype.
        if tensor.dtype() != DType::F32
            || numel == 0
            || numel > u32::MAX as usize
            || !device_kernel_on::<R>(&tensor.client)
        {
            return quantize_on_host::<Self>(tensor, format, rule, want_stats);
        }
        match quantize_on_device(tensor.clone(), format, rule, want_stats) {
            Ok((out, stats)) => QuantOutput::Quantized(out, stats),
            Err(NonFiniteAmax { amax }) => QuantOutput::NonFinite(tensor, amax),
        }
    }

    /// On FP8 tensor cores (`mma.rs`) with feature `fp8-mma`, where the device has them, the
    /// formats are OCP's and `FP8_GPU_GEMM` does not ask for `f32`; else the f32 GEMM.
    #[cfg(feature = "fp8-mma")]
    fn fp8_matmul(
        lhs: FloatTensor<Self>,
        rhs: FloatTensor<Self>,
        formats: (Fp8Format, Fp8Format),
    ) -> FloatTensor<Self> {
        use super::mma::{fp8_gemm, gpu_gemm_f32, GemmEngine};
        if !gpu_gemm_f32() {
            if let Some(out) = fp8_gemm(lhs.clone(), rhs.clone(), formats, GemmEngine::Mma) {
                return out;
            }
        }
        Self::matmul(lhs, rhs)
    }
}

/// The environment variable that puts CUDA on the device kernel (`device`) instead of the host
/// path.
pub const CUDA_KERNEL_ENV: &str = "FP8_CUDA_KERNEL";

/// Whether this runtime quantizes with the device kernel. Every runtime does except CUDA: on an
/// H200 (scripts/device-check, 2026-12-04) the kernel's statistics of the initial weights were
/// bit-identical to the CPU's, but a cuda FP8-AMAX dump-step was far from the independent
/// reference (logits 1.5 relative) and `eval` of one checkpoint differed from the CPU's by 4%.
/// (Those statistics cannot tell a cast that wrote only part of its output: amax and bias come
/// from the amax kernel, and the weights have no underflow or saturation to count.) The kernels
/// then took their length from the arrays' metadata and ran bounds-checked; they now take it as
/// a scalar and run unchecked, which changes nothing on wgpu (tests pass) and is untested on
/// CUDA. Until device-check passes with it, CUDA takes the host path (one round trip per cast:
/// exact, slower); `FP8_CUDA_KERNEL=device` selects the device kernel, for that check.
fn device_kernel_on<R: CubeRuntime>(client: &ComputeClient<R>) -> bool {
    static CUDA_DEVICE_KERNEL: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    R::name(client) != "cuda"
        || *CUDA_DEVICE_KERNEL
            .get_or_init(|| std::env::var(CUDA_KERNEL_ENV).is_ok_and(|v| v == "device"))
}

/// Launches the kernels on a non-empty f32 tensor and, with `want_stats`, reads the stats buffer
/// (the only way a non-finite amax can be known on the host).
fn quantize_on_device<R: CubeRuntime>(
    tensor: CubeTensor<R>,
    format: Fp8Format,
    rule: BiasRule,
    want_stats: bool,
) -> Result<(CubeTensor<R>, Option<QuantStats>), NonFiniteAmax> {
    // The kernels index the buffer linearly: transposed or sliced views are copied once.
    let input = into_contiguous(tensor);
    let client = input.client.clone();
    let numel = input.shape().num_elements();
    let output = empty_device::<R, f32>(client.clone(), input.device.clone(), input.shape());

    let stats = client.create_from_slice(&[0u8; STATS_LEN * 4]);
    let stats_arg = || unsafe { ArrayArg::from_raw_parts(stats.clone(), STATS_LEN) };
    let cube_dim = CubeDim::new_1d(WORKGROUP);
    let workgroups = (numel as u64).div_ceil(u64::from(WORKGROUP)) as u32;
    let cube_count = CubeCount::new_1d(workgroups.min(MAX_WORKGROUPS));

    // CSCALE needs no amax unless statistics are wanted (as on the CPU).
    let (use_amax, margin, constant_bias) = match rule {
        BiasRule::Amax { margin } => (true, margin, 0),
        BiasRule::Constant(bias) => (false, 0, bias),
    };
    let n = numel as u32;
    // SAFETY (both launches): the kernels index `input` and `output` (numel elements each) only
    // below `n` = numel, and `stats` (STATS_LEN words) only at its constant slots; they take no
    // length from the arrays' metadata, and are launched without bounds checks.
    if use_amax || want_stats {
        unsafe {
            amax_kernel::launch_unchecked::<R>(
                &client,
                cube_count.clone(),
                cube_dim,
                input.clone().into_array_arg(),
                stats_arg(),
                n,
            );
        }
    }
    unsafe {
        cast_kernel::launch_unchecked::<R>(
            &client,
            cube_count,
            cube_dim,
            input.into_array_arg(),
            output.clone().into_array_arg(),
            stats_arg(),
            n,
            format.max().to_bits(),
            (format.min_normal_exp() + 127) as u32,
            format.mantissa_bits(),
            margin,
            constant_bias,
            use_amax,
            want_stats,
        );
    }
    if !want_stats {
        return Ok((output, None));
    }

    // The one read back, and only with statistics on.
    let bytes = client
        .read_one(stats)
        .expect("reading the FP8 statistics back from the device");
    let words: Vec<u32> = bytes
        .chunks_exact(4)
        .map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]))
        .collect();
    let amax = f32::from_bits(words[AMAX]);
    if use_amax && !amax.is_finite() {
        return Err(NonFiniteAmax { amax });
    }
    let (nonzero, underflow, saturated) = (words[NONZERO], words[UNDERFLOW], words[SATURATED]);
    let stats = QuantStats {
        amax,
        bias: words[BIAS] as i32,
        underflow_frac: if nonzero == 0 {
            0.0
        } else {
            (f64::from(underflow) / f64::from(nonzero)) as f32
        },
        saturated_frac: (f64::from(saturated) / numel as f64) as f32,
        numel,
    };
    Ok((output, Some(stats)))
}
