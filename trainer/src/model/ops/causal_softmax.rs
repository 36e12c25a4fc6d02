//! The causal softmax of attention scores, `softmax(scores / divisor)` with the future masked,
//! as one pass with its own autodiff node (the unfused attention path uses it: with dropout on
//! the probabilities, or where [`super::attention`] declines).
//!
//! Composed from Burn's ops it is a division, a `mask_fill` over an expanded mask and the five
//! ops of `softmax`, each over `[B, heads, T, T]`. Here the forward is one pass that keeps only
//! its output, and the backward one pass in place over the incoming gradient; future keys get
//! probability exactly 0, as the composed op's `f32::MIN` fill gives. `exp` is [`vmath`]'s
//! (within 1 ulp): the result differs from the composed op only in rounding (measured in the
//! test below).

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::Autodiff;
use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::TensorMetadata;
use fp8_backend::{Fp8, Fp8Kernels};
use rayon::prelude::*;

use super::host_result;
use super::vmath::{self, Isa};
use crate::host::HostTensors;

/// Backends that run the causal softmax as one pass; `Err` hands the scores back to a caller
/// that must compose it from Burn's ops.
pub trait FusedCausalSoftmax: Backend {
    /// `softmax(scores / divisor)` over the last dimension of `[.., T, T]` scores, with key
    /// positions after the query's (above the diagonal) at probability exactly 0.
    fn fused_causal_softmax(
        scores: FloatTensor<Self>,
        divisor: f64,
    ) -> Result<FloatTensor<Self>, FloatTensor<Self>>;
}

/// Rows of `t` scores; row `r` is query position `r % t`.
fn causal_softmax(x: &[f32], t: usize, divisor: f32) -> Vec<f32> {
    let isa = Isa::best();
    let mut p = vec![0f32; x.len()];
    p.par_chunks_mut(t)
        .zip(x.par_chunks(t))
        .enumerate()
        .for_each(|(r, (p, x))| {
            let visible = r % t + 1;
            let (p, x) = (&mut p[..visible], &x[..visible]);
            let mut max = f32::NEG_INFINITY;
            for (p, &x) in p.iter_mut().zip(x) {
                *p = x / divisor;
                max = max.max(*p);
            }
            let sum = vmath::exp_shifted_sum(isa, p, max);
            p.iter_mut().for_each(|p| *p /= sum);
        });
    p
}

/// Turns the probabilities' gradient `dp` into the scores' in place:
/// `p (dp - sum(p dp)) / divisor`, 0 above the diagonal.
fn causal_softmax_backward(p: &[f32], dp: &mut [f32], t: usize, divisor: f32) {
    dp.par_chunks_mut(t)
        .zip(p.par_chunks(t))
        .enumerate()
        .for_each(|(r, (dp, p))| {
            let visible = r % t + 1;
            let dot: f32 = dp[..visible].iter().zip(p).map(|(d, p)| d * p).sum();
            for (d, &p) in dp[..visible].iter_mut().zip(p) {
                *d = p * (*d - dot) / divisor;
            }
            dp[visible..].fill(0.0);
        });
}

fn square_rows<B: Backend>(scores: &FloatTensor<B>) -> usize {
    let shape = scores.shape();
    let d = shape.num_dims();
    assert!(
        d >= 2 && shape[d - 1] == shape[d - 2],
        "causal softmax takes [.., T, T] scores, got {shape:?}"
    );
    shape[d - 1]
}

impl<B: HostTensors + Fp8Kernels> FusedCausalSoftmax for Fp8<B> {
    fn fused_causal_softmax(
        scores: FloatTensor<Self>,
        divisor: f64,
    ) -> Result<FloatTensor<Self>, FloatTensor<Self>> {
        let t = square_rows::<B>(&scores);
        match B::host_slice(&scores) {
            Some(values) => Ok(host_result::<B>(
                causal_softmax(values, t, divisor as f32),
                &scores,
            )),
            None => B::device_causal_softmax(&scores, divisor as f32).ok_or(scores),
        }
    }
}

#[derive(Debug)]
struct CausalSoftmaxBackward;

impl<B: HostTensors + Fp8Kernels> Backward<Fp8<B>, 1> for CausalSoftmaxBackward {
    /// The probabilities, T, the divisor.
    type State = (FloatTensor<B>, usize, f32);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node] = ops.parents;
        let upstream = grads.consume::<Fp8<B>>(&ops.node);
        let Some(node) = node else { return };
        let (p, t, divisor) = ops.state;
        let grad = match B::host_slice(&p) {
            Some(ps) => {
                let mut grad = B::host_exclusive(upstream).expect("a host tensor");
                causal_softmax_backward(ps, B::host_mut(&mut grad), t, divisor);
                grad
            }
            None => B::device_causal_softmax_backward(&p, upstream, divisor),
        };
        grads.register::<Fp8<B>>(node.id, grad);
    }
}

impl<B: HostTensors + Fp8Kernels, C: CheckpointStrategy> FusedCausalSoftmax
    for Autodiff<Fp8<B>, C>
{
    fn fused_causal_softmax(
        scores: FloatTensor<Self>,
        divisor: f64,
    ) -> Result<FloatTensor<Self>, FloatTensor<Self>> {
        let t = square_rows::<B>(&scores.primitive);
        let divisor = divisor as f32;
        let p = match B::host_slice(&scores.primitive) {
            Some(values) => host_result::<B>(causal_softmax(values, t, divisor), &scores.primitive),
            None => match B::device_causal_softmax(&scores.primitive, divisor) {
                Some(p) => p,
                None => return Err(scores),
            },
        };
        Ok(
            match CausalSoftmaxBackward
                .prepare::<C>([scores.node.clone()])
                .compute_bound()
                .stateful()
            {
                OpsKind::Tracked(prep) => prep.finish((p.clone(), t, divisor), p),
                OpsKind::UnTracked(prep) => prep.finish(p),
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use burn::backend::{Flex, NdArray};
    use burn::tensor::Tensor;

    use super::*;
    use crate::model::ops::test_util::*;
    use burn::tensor::activation::softmax;
    use burn::tensor::Bool;

    #[test]
    fn fused_causal_softmax_equals_the_masked_composed_one() {
        causal_softmax_case::<Flex>();
        causal_softmax_case::<NdArray<f32>>();
    }

    fn causal_softmax_case<B: HostTensors + Fp8Kernels>() {
        let (b, h, t, divisor) = (2, 3, 9, 2.5);
        let n = b * h * t * t;
        let x = || param::<Ad<B>, 4>(values(n, 7), [b, h, t, t]).require_grad();
        let (xa, xb) = (x(), x());
        let fused = float::<Ad<B>, 4>(
            Ad::<B>::fused_causal_softmax(xa.clone().into_primitive().tensor(), divisor)
                .expect("a host backend"),
        );
        let future = Tensor::<Ad<B>, 2, Bool>::tril_mask([t, t], 0, &Default::default())
            .unsqueeze::<4>()
            .expand([b, h, t, t]);
        let composed = softmax((xb.clone() / divisor).mask_fill(future, f32::MIN), 3);
        let ga = xa.grad(&weighted_sum(fused.clone(), 8).backward()).unwrap();
        let gb = xb
            .grad(&weighted_sum(composed.clone(), 8).backward())
            .unwrap();
        let (p, q) = (host(fused), host(composed));
        check("causal softmax", &p, &q);
        check("causal softmax grad", &host(ga), &host(gb));
        // Exactly 0 above the diagonal, as the composed op's f32::MIN fill gives.
        for (i, v) in p.iter().enumerate() {
            let (row, col) = ((i / t) % t, i % t);
            if col > row {
                assert_eq!(*v, 0.0, "position {i} is in the future");
            }
        }
    }
}
