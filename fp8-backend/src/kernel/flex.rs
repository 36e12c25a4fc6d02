//! The direct CPU kernel for Burn's flex backend: amax and cast over the tensor's own memory.

use burn::backend::flex::{Flex, FlexTensor};
use burn::tensor::ops::{FloatTensor, FloatTensorOps};
use burn::tensor::{DType, FloatDType, Shape, TensorData, TensorMetadata};

use super::cpu::{self, HostQuant};
use super::{quantize_on_host, Fp8Kernels, QuantOutput};
use crate::format::Fp8Format;
use crate::scaling::BiasRule;

/// burn-flex's threshold (in multiply-adds) above which its GEMMs run on all threads.
const PARALLEL_THRESHOLD: usize = 192 * 192 * 192;

impl Fp8Kernels for Flex {
    fn matmul(lhs: FloatTensor<Self>, rhs: FloatTensor<Self>) -> FloatTensor<Self> {
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
        if tensor.dtype() != DType::F32 {
            // f16 / bf16 / f64: the generic path converts through f32.
            return quantize_on_host::<Self>(tensor, format, rule, want_stats);
        }
        let shape = tensor.shape();
        // Transposed or sliced views are made contiguous once; the common case reads in place.
        let contiguous;
        let src = match tensor.as_slice::<f32>() {
            Some(s) => s,
            None => {
                contiguous = tensor.to_contiguous();
                contiguous
                    .as_slice::<f32>()
                    .expect("a contiguous f32 tensor")
            }
        };
        let mut dst = vec![0.0f32; src.len()];
        match cpu::quantize_slice(src, &mut dst, format, rule, want_stats) {
            HostQuant::NonFinite(amax) => QuantOutput::NonFinite(tensor, amax),
            HostQuant::Done(stats) => {
                let out = FlexTensor::from_data(TensorData::new(dst, shape));
                QuantOutput::Quantized(out, stats)
            }
        }
    }
}
