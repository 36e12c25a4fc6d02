//! The model's ops as single passes with their own autodiff nodes, one file per op, each with
//! its forward, its backward node beside it (as burn-autodiff keeps them) and a test against
//! the op composed from Burn's: GPT-2's GELU, layer norm, causal softmax and causal
//! self-attention; the Llama family's RMSNorm, SwiGLU and rotary grouped-query attention; the
//! cross-entropy loss; [`vmath`] holds their vectorized inner loops.
//!
//! Composed from Burn's ops, each op is a chain of passes over its tensor, each pass allocating,
//! and autodiff keeps every intermediate for the backward. A profile of the training step (see
//! bench/README.md) put these passes, not the GEMMs, at the top of what was left after the
//! GEMMs. Each fused forward is one pass that keeps only what its backward needs, and each
//! backward one pass, in place over the incoming gradient where it can be. The arithmetic
//! follows PyTorch's formula for formula in f32; where it differs (a vectorized `exp`, f64
//! sums) only rounding changes, measured in each op's test.
//!
//! They run on the CPU backends (host slices, see [`crate::host`]) and, as cubecl kernels, on
//! the device backends ([`device`]: GELU, SwiGLU, layer norm, RMSNorm, the causal softmax and
//! the cross-entropy); elsewhere (and for the attentions on a device) each op's trait declines
//! with `Err(inputs)` and the caller composes the op from Burn's.

pub mod attention;
pub mod causal_softmax;
pub mod cross_entropy;
pub mod device;
pub mod gelu;
pub mod layer_norm;
pub mod rms_norm;
pub mod rotary_attention;
pub mod swiglu;
pub mod vmath;

use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::TensorMetadata;

use crate::host::from_host;

pub use attention::FusedAttention;
pub use causal_softmax::FusedCausalSoftmax;
pub use cross_entropy::FusedCrossEntropy;
pub use gelu::FusedGelu;
pub use layer_norm::FusedLayerNorm;
pub use rms_norm::FusedRmsNorm;
pub use rotary_attention::FusedRotaryAttention;
pub use swiglu::FusedSwiglu;

/// Elements per rayon task in the element-wise passes (small enough to spread over the
/// threads, large enough that a task costs more than its scheduling).
pub(crate) const CHUNK: usize = 16 * 1024;

/// `values` as a tensor of `like`'s shape on its device.
pub(crate) fn host_result<B: Backend>(values: Vec<f32>, like: &FloatTensor<B>) -> FloatTensor<B> {
    from_host::<B>(values, like.shape().to_vec(), &B::float_device(like))
}

/// What the ops' tests share: deterministic inputs, a weighted sum that gives every output
/// element its own upstream gradient, and the fused-vs-composed comparison.
#[cfg(test)]
pub(crate) mod test_util {
    use burn::backend::Autodiff;
    use burn::tensor::backend::Backend;
    use burn::tensor::ops::FloatTensor;
    use burn::tensor::{Tensor, TensorData, TensorPrimitive};
    use fp8_backend::Fp8;

    /// Fused against composed, both f32 in different orders (measured in these tests: at most
    /// 6.1e-7 relative to the largest element for GPT-2's ops, RMSNorm and SwiGLU; 3.4e-6 for
    /// the rotary attention's Q and K gradients, whose test scores are large and the softmax
    /// peaked); a wrong coefficient, a missing term of a derivative, an unmasked position, a
    /// wrong key/value head or an off-by-one row moves them by 1e-3 or more.
    pub(crate) const FUSED_REL_TOL: f32 = 1e-5;

    pub(crate) type Ad<B> = Autodiff<Fp8<B>>;

    /// max |a - b| relative to max |b|.
    pub(crate) fn rel(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        let scale = b.iter().fold(0f32, |m, x| m.max(x.abs()));
        a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
    }

    /// Deterministic values in about [-4, 4], with a few larger ones.
    pub(crate) fn values(n: usize, seed: usize) -> Vec<f32> {
        (0..n)
            .map(|i| {
                let v = ((i * 7919 + seed * 104_729) % 1000) as f32 / 125.0 - 4.0;
                if i % 13 == 0 {
                    v * 2.5
                } else {
                    v
                }
            })
            .collect()
    }

    pub(crate) fn host<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
        t.into_data().to_vec::<f32>().unwrap()
    }

    pub(crate) fn param<B: Backend, const D: usize>(
        v: Vec<f32>,
        shape: [usize; D],
    ) -> Tensor<B, D> {
        Tensor::from_data(TensorData::new(v, shape), &Default::default())
    }

    pub(crate) fn float<B: Backend, const D: usize>(t: FloatTensor<B>) -> Tensor<B, D> {
        Tensor::from_primitive(TensorPrimitive::Float(t))
    }

    /// A weighted sum of the output, so that every element gets its own upstream gradient.
    pub(crate) fn weighted_sum<B: Backend, const D: usize>(
        y: Tensor<B, D>,
        seed: usize,
    ) -> Tensor<B, 1> {
        let n = y.shape().num_elements();
        let shape: [usize; D] = y.dims();
        (y * param::<B, D>(values(n, seed), shape)).sum()
    }

    pub(crate) fn check(what: &str, fused: &[f32], composed: &[f32]) {
        let r = rel(fused, composed);
        println!("{what}: rel {r:e}");
        assert!(r < FUSED_REL_TOL, "{what} differs by {r:e}");
    }
}
