//! Per-tensor amax and scaled fake quantization on a backend's own tensors.
//!
//! [`Fp8Kernels`] is the one thing a backend needs to sit under [`crate::Fp8`]. Its default method
//! is a correct generic fallback (read the tensor to the host, run the CPU kernel, write it back);
//! ndarray overrides it with a direct kernel over the tensor's memory, and Burn's cubecl backends
//! (wgpu with feature `wgpu`, CUDA with feature `cuda`) with a device kernel that keeps amax and
//! bias on the GPU. Any other backend opts in with
//! `impl Fp8Kernels for MyBackend {}`.

pub mod cpu;
mod ndarray;
#[cfg(any(feature = "wgpu", feature = "cuda"))]
mod wgpu;

use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{DType, TensorData, TensorMetadata};

use crate::format::Fp8Format;
use crate::scaling::BiasRule;
use cpu::HostQuant;

/// Figures about one quantized tensor, for `fp8_stats.csv`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QuantStats {
    /// max |x| over the tensor.
    pub amax: f32,
    /// The scaling bias applied (x is multiplied by 2^bias before the cast).
    pub bias: i32,
    /// Fraction of the non-zero inputs that became zero.
    pub underflow_frac: f32,
    /// Fraction of all inputs whose scaled magnitude exceeded the format's max.
    pub saturated_frac: f32,
    /// Number of elements.
    pub numel: usize,
}

/// The result of quantizing one tensor.
pub enum QuantOutput<B: Backend> {
    /// The fake-quantized tensor, with statistics when they were asked for.
    Quantized(FloatTensor<B>, Option<QuantStats>),
    /// The tensor's amax was not finite; the tensor comes back unchanged, no bias was derived.
    NonFinite(FloatTensor<B>, f32),
}

/// Backends whose float tensors can be fake-quantized to FP8 with a per-tensor scale.
pub trait Fp8Kernels: Backend {
    /// Computes the tensor's amax (when the rule or the statistics need it), the bias, and the
    /// tensor cast to `format` and back, scaled by 2^bias and unscaled. Bit-exact with
    /// [`crate::quantize_scaled`].
    ///
    /// A backend that cannot know on the host that the amax was non-finite without a device
    /// round trip may return `Quantized` with the input unchanged in that case (and statistics
    /// when asked for, whose amax then shows it).
    fn fp8_quantize(
        tensor: FloatTensor<Self>,
        format: Fp8Format,
        rule: BiasRule,
        want_stats: bool,
    ) -> QuantOutput<Self> {
        quantize_on_host::<Self>(tensor, format, rule, want_stats)
    }
}

/// Generic fallback: one host round trip per tensor through the CPU kernel.
pub fn quantize_on_host<B: Backend>(
    tensor: FloatTensor<B>,
    format: Fp8Format,
    rule: BiasRule,
    want_stats: bool,
) -> QuantOutput<B> {
    let device = B::float_device(&tensor);
    let shape = tensor.shape();
    let dtype = tensor.dtype();
    let data = burn::tensor::read_sync(B::float_into_data(tensor.clone()))
        .expect("reading a tensor to the host for FP8 quantization");
    let src: Vec<f32> = data
        .convert::<f32>()
        .into_vec()
        .expect("a converted tensor holds f32");
    let mut dst = vec![0.0f32; src.len()];
    match cpu::quantize_slice(&src, &mut dst, format, rule, want_stats) {
        HostQuant::NonFinite(amax) => QuantOutput::NonFinite(tensor, amax),
        HostQuant::Done(stats) => {
            let mut out = TensorData::new(dst, shape);
            if dtype != DType::F32 {
                out = out.convert_dtype(dtype);
            }
            QuantOutput::Quantized(B::float_from_data(out, &device), stats)
        }
    }
}
