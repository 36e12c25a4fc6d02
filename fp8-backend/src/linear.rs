//! The three GEMMs of a linear layer, with their operands cast to FP8 (DESIGN.md, "The decorator").
//!
//! | GEMM | operands |
//! |---|---|
//! | forward `y = x W + b` | x -> E4, W -> E4 (bias stays f32) |
//! | `dX = dY W^T` | dY -> E5, W -> E4 |
//! | `dW = X^T dY` | X -> E4, dY -> E5 |
//!
//! The bias gradient is the f32 sum of dY (`linear_bias_backward` is not intercepted), as in
//! Graphcore's reference. The quantized operands go to the inner backend's own linear ops, so a
//! backend with a specialised `linear` keeps it. With FP8 off, each function is the inner op.

use burn::tensor::ops::FloatTensor;

use crate::context::{current_policy, next_call, record, record_non_finite, LinearOp};
use crate::format::Role;
use crate::kernel::{Fp8Kernels, QuantOutput};
use crate::scaling::Fp8Policy;

/// Forward: `q_E4(x) @ q_E4(W) + b`.
pub fn forward<B: Fp8Kernels>(
    x: FloatTensor<B>,
    weight: FloatTensor<B>,
    bias: Option<FloatTensor<B>>,
) -> FloatTensor<B> {
    let policy = current_policy();
    if !policy.is_on() {
        return B::linear(x, weight, bias);
    }
    let call = Call::new(&policy, LinearOp::Forward);
    let x = call.quantize::<B>(x, Role::Activation);
    let weight = call.quantize::<B>(weight, Role::Weight);
    B::linear(x, weight, bias)
}

/// Input gradient: `q_E5(dY) @ q_E4(W)^T`.
pub fn x_backward<B: Fp8Kernels>(
    weight: FloatTensor<B>,
    output_grad: FloatTensor<B>,
) -> FloatTensor<B> {
    let policy = current_policy();
    if !policy.is_on() {
        return B::linear_x_backward(weight, output_grad);
    }
    let call = Call::new(&policy, LinearOp::BackwardX);
    let output_grad = call.quantize::<B>(output_grad, Role::Gradient);
    let weight = call.quantize::<B>(weight, Role::Weight);
    B::linear_x_backward(weight, output_grad)
}

/// Weight gradient: `q_E4(X)^T @ q_E5(dY)`, summed over batch dimensions.
pub fn weight_backward<B: Fp8Kernels>(
    x: FloatTensor<B>,
    output_grad: FloatTensor<B>,
) -> FloatTensor<B> {
    let policy = current_policy();
    if !policy.is_on() {
        return B::linear_weight_backward(x, output_grad);
    }
    let call = Call::new(&policy, LinearOp::BackwardWeight);
    let x = call.quantize::<B>(x, Role::Activation);
    let output_grad = call.quantize::<B>(output_grad, Role::Gradient);
    B::linear_weight_backward(x, output_grad)
}

/// One intercepted GEMM: the policy and the call's place in the step.
struct Call<'a> {
    policy: &'a Fp8Policy,
    op: LinearOp,
    pass: u32,
    layer: u32,
}

impl<'a> Call<'a> {
    fn new(policy: &'a Fp8Policy, op: LinearOp) -> Self {
        let (pass, layer) = next_call(op);
        Self {
            policy,
            op,
            pass,
            layer,
        }
    }

    /// Casts one operand, recording its statistics; a non-finite tensor is passed on unchanged
    /// and reported, so the training loop's non-finite policy decides what happens.
    fn quantize<B: Fp8Kernels>(&self, tensor: FloatTensor<B>, role: Role) -> FloatTensor<B> {
        let Some((format, rule)) = self.policy.rule_for(role) else {
            return tensor;
        };
        match B::fp8_quantize(tensor, format, rule, self.policy.stats) {
            QuantOutput::Quantized(tensor, stats) => {
                if let Some(stats) = stats {
                    if !stats.amax.is_finite() {
                        record_non_finite(self.pass, self.layer, self.op, role, stats.amax);
                    }
                    record(self.pass, self.layer, self.op, role, stats);
                }
                tensor
            }
            QuantOutput::NonFinite(tensor, amax) => {
                record_non_finite(self.pass, self.layer, self.op, role, amax);
                tensor
            }
        }
    }
}
