//! Per-tensor amax and scaled fake quantization on a backend's own tensors.
//!
//! [`Fp8Kernels`] is the one thing a backend needs to sit under [`crate::Fp8`]. Its default method
//! is a correct generic fallback (read the tensor to the host, run the CPU kernel, write it back);
//! flex and ndarray override it with a direct kernel over the tensor's memory, and Burn's cubecl backends
//! (wgpu with feature `wgpu`, CUDA with feature `cuda`) with a device kernel that keeps amax and
//! bias on the GPU (on CUDA only where `FP8_CUDA_KERNEL=device` asks for it: see `cube.rs`). Any other backend opts in with
//! `impl Fp8Kernels for MyBackend {}`.

pub mod bf16_gemm;
pub mod cpu;
#[cfg(any(feature = "wgpu", feature = "cuda"))]
mod cube;
mod flex;
mod ndarray;
#[cfg(any(feature = "wgpu", feature = "cuda"))]
pub use cube::CUDA_KERNEL_ENV;
#[cfg(any(feature = "wgpu", feature = "cuda"))]
pub mod mma;

/// The environment variable that keeps the named layers' GEMMs on a GPU with FP8 MMA in f32
/// (`f32`) instead of on the tensor cores (`auto`, or unset), for comparison; read by builds with
/// feature `fp8-mma` (`mma.rs`), as `FP8_CPU_GEMM` is on the CPU.
pub const GPU_GEMM_ENV: &str = "FP8_GPU_GEMM";

/// Whether [`GPU_GEMM_ENV`] asks for the f32 GEMM, or why its value is not understood.
pub fn gpu_gemm_f32_from_env() -> Result<bool, String> {
    match std::env::var(GPU_GEMM_ENV).unwrap_or_default().as_str() {
        "" | "auto" => Ok(false),
        "f32" => Ok(true),
        other => Err(format!(
            "{other:?} is not one of \"auto\", \"f32\" (unset: \"auto\")"
        )),
    }
}

use burn::tensor::backend::Backend;
use burn::tensor::ops::{FloatTensor, IntTensor};
use burn::tensor::{DType, ElementConversion, FloatDType, Shape, TensorData, TensorMetadata};

use crate::format::Fp8Format;
use crate::scaling::BiasRule;
use crate::stored::Fp8Weight;
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

    /// [`Self::fp8_quantize`] for a tensor that goes only into [`Self::matmul`] (the operands of
    /// a named FP8 layer's GEMMs): the same values, in whatever form this backend multiplies
    /// FP8 operands fastest. flex on a CPU with AVX512_BF16 returns them as bf16, which its
    /// `matmul` multiplies with `vdpbf16ps` into f32 (`bf16_gemm.rs`); the default is
    /// `fp8_quantize` (f32 values on the FP8 grid).
    fn fp8_quantize_operand(
        tensor: FloatTensor<Self>,
        format: Fp8Format,
        rule: BiasRule,
        want_stats: bool,
    ) -> QuantOutput<Self> {
        Self::fp8_quantize(tensor, format, rule, want_stats)
    }

    /// The tensor's values rounded to bfloat16 (round to nearest even), as f32 values: the
    /// `bf16` precision's cast where an inner backend's own ops multiply (anonymous layers).
    /// The default reads the tensor to the host and back.
    fn bf16_round(tensor: FloatTensor<Self>) -> FloatTensor<Self> {
        round_on_host::<Self>(tensor)
    }

    /// [`Self::bf16_round`] for an operand only [`Self::matmul`] reads (the named layers'
    /// GEMMs): flex on a CPU with AVX512_BF16 returns a bf16 tensor. The default is
    /// `bf16_round`.
    fn bf16_operand(tensor: FloatTensor<Self>) -> FloatTensor<Self> {
        Self::bf16_round(tensor)
    }

    /// The tensor's absolute maximum, read to the host (a NaN or infinity shows as such): what a
    /// data-parallel peer passes to its [`crate::AmaxReducer`] before casting with the peers'
    /// bias. The default is `B`'s own `max_abs`.
    fn fp8_amax(tensor: FloatTensor<Self>) -> f32 {
        let max = Self::float_max_abs(tensor);
        burn::tensor::Tensor::<Self, 1>::from_primitive(burn::tensor::TensorPrimitive::Float(
            Self::float_reshape(max, Shape::new([1])),
        ))
        .into_scalar()
        .elem::<f32>()
    }

    /// A tensor of zeros: what `Fp8<B>`'s `float_zeros` returns, and the buffer its embedding
    /// backward sums rows into. The default is `B`'s own `float_zeros`; flex overrides it
    /// (its own allocates a zeroed buffer, then copies it into an aligned one: for the [V, C]
    /// embedding gradient and the [B, T, V] buffer of the cross-entropy's backward, a second
    /// allocation and a full copy every step).
    fn zeros(shape: Shape, device: &Self::Device, dtype: FloatDType) -> FloatTensor<Self> {
        Self::float_zeros(shape, device, dtype)
    }

    /// A matrix product: what `Fp8<B>`'s `float_matmul` and the GEMMs of named FP8 layers
    /// compute, f32 out whatever form [`Self::fp8_quantize_operand`] gave the operands. The
    /// default is `B`'s own; flex overrides the 2-D case (the same GEMM call as flex's, into a
    /// buffer that is neither zeroed first nor copied after; bf16 operands on `bf16_gemm`).
    fn matmul(lhs: FloatTensor<Self>, rhs: FloatTensor<Self>) -> FloatTensor<Self> {
        Self::float_matmul(lhs, rhs)
    }

    /// [`Self::matmul`] of two FP8 operands: `lhs` and `rhs` on the grids of `formats` (in that
    /// order), as the casts of a named FP8 layer's GEMM made them. The default is
    /// [`Self::matmul`]; Burn's cubecl backends built with feature `fp8-mma` multiply them on
    /// FP8 tensor cores where the device has them and the formats are OCP's (`mma.rs`).
    fn fp8_matmul(
        lhs: FloatTensor<Self>,
        rhs: FloatTensor<Self>,
        formats: (Fp8Format, Fp8Format),
    ) -> FloatTensor<Self> {
        let _ = formats;
        Self::matmul(lhs, rhs)
    }

    /// `lhs @ W` (`lhs @ W^T` when `transpose`) for an FP8-stored weight `W` (`[d_input,
    /// d_output]`; [`crate::Fp8Weight`]), `lhs` 2-D as [`Self::fp8_quantize_operand`] gave it:
    /// the same bits as [`Self::matmul`] of `lhs` and the weight's cast. The default decodes
    /// the weight into an f32 tensor for the one product (in the stored layout, viewed as the
    /// cast weight is); flex multiplies the codes themselves (`bf16_gemm::gemm_codes`).
    fn matmul_stored(
        lhs: FloatTensor<Self>,
        weight: &Fp8Weight,
        transpose: bool,
    ) -> FloatTensor<Self> {
        let device = Self::float_device(&lhs);
        let w = decoded::<Self>(weight, &device);
        let w = if transpose {
            Self::float_swap_dims(w, 0, 1)
        } else {
            w
        };
        Self::matmul(lhs, w)
    }
}

/// An FP8-stored weight's values as an f32 `[d_input, d_output]` tensor on `device` (a
/// transposed view of the stored `[d_output, d_input]` where it is stored so).
pub fn decoded<B: Backend>(weight: &Fp8Weight, device: &B::Device) -> FloatTensor<B> {
    let data = TensorData::new(weight.decode(), Shape::from(weight.stored_dims().to_vec()));
    let w = B::float_from_data(data, device);
    if weight.transposed() {
        B::float_swap_dims(w, 0, 1)
    } else {
        w
    }
}

/// [`linear`] with an FP8-stored weight: `x [..., in] @ W (+ bias)`, `x` cast.
pub fn linear_stored<B: Fp8Kernels>(
    x: FloatTensor<B>,
    weight: &Fp8Weight,
    bias: Option<FloatTensor<B>>,
) -> FloatTensor<B> {
    let shape = x.shape();
    let out = weight.in_out()[1];
    let y = B::matmul_stored(rows::<B>(x), weight, false);
    let y = match bias {
        Some(bias) => B::float_add(y, B::float_reshape(bias, Shape::new([1, out]))),
        None => y,
    };
    B::float_reshape(y, last_dim(&shape, out))
}

/// dX of [`linear_stored`]: `dY @ W^T`, in dY's leading shape.
pub fn linear_x_backward_stored<B: Fp8Kernels>(
    weight: &Fp8Weight,
    output_grad: FloatTensor<B>,
) -> FloatTensor<B> {
    let shape = output_grad.shape();
    let d_in = weight.in_out()[0];
    let dx = B::matmul_stored(rows::<B>(output_grad), weight, true);
    B::float_reshape(dx, last_dim(&shape, d_in))
}

/// `x [..., in] @ weight [in, out] (+ bias [out])` as one 2-D product over all rows: the linear
/// layer of named FP8 layers (and, in f32, of the model's projections without one).
///
/// `formats` are x's and W's FP8 formats when they are FP8 operands ([`Fp8Kernels::fp8_matmul`]).
pub fn linear<B: Fp8Kernels>(
    x: FloatTensor<B>,
    weight: FloatTensor<B>,
    bias: Option<FloatTensor<B>>,
    formats: Option<(Fp8Format, Fp8Format)>,
) -> FloatTensor<B> {
    let shape = x.shape();
    let out = weight.shape()[1];
    let y = product::<B>(rows::<B>(x), weight, formats);
    let y = match bias {
        Some(bias) => B::float_add(y, B::float_reshape(bias, Shape::new([1, out]))),
        None => y,
    };
    B::float_reshape(y, last_dim(&shape, out))
}

/// dX of [`linear`]: `dY @ W^T`, in dY's leading shape (`formats`: dY's and W's).
pub fn linear_x_backward<B: Fp8Kernels>(
    weight: FloatTensor<B>,
    output_grad: FloatTensor<B>,
    formats: Option<(Fp8Format, Fp8Format)>,
) -> FloatTensor<B> {
    let shape = output_grad.shape();
    let d_in = weight.shape()[0];
    let w_t = B::float_swap_dims(weight, 0, 1);
    let dx = product::<B>(rows::<B>(output_grad), w_t, formats);
    B::float_reshape(dx, last_dim(&shape, d_in))
}

/// dW of [`linear`]: `X^T @ dY` over all rows (`formats`: X's and dY's).
pub fn linear_weight_backward<B: Fp8Kernels>(
    x: FloatTensor<B>,
    output_grad: FloatTensor<B>,
    formats: Option<(Fp8Format, Fp8Format)>,
) -> FloatTensor<B> {
    let x_t = B::float_swap_dims(rows::<B>(x), 0, 1);
    product::<B>(x_t, rows::<B>(output_grad), formats)
}

/// [`Fp8Kernels::fp8_matmul`] for FP8 operands, else [`Fp8Kernels::matmul`].
fn product<B: Fp8Kernels>(
    lhs: FloatTensor<B>,
    rhs: FloatTensor<B>,
    formats: Option<(Fp8Format, Fp8Format)>,
) -> FloatTensor<B> {
    match formats {
        Some(formats) => B::fp8_matmul(lhs, rhs, formats),
        None => B::matmul(lhs, rhs),
    }
}

/// `[d0, ..., dk, n] -> [d0 * ... * dk, n]` (a view where the tensor is contiguous).
fn rows<B: Fp8Kernels>(t: FloatTensor<B>) -> FloatTensor<B> {
    let shape = t.shape();
    let dims = shape.num_dims();
    if dims == 2 {
        return t;
    }
    let cols = shape[dims - 1];
    let rows = shape.num_elements() / cols.max(1);
    B::float_reshape(t, Shape::new([rows, cols]))
}

/// `shape` with its last dimension replaced by `n`.
fn last_dim(shape: &Shape, n: usize) -> Shape {
    let mut dims = shape.to_vec();
    *dims.last_mut().expect("at least 1-D") = n;
    Shape::from(dims)
}

/// `Fp8<B>`'s `float_zeros`.
pub fn zeros<B: Fp8Kernels>(shape: Shape, device: &B::Device, dtype: FloatDType) -> FloatTensor<B> {
    B::zeros(shape, device, dtype)
}

/// `Fp8<B>`'s `embedding_backward`: Burn's default (every output-gradient row added into the
/// row of its token, in order) over [`Fp8Kernels::zeros`].
pub fn embedding_backward<B: Fp8Kernels>(
    weights: FloatTensor<B>,
    output_grad: FloatTensor<B>,
    indices: IntTensor<B>,
) -> FloatTensor<B> {
    let [batch, seq] = indices.shape().dims();
    let [n_embeddings, d_model] = weights.shape().dims();
    let device = B::float_device(&weights);
    let dtype = output_grad.dtype().into();
    let indices = B::int_reshape(indices, Shape::new([batch * seq]));
    let output_grad = B::float_reshape(output_grad, Shape::new([batch * seq, d_model]));
    let grad = B::zeros(Shape::new([n_embeddings, d_model]), &device, dtype);
    B::float_select_add(grad, 0, indices, output_grad)
}

/// Generic fallback of [`Fp8Kernels::bf16_round`]: one host round trip.
pub fn round_on_host<B: Backend>(tensor: FloatTensor<B>) -> FloatTensor<B> {
    let device = B::float_device(&tensor);
    let shape = tensor.shape();
    let dtype = tensor.dtype();
    let data = burn::tensor::read_sync(B::float_into_data(tensor))
        .expect("reading a tensor to the host for bf16 rounding");
    let src: Vec<f32> = data
        .convert::<f32>()
        .into_vec()
        .expect("a converted tensor holds f32");
    let mut dst = vec![0.0f32; src.len()];
    cpu::round_bf16(&src, &mut dst);
    let mut out = TensorData::new(dst, shape);
    if dtype != DType::F32 {
        out = out.convert_dtype(dtype);
    }
    B::float_from_data(out, &device)
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
