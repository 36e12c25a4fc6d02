//! GELU, tanh form (`0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))`, HF `gelu_new` /
//! `NewGELUActivation`), as one pass with its own autodiff node.
//!
//! Composed from Burn's ops it is eight ops (`powf`, two multiplies, an add, `tanh`, ...) forward
//! and as many backward, each allocating, with every intermediate kept for the backward. Here the
//! forward is one pass that keeps only its input, and the backward one pass in place over the
//! incoming gradient. `0.5 x (1 + tanh(u))` is computed as the equal `x * sigmoid(2u)` with
//! [`vmath`]'s vectorized `exp` (within 1 ulp): the result differs from the composed op only in
//! rounding (measured in the test below).

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::Autodiff;
use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
use fp8_backend::{Fp8, Fp8Kernels};
use rayon::prelude::*;

use super::vmath::{self, Isa};
use super::{host_result, CHUNK};
use crate::host::HostTensors;

/// Backends that run GELU (tanh form) as one pass; `Err` hands the input back to a caller that
/// must compose it from Burn's ops.
pub trait FusedGelu: Backend {
    /// `0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))`, element-wise (HF `gelu_new`).
    fn fused_gelu_tanh(x: FloatTensor<Self>) -> Result<FloatTensor<Self>, FloatTensor<Self>>;
}

fn gelu_tanh(x: &[f32]) -> Vec<f32> {
    let isa = Isa::best();
    let mut y = vec![0f32; x.len()];
    y.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK))
        .for_each(|(y, x)| vmath::gelu_forward(isa, x, y));
    y
}

/// `g *= d gelu(x) / dx`, in place.
fn gelu_tanh_backward(x: &[f32], g: &mut [f32]) {
    let isa = Isa::best();
    g.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK))
        .for_each(|(g, x)| vmath::gelu_backward(isa, x, g));
}

impl<B: HostTensors + Fp8Kernels> FusedGelu for Fp8<B> {
    fn fused_gelu_tanh(x: FloatTensor<Self>) -> Result<FloatTensor<Self>, FloatTensor<Self>> {
        match B::host_slice(&x) {
            Some(values) => Ok(host_result::<B>(gelu_tanh(values), &x)),
            None => B::device_gelu_tanh(&x).ok_or(x),
        }
    }
}

#[derive(Debug)]
struct GeluBackward;

impl<B: HostTensors + Fp8Kernels> Backward<Fp8<B>, 1> for GeluBackward {
    /// The input.
    type State = FloatTensor<B>;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node] = ops.parents;
        let upstream = grads.consume::<Fp8<B>>(&ops.node);
        let Some(node) = node else { return };
        let x = ops.state;
        let grad = match B::host_slice(&x) {
            Some(xs) => {
                let mut grad = B::host_exclusive(upstream).expect("a host tensor");
                gelu_tanh_backward(xs, B::host_mut(&mut grad));
                grad
            }
            None => B::device_gelu_tanh_backward(&x, upstream),
        };
        grads.register::<Fp8<B>>(node.id, grad);
    }
}

impl<B: HostTensors + Fp8Kernels, C: CheckpointStrategy> FusedGelu for Autodiff<Fp8<B>, C> {
    fn fused_gelu_tanh(x: FloatTensor<Self>) -> Result<FloatTensor<Self>, FloatTensor<Self>> {
        let y = match B::host_slice(&x.primitive) {
            Some(values) => host_result::<B>(gelu_tanh(values), &x.primitive),
            None => match B::device_gelu_tanh(&x.primitive) {
                Some(y) => y,
                None => return Err(x),
            },
        };
        Ok(
            match GeluBackward
                .prepare::<C>([x.node.clone()])
                .compute_bound()
                .stateful()
            {
                OpsKind::Tracked(prep) => prep.finish(x.primitive, y),
                OpsKind::UnTracked(prep) => prep.finish(y),
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use burn::backend::{Flex, NdArray};

    use super::*;
    use crate::model::ops::test_util::*;
    use burn::tensor::activation::gelu_approximate;

    #[test]
    fn fused_gelu_equals_the_composed_one() {
        gelu::<Flex>();
        gelu::<NdArray<f32>>();
    }

    fn gelu<B: HostTensors + Fp8Kernels>() {
        let shape = [3, 5, 41];
        let x = || param::<Ad<B>, 3>(values(3 * 5 * 41, 1), shape).require_grad();
        let (a, b) = (x(), x());
        let fused = float::<Ad<B>, 3>(
            Ad::<B>::fused_gelu_tanh(a.clone().into_primitive().tensor()).expect("a host backend"),
        );
        let composed = gelu_approximate(b.clone());
        let grad_a = a.grad(&weighted_sum(fused.clone(), 2).backward()).unwrap();
        let grad_b = b
            .grad(&weighted_sum(composed.clone(), 2).backward())
            .unwrap();
        check("gelu", &host(fused), &host(composed));
        check("gelu grad", &host(grad_a), &host(grad_b));
        // Without autodiff (evaluation) the same values.
        let x = param::<Fp8<B>, 3>(values(3 * 5 * 41, 1), shape);
        let plain = Fp8::<B>::fused_gelu_tanh(x.clone().into_primitive().tensor()).unwrap();
        check(
            "gelu inference",
            &host(float::<Fp8<B>, 3>(plain)),
            &host(gelu_approximate(x)),
        );
    }
}
