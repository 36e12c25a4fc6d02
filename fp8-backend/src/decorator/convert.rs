//! Field-by-field conversions of the containers typed by backend that appear in the ops
//! signatures. Their fields are primitives, identical for `Fp8<B>` and `B`, so each conversion
//! only moves them. `tools/gen_decorator.py` calls `<stem>_to_inner` on arguments and
//! `<stem>_from_inner` on results (its `CONVERT` table); only the directions it uses exist here.

use burn::tensor::ops::{
    DeformConv2dBackward, MaxPool1dBackward, MaxPool1dWithIndices, MaxPool2dBackward,
    MaxPool2dWithIndices, TransactionPrimitive,
};
use burn::tensor::quantization::QuantizationParametersPrimitive;
use burn::tensor::TensorPrimitive;

use super::Fp8;
use crate::kernel::Fp8Kernels;

pub(super) fn tensor_primitive_to_inner<B: Fp8Kernels>(
    t: TensorPrimitive<Fp8<B>>,
) -> TensorPrimitive<B> {
    match t {
        TensorPrimitive::Float(t) => TensorPrimitive::Float(t),
        TensorPrimitive::QFloat(t) => TensorPrimitive::QFloat(t),
    }
}

pub(super) fn tensor_primitive_from_inner<B: Fp8Kernels>(
    t: TensorPrimitive<B>,
) -> TensorPrimitive<Fp8<B>> {
    match t {
        TensorPrimitive::Float(t) => TensorPrimitive::Float(t),
        TensorPrimitive::QFloat(t) => TensorPrimitive::QFloat(t),
    }
}

pub(super) fn qparams_to_inner<B: Fp8Kernels>(
    q: QuantizationParametersPrimitive<Fp8<B>>,
) -> QuantizationParametersPrimitive<B> {
    QuantizationParametersPrimitive { scales: q.scales }
}

/// The private registration order is not carried over: `TransactionPrimitive::execute_async`
/// takes it out before it calls `tr_execute`, which only reads the four public lists.
pub(super) fn transaction_to_inner<B: Fp8Kernels>(
    t: TransactionPrimitive<Fp8<B>>,
) -> TransactionPrimitive<B> {
    TransactionPrimitive::new(t.read_floats, t.read_qfloats, t.read_ints, t.read_bools)
}

pub(super) fn deform_conv2d_backward_from_inner<B: Fp8Kernels>(
    g: DeformConv2dBackward<B>,
) -> DeformConv2dBackward<Fp8<B>> {
    DeformConv2dBackward {
        x_grad: g.x_grad,
        offset_grad: g.offset_grad,
        weight_grad: g.weight_grad,
        mask_grad: g.mask_grad,
        bias_grad: g.bias_grad,
    }
}

pub(super) fn max_pool1d_with_indices_from_inner<B: Fp8Kernels>(
    p: MaxPool1dWithIndices<B>,
) -> MaxPool1dWithIndices<Fp8<B>> {
    MaxPool1dWithIndices {
        output: p.output,
        indices: p.indices,
    }
}

pub(super) fn max_pool1d_backward_from_inner<B: Fp8Kernels>(
    g: MaxPool1dBackward<B>,
) -> MaxPool1dBackward<Fp8<B>> {
    MaxPool1dBackward { x_grad: g.x_grad }
}

pub(super) fn max_pool2d_with_indices_from_inner<B: Fp8Kernels>(
    p: MaxPool2dWithIndices<B>,
) -> MaxPool2dWithIndices<Fp8<B>> {
    MaxPool2dWithIndices {
        output: p.output,
        indices: p.indices,
    }
}

pub(super) fn max_pool2d_backward_from_inner<B: Fp8Kernels>(
    g: MaxPool2dBackward<B>,
) -> MaxPool2dBackward<Fp8<B>> {
    MaxPool2dBackward { x_grad: g.x_grad }
}
