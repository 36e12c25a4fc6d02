//! The direct CPU kernel for Burn's flex backend: amax and cast over the tensor's own memory.

use burn::backend::flex::{Flex, FlexTensor, Layout};
use burn::tensor::ops::{FloatTensor, FloatTensorOps};
use burn::tensor::{bf16, DType, FloatDType, Shape, TensorData};

use super::bf16_gemm::{self, CodesRef, CpuGemm, MatRef};
use super::cpu::{self, CastOut, HostQuant};
use super::{quantize_on_host, Fp8Kernels, QuantOutput};
use crate::format::Fp8Format;
use crate::scaling::BiasRule;
use crate::stored::Fp8Weight;

/// burn-flex's threshold (in multiply-adds) above which its GEMMs run on all threads.
const PARALLEL_THRESHOLD: usize = 192 * 192 * 192;

impl Fp8Kernels for Flex {
    fn matmul(lhs: FloatTensor<Self>, rhs: FloatTensor<Self>) -> FloatTensor<Self> {
        let (lhs, rhs) = match (lhs.dtype(), rhs.dtype()) {
            (DType::BF16, DType::BF16) => return matmul_bf16(lhs, rhs),
            // One operand was passed on unchanged (a non-finite amax): multiply in f32; a bf16
            // FP8 operand widens exactly.
            (DType::BF16, DType::F32) => (Self::float_cast(lhs, FloatDType::F32), rhs),
            (DType::F32, DType::BF16) => (lhs, Self::float_cast(rhs, FloatDType::F32)),
            _ => (lhs, rhs),
        };
        let (l, r) = (lhs.layout(), rhs.layout());
        let plain = lhs.dtype() == DType::F32
            && rhs.dtype() == DType::F32
            && l.num_dims() == 2
            && r.num_dims() == 2;
        let (m, k, n) = (l.shape()[0], l.shape()[1], r.shape()[1]);
        if !plain || k == 0 || m == 0 || n == 0 {
            return Self::float_matmul(lhs, rhs);
        }
        assert_eq!(r.shape()[0], k, "matmul: inner dimensions must match");
        let parallelism = if m.saturating_mul(n).saturating_mul(k) >= PARALLEL_THRESHOLD {
            gemm::Parallelism::Rayon(0)
        } else {
            gemm::Parallelism::None
        };
        let (l_rs, l_cs) = (l.strides()[0], l.strides()[1]);
        let (r_rs, r_cs) = (r.strides()[0], r.strides()[1]);
        let lhs_data = lhs.storage::<f32>();
        let rhs_data = rhs.storage::<f32>();
        let mut out: Vec<f32> = Vec::with_capacity(m * n);
        // SAFETY: the pointers address the two views as their layouts describe (offset and
        // strides within their buffers); `out` has room for m * n row-major f32 values, which
        // the call writes all of (read_dst = false: it reads none), before `set_len`. The call
        // is burn-flex 0.21's own 2-D one (`matmul_2d_strided`), so the results are the same.
        unsafe {
            gemm::gemm(
                m,
                n,
                k,
                out.as_mut_ptr(),
                1,
                n as isize,
                false,
                lhs_data.as_ptr().add(l.start_offset()),
                l_cs,
                l_rs,
                rhs_data.as_ptr().add(r.start_offset()),
                r_cs,
                r_rs,
                0.0,
                1.0,
                false,
                false,
                false,
                parallelism,
            );
            out.set_len(m * n);
        }
        FlexTensor::from_data(TensorData::new(out, [m, n]))
    }

    fn matmul_stored(
        lhs: FloatTensor<Self>,
        weight: &Fp8Weight,
        transpose: bool,
    ) -> FloatTensor<Self> {
        let l = lhs.layout();
        if lhs.dtype() != DType::BF16 || l.num_dims() != 2 || !bf16_gemm::supported() {
            // f32 operands (`FP8_CPU_GEMM=f32`, or an operand passed on unchanged): the
            // decoded weight, multiplied as the cast weight is.
            let lhs = match lhs.dtype() {
                DType::BF16 => Self::float_cast(lhs, FloatDType::F32),
                _ => lhs,
            };
            let w = super::decoded::<Self>(weight, &Default::default());
            let w = if transpose {
                Self::float_swap_dims(w, 0, 1)
            } else {
                w
            };
            return <Self as Fp8Kernels>::matmul(lhs, w);
        }
        let (m, k) = (l.shape()[0], l.shape()[1]);
        // The stored matrix S (row-major) is W, or W^T when `transposed`; the operand is W, or
        // W^T when `transpose`: S itself or its transposed view.
        let [s_rows, s_cols] = weight.stored_dims();
        let codes = MatRef::row_major(weight.codes(), s_rows, s_cols);
        let b = if weight.transposed() == transpose {
            codes
        } else {
            codes.t()
        };
        let table = weight.bf16_table();
        let a = MatRef::new(
            bf16_bits(lhs.storage::<bf16>()),
            l.start_offset(),
            m,
            k,
            l.strides()[0],
            l.strides()[1],
        );
        let n = if transpose {
            weight.in_out()[0]
        } else {
            weight.in_out()[1]
        };
        let mut out = vec![0.0f32; m * n];
        bf16_gemm::gemm_codes(a, CodesRef::new(b, &table), &mut out);
        FlexTensor::from_data(TensorData::new(out, [m, n]))
    }

    fn zeros(shape: Shape, device: &Self::Device, dtype: FloatDType) -> FloatTensor<Self> {
        match dtype {
            // A zeroed f32 vector is its own aligned buffer (no second allocation, no copy),
            // and its pages are only touched when written.
            FloatDType::F32 => {
                let n = shape.num_elements();
                FlexTensor::from_data(TensorData::new(vec![0.0f32; n], shape))
            }
            _ => Self::float_zeros(shape, device, dtype),
        }
    }

    fn fp8_quantize(
        tensor: FloatTensor<Self>,
        format: Fp8Format,
        rule: BiasRule,
        want_stats: bool,
    ) -> QuantOutput<Self> {
        quantize_as::<f32>(tensor, format, rule, want_stats)
    }

    fn bf16_round(tensor: FloatTensor<Self>) -> FloatTensor<Self> {
        round_as::<f32>(tensor)
    }

    fn bf16_operand(tensor: FloatTensor<Self>) -> FloatTensor<Self> {
        match CpuGemm::selected() {
            CpuGemm::Bf16 => round_as::<bf16>(tensor),
            CpuGemm::F32 => round_as::<f32>(tensor),
        }
    }

    fn fp8_quantize_operand(
        tensor: FloatTensor<Self>,
        format: Fp8Format,
        rule: BiasRule,
        want_stats: bool,
    ) -> QuantOutput<Self> {
        match CpuGemm::selected() {
            CpuGemm::Bf16 => quantize_as::<bf16>(tensor, format, rule, want_stats),
            CpuGemm::F32 => quantize_as::<f32>(tensor, format, rule, want_stats),
        }
    }
}

/// The `bf16` precision's cast of an f32 flex tensor, written as `D`.
fn round_as<D: CastOut + burn::tensor::Element + Default>(tensor: FlexTensor) -> FlexTensor {
    if tensor.dtype() != DType::F32 {
        return super::round_on_host::<Flex>(tensor);
    }
    elementwise(&tensor, cpu::round_bf16::<D>).0
}

/// Runs the element-wise `cast` of an f32 tensor's values into a new buffer of `D`, and returns
/// it as a tensor laid out as the input (over the storage in place where
/// [`elementwise_source`] allows, else over a contiguous copy), with what `cast` returned.
fn elementwise<D: burn::tensor::Element + Default, R>(
    tensor: &FlexTensor,
    cast: impl FnOnce(&[f32], &mut [D]) -> R,
) -> (FlexTensor, R) {
    let contiguous;
    let (src, layout) = match elementwise_source(tensor) {
        Some(found) => found,
        None => {
            contiguous = tensor.to_contiguous();
            let src = contiguous
                .as_slice::<f32>()
                .expect("a contiguous f32 tensor");
            (src, contiguous.layout().clone())
        }
    };
    let mut dst = vec![D::default(); src.len()];
    let out = cast(src, &mut dst);
    let n = dst.len();
    (
        FlexTensor::from_data(TensorData::new(dst, [n])).with_layout(layout),
        out,
    )
}

/// The f32 values an element-wise cast of `tensor` can run over in place, with the layout its
/// result keeps: the storage itself when the tensor is a permutation of a dense buffer of
/// exactly its elements (contiguous, or a transposed weight: the Llama family's `[out, in]`
/// projections and the LM head, multiplied as transposed views), so that no transposed copy is
/// made. `None` for other views (slices, broadcasts, flips), which are made contiguous first.
fn elementwise_source(tensor: &FlexTensor) -> Option<(&[f32], Layout)> {
    let layout = tensor.layout();
    let storage = tensor.storage::<f32>();
    let n = layout.num_elements();
    if layout.start_offset() != 0 || storage.len() != n {
        return None;
    }
    // Strides sorted from the innermost must be the running products of their dimensions.
    let mut dims: Vec<(isize, usize)> = (layout.strides().iter().copied())
        .zip(layout.shape().iter().copied())
        .filter(|&(_, size)| size != 1)
        .collect();
    dims.sort_unstable();
    let mut expected = 1isize;
    for (stride, size) in dims {
        if stride != expected {
            return None;
        }
        expected *= size as isize;
    }
    Some((storage, layout.clone()))
}

/// A 2-D product of two bf16 operands (FP8 values) into f32 on the CPU FP8 GEMM; other ranks
/// (none of the named layers' GEMMs) widen to f32 and take flex's own.
fn matmul_bf16(lhs: FlexTensor, rhs: FlexTensor) -> FlexTensor {
    let (l, r) = (lhs.layout(), rhs.layout());
    if l.num_dims() != 2 || r.num_dims() != 2 || !bf16_gemm::supported() {
        let widen = |t| Flex::float_cast(t, FloatDType::F32);
        return Flex::float_matmul(widen(lhs), widen(rhs));
    }
    let (m, k, n) = (l.shape()[0], l.shape()[1], r.shape()[1]);
    assert_eq!(r.shape()[0], k, "matmul: inner dimensions must match");
    let a = MatRef::new(
        bf16_bits(lhs.storage::<bf16>()),
        l.start_offset(),
        m,
        k,
        l.strides()[0],
        l.strides()[1],
    );
    let b = MatRef::new(
        bf16_bits(rhs.storage::<bf16>()),
        r.start_offset(),
        k,
        n,
        r.strides()[0],
        r.strides()[1],
    );
    let mut out = vec![0.0f32; m * n];
    bf16_gemm::gemm(a, b, &mut out);
    FlexTensor::from_data(TensorData::new(out, [m, n]))
}

/// bf16 values as their bit patterns.
fn bf16_bits(values: &[bf16]) -> &[u16] {
    // SAFETY: `bf16` is `repr(transparent)` over `u16`: same size, alignment and validity.
    unsafe { std::slice::from_raw_parts(values.as_ptr().cast::<u16>(), values.len()) }
}

/// Amax, bias and cast of an f32 flex tensor, written as `D` (f32, or bf16 for the CPU FP8
/// GEMM).
fn quantize_as<D: CastOut + burn::tensor::Element + Default>(
    tensor: FlexTensor,
    format: Fp8Format,
    rule: BiasRule,
    want_stats: bool,
) -> QuantOutput<Flex> {
    if tensor.dtype() != DType::F32 {
        // f16 / bf16 / f64: the generic path converts through f32.
        return quantize_on_host::<Flex>(tensor, format, rule, want_stats);
    }
    let (out, result) = elementwise(&tensor, |src, dst: &mut [D]| {
        cpu::quantize_slice(src, dst, format, rule, want_stats)
    });
    match result {
        HostQuant::NonFinite(amax) => QuantOutput::NonFinite(tensor, amax),
        HostQuant::Done(stats) => QuantOutput::Quantized(out, stats),
    }
}
