//! The GPU FP8 GEMM (`fp8_backend::kernel::mma`) against an f64 product of the same FP8
//! operands and against the backend's f32 GEMM, on the three GEMMs of an FP8 linear layer
//! (E4 x E4, E5 x E4^T, E4^T x E5), odd shapes and partial tiles, strided views, subnormal
//! operands, and a non-finite operand.
//!
//! On wgpu (lavapipe in CI) the emulated engine runs: the same tiling, staging, shifts, format
//! conversion and scaling, with f32 products in place of the MMA. On CUDA both engines run; the
//! tensor-core one only on a GPU with FP8 MMA (sm_89 and later), and otherwise the test says it
//! skipped it (`scripts/device-check` runs these on an H100 or H200).
#![cfg(any(feature = "wgpu", feature = "cuda"))]

use burn::tensor::ops::{FloatTensor, FloatTensorOps};
use burn::tensor::{Shape, TensorData};
use burn_cubecl::{CubeBackend, CubeRuntime};
use fp8_backend::kernel::mma::{fp8_gemm, mma_supported, GemmEngine};
use fp8_backend::Fp8Format;

use crate::common::{download, q, values};

/// u, the unit roundoff of f32.
const U: f64 = 1.0 / (1u64 << 24) as f64;

/// The products of two FP8 values (4-bit significands at most) are exact in f32, so an f32 GEMM
/// of FP8 operands errs only in its sums: |err| <= gamma_K * sum_k |a_k b_k| with gamma_K =
/// K u / (1 - K u) for any order of summation (Higham, "Accuracy and Stability of Numerical
/// Algorithms", 2nd ed., (3.5)). This bound holds for the emulated engine and for the backend's
/// own f32 GEMM against the f64 product, so the two differ by at most twice it.
fn gamma(k: usize) -> f64 {
    let ku = k as f64 * U;
    ku / (1.0 - ku)
}

/// The tensor-core engine: each MMA sums 32 exact products inside the tensor core, whose adder
/// keeps fewer bits than f32 on Hopper (DeepSeek-V3, section 3.3.2, measured about 14 bits for
/// its FP8 GEMMs); those sums then go into f32 accumulators. Allowed: 2^-12 of sum_k |a_k b_k|
/// per output on top of gamma_K, a bound with a bit of margin on that figure, not a derivation.
#[cfg(feature = "cuda")]
const TENSOR_CORE_SUM: f64 = 1.0 / 4096.0;

type Cube<R> = CubeBackend<R, f32, i32, u32>;

/// One GEMM of a linear layer: operands' formats and logical shapes, and which operand is a
/// transposed view of a contiguous buffer.
struct Case {
    name: &'static str,
    formats: (Fp8Format, Fp8Format),
    m: usize,
    k: usize,
    n: usize,
    lhs_transposed: bool,
    rhs_transposed: bool,
}

/// FP8 operands as the casts make them (AMAX scaling, margin 0 or 3), over 12 binades so that
/// the small ones land on subnormals or zero.
fn operand(n: usize, seed: u32, format: Fp8Format, margin: i32, scale: f32) -> Vec<f32> {
    q(&values(n, seed, scale), format, margin)
}

/// `[rows, cols]` on the device: contiguous, or (`transposed`) a swapped view of a contiguous
/// `[cols, rows]` buffer holding the same logical matrix.
fn matrix<R: CubeRuntime>(
    logical: &[f32],
    rows: usize,
    cols: usize,
    transposed: bool,
) -> FloatTensor<Cube<R>> {
    let device = Default::default();
    if !transposed {
        let data = TensorData::new(logical.to_vec(), Shape::new([rows, cols]));
        return Cube::<R>::float_from_data(data, &device);
    }
    let mut stored = vec![0f32; rows * cols];
    for r in 0..rows {
        for c in 0..cols {
            stored[c * rows + r] = logical[r * cols + c];
        }
    }
    let data = TensorData::new(stored, Shape::new([cols, rows]));
    Cube::<R>::float_swap_dims(Cube::<R>::float_from_data(data, &device), 0, 1)
}

/// For each output, the f64 product and sum_k |a_k b_k|.
fn reference(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<(f64, f64)> {
    let mut out = Vec::with_capacity(m * n);
    for i in 0..m {
        for j in 0..n {
            let (mut exact, mut magnitude) = (0f64, 0f64);
            for l in 0..k {
                let p = f64::from(a[i * k + l]) * f64::from(b[l * n + j]);
                exact += p;
                magnitude += p.abs();
            }
            out.push((exact, magnitude));
        }
    }
    out
}

/// Largest |got - want| / sum_k |a_k b_k| over the outputs; where the sum is 0 the two must be
/// equal.
fn worst(what: &str, got: &[f32], want: &[f64], reference: &[(f64, f64)]) -> f64 {
    let mut worst = 0f64;
    for (i, ((g, w), (_, magnitude))) in got.iter().zip(want).zip(reference).enumerate() {
        let g = f64::from(*g);
        assert!(g.is_finite(), "{what}: [{i}] is {g}");
        let err = (g - w).abs();
        if *magnitude == 0.0 {
            assert_eq!(err, 0.0, "{what}: [{i}] {g} for an all-zero sum");
        } else {
            worst = worst.max(err / magnitude);
        }
    }
    worst
}

fn cases() -> Vec<Case> {
    use Fp8Format::{E4M3Fn as E4, E5M2 as E5};
    let case = |name, formats, (m, k, n), lhs_transposed, rhs_transposed| Case {
        name,
        formats,
        m,
        k,
        n,
        lhs_transposed,
        rhs_transposed,
    };
    vec![
        // y = x W: W contiguous [in, out], or the transposed view of a stored [out, in].
        case("forward", (E4, E4), (70, 45, 33), false, false),
        case("forward, W^T view", (E4, E4), (130, 300, 65), false, true),
        case("forward, one row", (E4, E4), (1, 32, 8), false, false),
        // dX = dY W^T: the weight as a transposed view.
        case("dX", (E5, E4), (128, 96, 200), false, true),
        case("dX, partial tiles", (E5, E4), (65, 33, 63), false, true),
        // dW = X^T dY: X^T as a transposed view of [rows, in].
        case("dW", (E4, E5), (96, 257, 72), true, false),
        case("dW, E5 x E5 shapes", (E5, E5), (40, 64, 24), true, false),
    ]
}

/// Every case on `engine` within `bound(k)` of the f64 product, and within twice gamma_K plus
/// that of the backend's f32 GEMM; returns false (having said why) when the engine does not
/// run here.
fn engine_matches_f64_and_f32<R: CubeRuntime>(engine: GemmEngine, extra: f64) -> bool {
    let client = R::client(&Default::default());
    for (seed, case) in cases().iter().enumerate() {
        let (fa, fb) = case.formats;
        if engine == GemmEngine::Mma && !mma_supported::<R>(&client, fa, fb) {
            println!(
                "SKIPPED: no FP8 MMA for {fa:?} x {fb:?} on this device (needs CUDA sm_89 or later)"
            );
            return false;
        }
        let (m, k, n) = (case.m, case.k, case.n);
        let seed = seed as u32 * 7;
        // Margins and magnitudes vary by case; the E5 gradients are small, as gradients are.
        let a = operand(m * k, seed + 1, fa, (seed % 4) as i32, 3.0);
        let b = operand(k * n, seed + 2, fb, 3 - (seed % 4) as i32, 1e-3);
        let lhs = matrix::<R>(&a, m, k, case.lhs_transposed);
        let rhs = matrix::<R>(&b, k, n, case.rhs_transposed);

        let got = fp8_gemm::<R>(lhs.clone(), rhs.clone(), case.formats, engine)
            .unwrap_or_else(|| panic!("{}: the FP8 GEMM declined", case.name));
        assert_eq!(
            got.meta.shape().to_vec(),
            vec![m, n],
            "{}: shape",
            case.name
        );
        let got = download::<Cube<R>>(got);
        let f32_path = download::<Cube<R>>(Cube::<R>::float_matmul(lhs, rhs));

        let reference = reference(&a, &b, m, k, n);
        let exact: Vec<f64> = reference.iter().map(|(e, _)| *e).collect();
        let bound = gamma(k) + extra;
        let err = worst(case.name, &got, &exact, &reference);
        println!(
            "{} [{m}, {k}] x [{k}, {n}] {fa:?} x {fb:?}: {err:.2e} of sum |ab| (bound {bound:.2e})",
            case.name
        );
        assert!(err <= bound, "{}: {err:e} > {bound:e}", case.name);
        let f32_err = worst("f32 GEMM", &f32_path, &exact, &reference);
        assert!(f32_err <= gamma(k), "{}: f32 GEMM {f32_err:e}", case.name);
        let f32_path: Vec<f64> = f32_path.iter().map(|x| f64::from(*x)).collect();
        let apart = worst(case.name, &got, &f32_path, &reference);
        assert!(
            apart <= gamma(k) + bound,
            "{}: {apart:e} of sum |ab| from the f32 GEMM",
            case.name
        );
    }
    true
}

/// A NaN or infinity in an operand (a cast that passed its input on unchanged) makes every
/// output NaN; and the FNUZ formats, which the hardware's do not hold, are declined.
fn non_finite_and_fnuz<R: CubeRuntime>(engine: GemmEngine) {
    if !runs_here::<R>(engine) {
        return;
    }
    let (m, k, n) = (5, 40, 9);
    let mut a = operand(m * k, 11, Fp8Format::E4M3Fn, 0, 1.0);
    let b = operand(k * n, 12, Fp8Format::E4M3Fn, 0, 1.0);
    a[17] = f32::INFINITY;
    let lhs = matrix::<R>(&a, m, k, false);
    let rhs = matrix::<R>(&b, k, n, false);
    let formats = (Fp8Format::E4M3Fn, Fp8Format::E4M3Fn);
    let out = fp8_gemm::<R>(lhs.clone(), rhs.clone(), formats, engine).expect("OCP formats");
    let out = download::<Cube<R>>(out);
    assert!(out.iter().all(|x| x.is_nan()), "{out:?}");

    let fnuz = (Fp8Format::E4M3Fnuz, Fp8Format::E4M3Fnuz);
    assert!(fp8_gemm::<R>(lhs.clone(), rhs.clone(), fnuz, engine).is_none());
    let mixed = (Fp8Format::E5M2Fnuz, Fp8Format::E4M3Fn);
    assert!(fp8_gemm::<R>(lhs, rhs, mixed, engine).is_none());
}

/// Whether `engine` runs on this device (E4M3 x E4M3); says so when it does not.
fn runs_here<R: CubeRuntime>(engine: GemmEngine) -> bool {
    let client = R::client(&Default::default());
    let here = engine == GemmEngine::Emulated
        || mma_supported::<R>(&client, Fp8Format::E4M3Fn, Fp8Format::E4M3Fn);
    if !here {
        println!("SKIPPED: no FP8 MMA on this device (needs CUDA sm_89 or later)");
    }
    here
}

/// All-zero operands (amax 0: shift 31) give exact zeros.
fn zero_operand<R: CubeRuntime>(engine: GemmEngine) {
    if !runs_here::<R>(engine) {
        return;
    }
    let (m, k, n) = (17, 64, 20);
    let a = vec![0f32; m * k];
    let b = operand(k * n, 3, Fp8Format::E4M3Fn, 0, 1.0);
    let formats = (Fp8Format::E4M3Fn, Fp8Format::E4M3Fn);
    let out = fp8_gemm::<R>(
        matrix::<R>(&a, m, k, false),
        matrix::<R>(&b, k, n, false),
        formats,
        engine,
    )
    .expect("OCP formats");
    assert!(download::<Cube<R>>(out).iter().all(|&x| x == 0.0));
}

#[cfg(feature = "wgpu")]
mod wgpu {
    use burn::backend::wgpu::WgpuRuntime;
    use fp8_backend::kernel::mma::{mma_supported, GemmEngine};
    use fp8_backend::Fp8Format;

    #[test]
    fn emulated_engine_matches_f64_and_the_f32_gemm() {
        assert!(super::engine_matches_f64_and_f32::<WgpuRuntime>(
            GemmEngine::Emulated,
            0.0
        ));
    }

    #[test]
    fn emulated_engine_non_finite_and_fnuz() {
        super::non_finite_and_fnuz::<WgpuRuntime>(GemmEngine::Emulated);
        super::zero_operand::<WgpuRuntime>(GemmEngine::Emulated);
    }

    /// wgpu has no FP8 MMA: the tensor-core engine declines there, so the layers multiply in f32.
    #[test]
    fn wgpu_has_no_fp8_mma() {
        let client = <WgpuRuntime as cubecl::Runtime>::client(&Default::default());
        assert!(!mma_supported::<WgpuRuntime>(
            &client,
            Fp8Format::E4M3Fn,
            Fp8Format::E4M3Fn
        ));
    }
}

#[cfg(feature = "cuda")]
mod cuda {
    use cubecl::cuda::CudaRuntime;
    use fp8_backend::kernel::mma::GemmEngine;

    #[test]
    fn emulated_engine_matches_f64_and_the_f32_gemm() {
        assert!(super::engine_matches_f64_and_f32::<CudaRuntime>(
            GemmEngine::Emulated,
            0.0
        ));
    }

    #[test]
    fn tensor_core_engine_matches_f64_and_the_f32_gemm() {
        super::engine_matches_f64_and_f32::<CudaRuntime>(GemmEngine::Mma, super::TENSOR_CORE_SUM);
    }

    #[test]
    fn tensor_core_engine_non_finite_and_fnuz() {
        super::non_finite_and_fnuz::<CudaRuntime>(GemmEngine::Mma);
        super::zero_operand::<CudaRuntime>(GemmEngine::Mma);
    }
}
