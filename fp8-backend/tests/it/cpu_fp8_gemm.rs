//! The CPU FP8 GEMM through the kernels the named layers call (`Fp8Kernels` on flex): the cast
//! writes bf16 operands with the FP8 values, and `matmul` multiplies them into what today's f32
//! path computes from the same operands, within the f32 accumulation bound, on the linear layer's
//! training shapes and in the layouts its three GEMMs use.

use burn::backend::Flex;
use burn::tensor::ops::{FloatTensor, FloatTensorOps};
use burn::tensor::{DType, Tensor, TensorData, TensorMetadata, TensorPrimitive};
use fp8_backend::kernel::bf16_gemm::{self, CpuGemm};
use fp8_backend::{BiasRule, Fp8Format, Fp8Kernels, QuantOutput};

use crate::common::values;

/// Unit roundoff of f32.
const U: f64 = 1.0 / (1u64 << 24) as f64;

/// gamma(k) = k u / (1 - k u): an f32 sum of k exact products, in any order, lies within
/// gamma(k) * sum |a b| of the exact sum (Higham, "Accuracy and Stability of Numerical
/// Algorithms", eq. 3.4). The bf16 GEMM and the f32 GEMM of the same FP8 operands both do (their
/// products are exact: at most 4 significant bits each), so they differ by at most twice that.
fn gamma(k: usize) -> f64 {
    k as f64 * U / (1.0 - k as f64 * U)
}

fn primitive(v: Vec<f32>, shape: [usize; 2]) -> FloatTensor<Flex> {
    Tensor::<Flex, 2>::from_data(TensorData::new(v, shape), &Default::default())
        .into_primitive()
        .tensor()
}

fn host(t: FloatTensor<Flex>) -> Vec<f32> {
    Tensor::<Flex, 2>::from_primitive(TensorPrimitive::Float(t))
        .into_data()
        .convert::<f32>()
        .to_vec::<f32>()
        .unwrap()
}

fn quantized(out: QuantOutput<Flex>) -> FloatTensor<Flex> {
    match out {
        QuantOutput::Quantized(t, _) => t,
        QuantOutput::NonFinite(..) => panic!("finite operands"),
    }
}

/// Both casts of one operand: for the bf16 GEMM (`fp8_quantize_operand`) and for the f32 one.
fn casts(
    v: Vec<f32>,
    shape: [usize; 2],
    format: Fp8Format,
) -> (FloatTensor<Flex>, FloatTensor<Flex>) {
    let rule = BiasRule::Amax { margin: 0 };
    let t = primitive(v, shape);
    let op = quantized(Flex::fp8_quantize_operand(t.clone(), format, rule, false));
    let f = quantized(Flex::fp8_quantize(t, format, rule, false));
    (op, f)
}

#[test]
fn the_bf16_gemm_equals_the_f32_path_within_the_accumulation_bound_on_training_shapes() {
    if CpuGemm::selected() != CpuGemm::Bf16 {
        eprintln!("skipped: FP8 GEMMs run in f32 here (no AVX512_BF16, or FP8_CPU_GEMM=f32)");
        return;
    }
    // GPT-2 124M's MLP (1024 tokens, 768 -> 3072): forward X W, dX = dY W^T, dW = X^T dY.
    let (rows, d_in, d_out) = (1024, 768, 3072);
    let (x16, x32) = casts(
        values(rows * d_in, 1, 0.5),
        [rows, d_in],
        Fp8Format::E4M3Fnuz,
    );
    let (w16, w32) = casts(
        values(d_in * d_out, 2, 0.02),
        [d_in, d_out],
        Fp8Format::E4M3Fnuz,
    );
    let (g16, g32) = casts(
        values(rows * d_out, 3, 1e-4),
        [rows, d_out],
        Fp8Format::E5M2Fnuz,
    );
    for t in [&x16, &w16, &g16] {
        assert_eq!(t.dtype(), DType::BF16, "the operand cast writes bf16");
    }
    let t = |x: &FloatTensor<Flex>| Flex::float_swap_dims(x.clone(), 0, 1);
    let abs = |x: &FloatTensor<Flex>| Flex::float_abs(x.clone());
    let cases = [
        (
            "forward X W",
            (x16.clone(), w16.clone()),
            (x32.clone(), w32.clone()),
            d_in,
        ),
        (
            "dX = dY W^T",
            (g16.clone(), t(&w16)),
            (g32.clone(), t(&w32)),
            d_out,
        ),
        (
            "dW = X^T dY",
            (t(&x16), g16.clone()),
            (t(&x32), g32.clone()),
            rows,
        ),
    ];
    for (name, (a16, b16), (a32, b32), k) in cases {
        let ours = host(Flex::matmul(a16, b16));
        let f32_path = host(Flex::matmul(a32.clone(), b32.clone()));
        // sum |a b| per element, itself an f32 sum of k exact products: within gamma(k) of the
        // true sum, so scaled up by (1 + gamma(k)) it bounds it from above.
        let abs_sum = host(Flex::matmul(abs(&a32), abs(&b32)));
        assert_eq!(ours.len(), f32_path.len(), "{name}");
        let bound = 2.0 * gamma(k) * (1.0 + gamma(k));
        let mut worst = 0.0f64;
        for (i, ((&o, &f), &s)) in ours.iter().zip(&f32_path).zip(&abs_sum).enumerate() {
            let diff = (f64::from(o) - f64::from(f)).abs();
            assert!(
                diff <= bound * f64::from(s),
                "{name}: element {i}: bf16 GEMM {o:e}, f32 GEMM {f:e}, bound {:e}",
                bound * f64::from(s)
            );
            if s > 0.0 {
                worst = worst.max(diff / f64::from(s));
            }
        }
        eprintln!("{name}: worst |bf16 - f32| / sum|ab| {worst:.2e} (bound {bound:.2e})");
    }
}

/// A bf16 operand beside an f32 one (an operand passed on unchanged after a non-finite amax)
/// multiplies in f32, exactly as two f32 operands.
#[test]
fn a_bf16_operand_beside_an_f32_one_multiplies_in_f32() {
    if CpuGemm::selected() != CpuGemm::Bf16 {
        eprintln!("skipped: FP8 GEMMs run in f32 here");
        return;
    }
    let (a16, a32) = casts(values(40 * 30, 4, 1.0), [40, 30], Fp8Format::E4M3Fn);
    let b = primitive(values(30 * 20, 5, 1.0), [30, 20]);
    let mixed = host(Flex::matmul(a16, b.clone()));
    let plain = host(Flex::matmul(a32, b));
    assert_eq!(
        mixed.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
        plain.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
    );
}

/// Where the CPU has no AVX512_BF16 the operand cast is today's f32 one.
#[test]
fn without_the_instruction_the_operands_stay_f32() {
    if bf16_gemm::supported() {
        eprintln!("skipped: this CPU has AVX512_BF16 (the fallback is tested through FP8_CPU_GEMM=f32 in the trainer's parity tests)");
        return;
    }
    let (op, _) = casts(values(64, 6, 1.0), [8, 8], Fp8Format::E4M3Fn);
    assert_eq!(op.dtype(), DType::F32);
}

/// `FP8_CPU_GEMM=f32` selects today's f32 path: run in a child process of this test binary
/// (the choice is read once per process), which checks that the operand cast writes f32.
#[test]
fn fp8_cpu_gemm_f32_selects_the_f32_path() {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "cpu_fp8_gemm::child_operands_are_f32_under_fp8_cpu_gemm_f32",
            "--ignored",
            "--nocapture",
        ])
        .env(bf16_gemm::CPU_GEMM_ENV, "f32")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The child of [`fp8_cpu_gemm_f32_selects_the_f32_path`].
#[test]
#[ignore = "run by fp8_cpu_gemm_f32_selects_the_f32_path with FP8_CPU_GEMM=f32"]
fn child_operands_are_f32_under_fp8_cpu_gemm_f32() {
    assert_eq!(std::env::var(bf16_gemm::CPU_GEMM_ENV).as_deref(), Ok("f32"));
    assert_eq!(CpuGemm::selected(), CpuGemm::F32);
    let (op, _) = casts(values(64, 7, 1.0), [8, 8], Fp8Format::E4M3Fn);
    assert_eq!(op.dtype(), DType::F32);
}

/// Values other than `bf16`, `f32`, `auto` are refused by name.
#[test]
fn unknown_fp8_cpu_gemm_values_are_refused() {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "cpu_fp8_gemm::child_reads_an_unknown_value",
            "--ignored",
        ])
        .env(bf16_gemm::CPU_GEMM_ENV, "fp16")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The child of [`unknown_fp8_cpu_gemm_values_are_refused`].
#[test]
#[ignore = "run by unknown_fp8_cpu_gemm_values_are_refused with FP8_CPU_GEMM=fp16"]
fn child_reads_an_unknown_value() {
    let err = CpuGemm::from_env().unwrap_err();
    assert!(
        err.contains("\"fp16\"") && err.contains("\"bf16\""),
        "{err}"
    );
}

/// A transposed view is cast over its storage and keeps its layout (no transposed copy); the
/// values read through the view are those of the contiguous copy's cast, for both casts and
/// both output types; a sliced view (not dense) still casts right.
#[test]
fn casts_of_transposed_and_sliced_views_equal_casts_of_their_copies() {
    let rule = BiasRule::Amax { margin: 0 };
    let base = primitive(values(24 * 10, 8, 1.0), [24, 10]);
    let views = [
        ("transposed", Flex::float_swap_dims(base.clone(), 0, 1)),
        (
            "sliced",
            Flex::float_slice(
                base.clone(),
                &[
                    burn::tensor::Slice::new(2, Some(20), 1),
                    burn::tensor::Slice::new(1, Some(9), 1),
                ],
            ),
        ),
    ];
    for (name, view) in views {
        let copy = primitive(host(view.clone()), view.shape().dims());
        let pairs = [
            (
                quantized(Flex::fp8_quantize(
                    view.clone(),
                    Fp8Format::E4M3Fnuz,
                    rule,
                    false,
                )),
                quantized(Flex::fp8_quantize(
                    copy.clone(),
                    Fp8Format::E4M3Fnuz,
                    rule,
                    false,
                )),
            ),
            (
                quantized(Flex::fp8_quantize_operand(
                    view.clone(),
                    Fp8Format::E4M3Fnuz,
                    rule,
                    false,
                )),
                quantized(Flex::fp8_quantize_operand(
                    copy.clone(),
                    Fp8Format::E4M3Fnuz,
                    rule,
                    false,
                )),
            ),
            (
                Flex::bf16_round(view.clone()),
                Flex::bf16_round(copy.clone()),
            ),
            (
                Flex::bf16_operand(view.clone()),
                Flex::bf16_operand(copy.clone()),
            ),
        ];
        for (i, (of_view, of_copy)) in pairs.into_iter().enumerate() {
            assert_eq!(of_view.shape(), of_copy.shape(), "{name} cast {i}");
            assert_eq!(host(of_view), host(of_copy), "{name} cast {i}");
        }
    }
}
