//! `fp8_linear`: the linear op of named FP8 layers, with its own autodiff node.
//!
//! Burn's `linear` carries no layer identity, and its autodiff node casts nothing itself: the
//! decorator would see three unrelated GEMMs and have to guess the layer from call order. This
//! op takes the layer's [`Fp8Site`], and on `Autodiff<Fp8<B>>` records one backward node that
//! keeps the operands the forward cast (see `crate::linear`), so the layer, its policy and its
//! casts are the same in the forward and the backward by construction.
//!
//! Implemented for `Fp8<B>` (inference) and `Autodiff<Fp8<B>, C>` (training), the two backends
//! a model with FP8 layers runs on.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::Autodiff;
use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{Tensor, TensorPrimitive};

use crate::decorator::Fp8;
use crate::kernel::Fp8Kernels;
use crate::linear::{site_backward, site_forward, site_forward_stored, Keep, SavedLinear};
use crate::site::Fp8Site;
use crate::stored::Fp8Weight;

/// Backends that run named FP8 linear layers.
pub trait Fp8LinearOps: Backend {
    /// `y = q(x) @ q(W) + b` for the layer `site` (its policy decides the casts).
    fn fp8_linear(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: Option<FloatTensor<Self>>,
        site: &Fp8Site,
    ) -> FloatTensor<Self>;

    /// [`Self::fp8_linear`] with an FP8-stored (frozen) weight: `y = q(x) @ W + b`, no dW.
    fn fp8_linear_stored(
        x: FloatTensor<Self>,
        weight: &Fp8Weight,
        bias: Option<FloatTensor<Self>>,
        site: &Fp8Site,
    ) -> FloatTensor<Self>;
}

/// The linear layer `site` on tensors: `x [..., in] @ weight [in, out] + bias [out]`.
pub fn fp8_linear<B: Fp8LinearOps, const D: usize>(
    x: Tensor<B, D>,
    weight: Tensor<B, 2>,
    bias: Option<Tensor<B, 1>>,
    site: &Fp8Site,
) -> Tensor<B, D> {
    let y = B::fp8_linear(
        x.into_primitive().tensor(),
        weight.into_primitive().tensor(),
        bias.map(|b| b.into_primitive().tensor()),
        site,
    );
    Tensor::from_primitive(TensorPrimitive::Float(y))
}

/// [`fp8_linear`] with an FP8-stored weight ([`Fp8Weight`]): the weight takes no gradient.
pub fn fp8_linear_stored<B: Fp8LinearOps, const D: usize>(
    x: Tensor<B, D>,
    weight: &Fp8Weight,
    bias: Option<Tensor<B, 1>>,
    site: &Fp8Site,
) -> Tensor<B, D> {
    let y = B::fp8_linear_stored(
        x.into_primitive().tensor(),
        weight,
        bias.map(|b| b.into_primitive().tensor()),
        site,
    );
    Tensor::from_primitive(TensorPrimitive::Float(y))
}

impl<B: Fp8Kernels> Fp8LinearOps for Fp8<B> {
    fn fp8_linear_stored(
        x: FloatTensor<Self>,
        weight: &Fp8Weight,
        bias: Option<FloatTensor<Self>>,
        site: &Fp8Site,
    ) -> FloatTensor<Self> {
        site_forward_stored::<B>(x, weight, bias, site, false).0
    }

    fn fp8_linear(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: Option<FloatTensor<Self>>,
        site: &Fp8Site,
    ) -> FloatTensor<Self> {
        site_forward::<B>(x, weight, bias, site, Keep::NOTHING).0
    }
}

/// The backward node: parents `[x, weight]` or `[x, weight, bias]`.
#[derive(Debug)]
struct Fp8LinearBackward;

impl<B: Fp8Kernels, const N: usize> Backward<Fp8<B>, N> for Fp8LinearBackward {
    type State = (SavedLinear<B>, Fp8Site);

    fn backward(
        self,
        ops: Ops<Self::State, N>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let mut parents = ops.parents.into_iter();
        let (node_x, node_weight, node_bias) = (
            parents.next().flatten(),
            parents.next().flatten(),
            parents.next().flatten(),
        );
        let output_grad = grads.consume::<Fp8<B>>(&ops.node);
        let (saved, site) = ops.state;
        let bias_grad = node_bias.map(|node| (node, B::linear_bias_backward(output_grad.clone())));
        let (dx, dw) = site_backward::<B>(saved, &site, output_grad);
        if let (Some(node), Some(dx)) = (node_x, dx) {
            grads.register::<Fp8<B>>(node.id, dx);
        }
        if let (Some(node), Some(dw)) = (node_weight, dw) {
            grads.register::<Fp8<B>>(node.id, dw);
        }
        if let Some((node, db)) = bias_grad {
            grads.register::<Fp8<B>>(node.id, db);
        }
    }
}

/// The backward node of a layer with an FP8-stored weight: parents `[x]` or `[x, bias]`.
#[derive(Debug)]
struct Fp8StoredLinearBackward;

impl<B: Fp8Kernels, const N: usize> Backward<Fp8<B>, N> for Fp8StoredLinearBackward {
    type State = (SavedLinear<B>, Fp8Site);

    fn backward(
        self,
        ops: Ops<Self::State, N>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let mut parents = ops.parents.into_iter();
        let (node_x, node_bias) = (parents.next().flatten(), parents.next().flatten());
        let output_grad = grads.consume::<Fp8<B>>(&ops.node);
        let (saved, site) = ops.state;
        let bias_grad = node_bias.map(|node| (node, B::linear_bias_backward(output_grad.clone())));
        let (dx, _) = site_backward::<B>(saved, &site, output_grad);
        if let (Some(node), Some(dx)) = (node_x, dx) {
            grads.register::<Fp8<B>>(node.id, dx);
        }
        if let Some((node, db)) = bias_grad {
            grads.register::<Fp8<B>>(node.id, db);
        }
    }
}

impl<B: Fp8Kernels, C: CheckpointStrategy> Fp8LinearOps for Autodiff<Fp8<B>, C> {
    fn fp8_linear_stored(
        x: FloatTensor<Self>,
        weight: &Fp8Weight,
        bias: Option<FloatTensor<Self>>,
        site: &Fp8Site,
    ) -> FloatTensor<Self> {
        let keep_weight = x.is_tracked();
        macro_rules! record {
            ($nodes:expr, $bias:expr) => {
                match Fp8StoredLinearBackward
                    .prepare::<C>($nodes)
                    .compute_bound()
                    .stateful()
                {
                    OpsKind::Tracked(prep) => {
                        let (y, saved) =
                            site_forward_stored::<B>(x.primitive, weight, $bias, site, keep_weight);
                        prep.finish((saved, site.clone()), y)
                    }
                    OpsKind::UnTracked(prep) => prep.finish(
                        site_forward_stored::<B>(x.primitive, weight, $bias, site, false).0,
                    ),
                }
            };
        }
        match bias {
            Some(bias) => record!([x.node.clone(), bias.node.clone()], Some(bias.primitive)),
            None => record!([x.node.clone()], None),
        }
    }

    fn fp8_linear(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: Option<FloatTensor<Self>>,
        site: &Fp8Site,
    ) -> FloatTensor<Self> {
        // dW needs the cast input, dX the cast weight.
        let keep = Keep {
            x: weight.is_tracked(),
            weight: x.is_tracked(),
        };
        // One arm per parent count (the node type is not nameable outside burn-autodiff).
        macro_rules! record {
            ($nodes:expr, $bias:expr) => {
                match Fp8LinearBackward
                    .prepare::<C>($nodes)
                    .compute_bound()
                    .stateful()
                {
                    OpsKind::Tracked(prep) => {
                        let (y, saved) =
                            site_forward::<B>(x.primitive, weight.primitive, $bias, site, keep);
                        prep.finish((saved, site.clone()), y)
                    }
                    OpsKind::UnTracked(prep) => prep.finish(
                        site_forward::<B>(
                            x.primitive,
                            weight.primitive,
                            $bias,
                            site,
                            Keep::NOTHING,
                        )
                        .0,
                    ),
                }
            };
        }
        match bias {
            Some(bias) => record!(
                [x.node.clone(), weight.node.clone(), bias.node.clone()],
                Some(bias.primitive)
            ),
            None => record!([x.node.clone(), weight.node.clone()], None),
        }
    }
}
