//! SwiGLU, the product inside a Llama MLP: `silu(gate) * up` (`act_fn(gate_proj(x)) *
//! up_proj(x)` in `LlamaMLP`), as one pass with its own autodiff node.
//!
//! Composed from Burn's ops it is a sigmoid, two multiplies and their backward, each
//! allocating, with the sigmoid kept. Here the forward keeps its two inputs and writes the
//! product in one pass; the backward writes both input gradients in one pass, in place over the
//! incoming gradient for the gate's. `exp` is [`vmath`]'s (within 2 ulp): the result differs
//! from the composed op only in rounding (measured in the test below).

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

use super::vmath::{self, Isa};
use super::{host_result, CHUNK};
use crate::host::HostTensors;

/// Backends that run SwiGLU as one pass; `Err` hands the inputs back to a caller that must
/// compose it from Burn's ops.
pub trait FusedSwiglu: Backend {
    /// `silu(gate) * up`, element-wise (both of one shape).
    #[allow(clippy::type_complexity)]
    fn fused_swiglu(
        gate: FloatTensor<Self>,
        up: FloatTensor<Self>,
    ) -> Result<FloatTensor<Self>, (FloatTensor<Self>, FloatTensor<Self>)>;
}

fn swiglu(g: &[f32], u: &[f32]) -> Vec<f32> {
    let isa = Isa::best();
    let mut h = vec![0f32; g.len()];
    h.par_chunks_mut(CHUNK)
        .zip(g.par_chunks(CHUNK).zip(u.par_chunks(CHUNK)))
        .for_each(|(h, (g, u))| vmath::swiglu_forward(isa, g, u, h));
    h
}

/// `dh` (in `dg`) into the gate's gradient in place; returns the up input's.
fn swiglu_backward(g: &[f32], u: &[f32], dg: &mut [f32]) -> Vec<f32> {
    let isa = Isa::best();
    let mut du = vec![0f32; g.len()];
    dg.par_chunks_mut(CHUNK)
        .zip(du.par_chunks_mut(CHUNK))
        .zip(g.par_chunks(CHUNK).zip(u.par_chunks(CHUNK)))
        .for_each(|((dg, du), (g, u))| vmath::swiglu_backward(isa, g, u, dg, du));
    du
}

fn same_shape<B: Backend>(gate: &FloatTensor<B>, up: &FloatTensor<B>) {
    assert_eq!(
        gate.shape(),
        up.shape(),
        "SwiGLU takes gate and up of one shape"
    );
}

impl<B: HostTensors + Fp8Kernels> FusedSwiglu for Fp8<B> {
    fn fused_swiglu(
        gate: FloatTensor<Self>,
        up: FloatTensor<Self>,
    ) -> Result<FloatTensor<Self>, (FloatTensor<Self>, FloatTensor<Self>)> {
        same_shape::<B>(&gate, &up);
        match (B::host_slice(&gate), B::host_slice(&up)) {
            (Some(g), Some(u)) => Ok(host_result::<B>(swiglu(g, u), &gate)),
            _ => B::device_swiglu(&gate, &up).ok_or((gate, up)),
        }
    }
}

#[derive(Debug)]
struct SwigluBackward;

impl<B: HostTensors + Fp8Kernels> Backward<Fp8<B>, 2> for SwigluBackward {
    /// The gate and up inputs.
    type State = (FloatTensor<B>, FloatTensor<B>);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [gate_node, up_node] = ops.parents;
        let upstream = grads.consume::<Fp8<B>>(&ops.node);
        let (gate, up) = ops.state;
        let [dg, du] = match (B::host_slice(&gate), B::host_slice(&up)) {
            (Some(g), Some(u)) => {
                let mut dg = B::host_exclusive(upstream).expect("a host tensor");
                let du = swiglu_backward(g, u, B::host_mut(&mut dg));
                [dg, host_result::<B>(du, &up)]
            }
            _ => B::device_swiglu_backward(&gate, &up, upstream),
        };
        if let Some(node) = up_node {
            grads.register::<Fp8<B>>(node.id, du);
        }
        if let Some(node) = gate_node {
            grads.register::<Fp8<B>>(node.id, dg);
        }
    }
}

impl<B: HostTensors + Fp8Kernels, C: CheckpointStrategy> FusedSwiglu for Autodiff<Fp8<B>, C> {
    fn fused_swiglu(
        gate: FloatTensor<Self>,
        up: FloatTensor<Self>,
    ) -> Result<FloatTensor<Self>, (FloatTensor<Self>, FloatTensor<Self>)> {
        same_shape::<B>(&gate.primitive, &up.primitive);
        let h = match (B::host_slice(&gate.primitive), B::host_slice(&up.primitive)) {
            (Some(g), Some(u)) => host_result::<B>(swiglu(g, u), &gate.primitive),
            _ => match B::device_swiglu(&gate.primitive, &up.primitive) {
                Some(h) => h,
                None => return Err((gate, up)),
            },
        };
        Ok(
            match SwigluBackward
                .prepare::<C>([gate.node.clone(), up.node.clone()])
                .compute_bound()
                .stateful()
            {
                OpsKind::Tracked(prep) => prep.finish((gate.primitive, up.primitive), h),
                OpsKind::UnTracked(prep) => prep.finish(h),
            },
        )
    }
}

/// SwiGLU composed from Burn's ops (`silu(gate) * up`): the reference of the fused op, and the
/// path of backends without it.
pub fn composed<B: Backend, const D: usize>(
    gate: burn::Tensor<B, D>,
    up: burn::Tensor<B, D>,
) -> burn::Tensor<B, D> {
    burn::tensor::activation::silu(gate) * up
}

#[cfg(test)]
mod tests {
    use burn::backend::{Flex, NdArray};

    use super::*;
    use crate::model::ops::test_util::*;

    #[test]
    fn fused_swiglu_equals_the_composed_one() {
        swiglu_case::<Flex>();
        swiglu_case::<NdArray<f32>>();
    }

    fn swiglu_case<B: HostTensors + Fp8Kernels>() {
        // More elements than one CHUNK, the last chunk partial.
        let shape = [3, 61, 97];
        let n = 3 * 61 * 97;
        let g = || param::<Ad<B>, 3>(values(n, 11), shape).require_grad();
        let u = || param::<Ad<B>, 3>(values(n, 12), shape).require_grad();
        let (ga, ua) = (g(), u());
        let (gb, ub) = (g(), u());
        let fused = float::<Ad<B>, 3>(
            Ad::<B>::fused_swiglu(
                ga.clone().into_primitive().tensor(),
                ua.clone().into_primitive().tensor(),
            )
            .unwrap_or_else(|_| panic!("a host backend")),
        );
        let reference = composed(gb.clone(), ub.clone());
        let grads_a = weighted_sum(fused.clone(), 13).backward();
        let grads_b = weighted_sum(reference.clone(), 13).backward();
        check("swiglu", &host(fused), &host(reference));
        check(
            "swiglu d gate",
            &host(ga.grad(&grads_a).unwrap()),
            &host(gb.grad(&grads_b).unwrap()),
        );
        check(
            "swiglu d up",
            &host(ua.grad(&grads_a).unwrap()),
            &host(ub.grad(&grads_b).unwrap()),
        );
    }
}
