//! The three GEMMs of a linear layer, with their operands cast to FP8 (docs/design.md, "The
//! decorator").
//!
//! | GEMM | operands |
//! |---|---|
//! | forward `y = x W + b` | x -> E4, W -> E4 (bias stays f32) |
//! | `dX = dY W^T` | dY -> E5, W -> E4 |
//! | `dW = X^T dY` | X -> E4, dY -> E5 |
//!
//! The bias gradient is the f32 sum of dY, as in Graphcore's reference. The quantized operands
//! go to the inner backend's own linear ops, so a backend with a specialised `linear` keeps it.
//!
//! Two entry points:
//! - named layers ([`site_forward`] / [`site_backward`], reached through [`crate::fp8_linear`]):
//!   each operand is cast once per step. The forward keeps q_E4(X) (in place of X, so no extra
//!   memory) and q_E4(W) (or W, to cast again: [`Fp8Policy::cache_weights`]) for the backward,
//!   and dY is cast to E5 once for both backward GEMMs. A cast is deterministic (same tensor,
//!   same amax, same bias), so this is bit-identical to casting per GEMM. Under `fp8-delayed`
//!   each cast takes its bias from the tensor's amax history (`crate::delayed`).
//! - anonymous `burn::nn::Linear` layers ([`forward`], [`x_backward`], [`weight_backward`], which
//!   `Fp8<B>`'s `ModuleOps` calls under the thread-local policy): every GEMM casts its operands.
//!
//! With FP8 off, each function is the inner op.
//!
//! The named layers' operands are cast with `Fp8Kernels::fp8_quantize_operand`: on flex with
//! AVX512_BF16 they are bf16 tensors (the same values) that `Fp8Kernels::matmul` multiplies in
//! bf16 with f32 accumulation (docs/design.md, "The CPU FP8 GEMM"). The anonymous layers go to
//! the inner backend's own `linear` ops, which multiply f32 tensors: their casts stay f32.

use burn::tensor::ops::FloatTensor;

use crate::context::{self, current_policy, current_stats, next_call};
use crate::format::{Fp8Format, Role};
use crate::kernel::{self, Fp8Kernels, QuantOutput};
use crate::policy::{Fp8Policy, Precision};
use crate::profile::gemm;
use crate::report::{CastOutcome, LayerId, LinearOp};
use crate::scaling::{amax_bias, bias_for, BiasRule};
use crate::site::{CastRecompute, Fp8Site, Recording};
use crate::stored::Fp8Weight;

/// Casts one operand to the format of its role under `policy` (with its statistics when
/// `stats`). A tensor whose amax is not finite comes back unchanged (the caller reports it;
/// the training loop's non-finite policy decides what happens).
fn cast<B: Fp8Kernels>(
    policy: &Fp8Policy,
    stats: bool,
    tensor: FloatTensor<B>,
    role: Role,
) -> (FloatTensor<B>, CastOutcome) {
    if policy.mode == Precision::Bf16 {
        return (B::bf16_round(tensor), CastOutcome::Skipped);
    }
    let Some((format, rule)) = policy.rule_for(role) else {
        return (tensor, CastOutcome::Skipped);
    };
    match B::fp8_quantize(tensor, format, rule, stats) {
        QuantOutput::Quantized(tensor, stats) => (tensor, CastOutcome::Quantized(stats)),
        QuantOutput::NonFinite(tensor, amax) => (tensor, CastOutcome::NonFinite(amax)),
    }
}

/// [`cast`] for an operand that only a named layer's GEMM reads (`Fp8Kernels::matmul`).
fn operand_cast<B: Fp8Kernels>(
    policy: &Fp8Policy,
    stats: bool,
    tensor: FloatTensor<B>,
    role: Role,
) -> FloatTensor<B> {
    if policy.mode == Precision::Bf16 {
        return B::bf16_operand(tensor);
    }
    let Some((format, rule)) = policy.rule_for(role) else {
        return tensor;
    };
    match B::fp8_quantize_operand(tensor, format, rule, stats) {
        QuantOutput::Quantized(tensor, _) | QuantOutput::NonFinite(tensor, _) => tensor,
    }
}

// ---- named layers ---------------------------------------------------------------------------

/// The FP8 formats of a named layer's GEMM operands (`lhs`, `rhs`) under `policy`, for
/// [`Fp8Kernels::fp8_matmul`]; `None` when either is not cast to FP8.
fn gemm_formats(policy: &Fp8Policy, lhs: Role, rhs: Role) -> Option<(Fp8Format, Fp8Format)> {
    if policy.mode == Precision::Bf16 {
        return None;
    }
    Some((policy.rule_for(lhs)?.0, policy.rule_for(rhs)?.0))
}

/// The policy a forward ran under.
fn policy_of<B: Fp8Kernels>(saved: &SavedLinear<B>) -> &Fp8Policy {
    saved.recording.policy.as_ref()
}

/// Casts an operand of the named layer `site`; returns the bias applied, when the cast was made.
/// Under `fp8-delayed` the bias comes from the tensor's amax history (or from its own amax when
/// the history has none) and the cast's amax joins the history (`crate::delayed`). With
/// data-parallel peers (`crate::peers`), "its own amax" is the peers' largest, in both modes.
fn site_cast<B: Fp8Kernels>(
    recording: &Recording,
    site: &Fp8Site,
    tensor: FloatTensor<B>,
    role: Role,
) -> (FloatTensor<B>, CastOutcome, Option<i32>) {
    let (policy, stats) = (recording.policy.as_ref(), recording.stats);
    if policy.mode == Precision::Bf16 {
        // No scale, no statistics, nothing to reduce over peers.
        return (B::bf16_operand(tensor), CastOutcome::Skipped, None);
    }
    let Some((format, own_rule)) = policy.rule_for(role) else {
        return (tensor, CastOutcome::Skipped, None);
    };
    let context = site.context();
    // The gradient is cast once per use: only forward casts are recomputed.
    let recompute = match role {
        Role::Gradient => CastRecompute::Normal,
        _ => context.cast_recompute(site.layer(), role),
    };
    if let CastRecompute::Replay(logged) = recompute {
        // The logged pass's cast again: same operand, nothing recorded or reduced.
        let rule = match logged {
            Some(Some(bias)) => BiasRule::Constant(bias),
            Some(None) => return (tensor, CastOutcome::Skipped, None),
            None => own_rule,
        };
        return match B::fp8_quantize_operand(tensor, format, rule, false) {
            QuantOutput::Quantized(t, _) | QuantOutput::NonFinite(t, _) => {
                (t, CastOutcome::Skipped, logged.flatten())
            }
        };
    }
    let log = |bias: Option<i32>| {
        if recompute == CastRecompute::Log {
            context.log_cast(site.layer(), role, bias);
        }
    };
    // With peers, one reduction per activation or gradient cast whose bias comes from an amax,
    // on every path, so the peers' collective calls stay in step (weights are the same on all).
    let reducer = (role != Role::Weight)
        .then(|| context.amax_reducer())
        .flatten();
    let (own_rule, peers_amax) = match (reducer, own_rule) {
        (Some(reducer), BiasRule::Amax { margin }) => {
            let amax = reducer.reduce_max(B::fp8_amax(tensor.clone()));
            match amax_bias(amax, format, margin) {
                Ok(bias) => {
                    log(Some(bias));
                    (BiasRule::Constant(bias), Some(amax))
                }
                // Non-finite on some peer: every peer passes the tensor on unchanged.
                Err(_) => {
                    log(None);
                    return (tensor, CastOutcome::NonFinite(amax), None);
                }
            }
        }
        (_, rule) => (rule, None),
    };
    if policy.mode != Precision::Fp8Delayed {
        let (tensor, outcome) = match B::fp8_quantize_operand(tensor, format, own_rule, stats) {
            QuantOutput::Quantized(tensor, stats) => (tensor, CastOutcome::Quantized(stats)),
            QuantOutput::NonFinite(tensor, amax) => (tensor, CastOutcome::NonFinite(amax)),
        };
        return (tensor, outcome, None);
    }
    let rule = context
        .delayed_bias(site.layer(), role, policy, format)
        .map_or(own_rule, BiasRule::Constant);
    // The amax is always wanted: it joins the history (the peers' largest, with peers).
    match B::fp8_quantize_operand(tensor.clone(), format, rule, true) {
        QuantOutput::Quantized(out, Some(stats)) if stats.amax.is_finite() => {
            let amax = peers_amax.unwrap_or(stats.amax);
            context.record_amax(site.layer(), role, amax, policy.amax_history_len);
            log(Some(stats.bias));
            let outcome = CastOutcome::Quantized(recording.stats.then_some(stats));
            (out, outcome, Some(stats.bias))
        }
        // A non-finite amax under a history's bias: passed on unchanged, as under FP8-AMAX.
        QuantOutput::Quantized(_, stats) => {
            let amax = stats.map_or(f32::NAN, |s| s.amax);
            log(None);
            (tensor, CastOutcome::NonFinite(amax), None)
        }
        QuantOutput::NonFinite(tensor, amax) => {
            log(None);
            (tensor, CastOutcome::NonFinite(amax), None)
        }
    }
}

/// Which operands the forward of a named layer keeps for its backward.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Keep {
    /// q_E4(X), for dW (the weight takes a gradient).
    pub x: bool,
    /// q_E4(W) (or W, to cast again), for dX (the input takes a gradient).
    pub weight: bool,
}

impl Keep {
    /// Nothing: a forward without a backward (inference, untracked tensors).
    pub const NOTHING: Self = Self {
        x: false,
        weight: false,
    };
}

/// What the forward of a named layer keeps for its backward.
#[derive(Clone, Debug)]
pub struct SavedLinear<B: Fp8Kernels> {
    /// What the forward ran under.
    recording: Recording,
    /// q_E4(X), when dW is wanted.
    x: Option<FloatTensor<B>>,
    /// q_E4(W) (or W itself, to be cast again), when dX is wanted.
    weight: Option<Operand<B>>,
}

#[derive(Clone, Debug)]
enum Operand<B: Fp8Kernels> {
    Cast(FloatTensor<B>),
    /// To be cast again, with the forward's bias where it came from a history.
    Raw(FloatTensor<B>, Option<i32>),
    /// An FP8-stored weight: its codes are the cast.
    Stored(Fp8Weight),
}

/// Forward of the named layer `site`: `q_E4(x) @ q_E4(W) + b`, keeping what `keep` says the
/// backward will want.
pub fn site_forward<B: Fp8Kernels>(
    x: FloatTensor<B>,
    weight: FloatTensor<B>,
    bias: Option<FloatTensor<B>>,
    site: &Fp8Site,
    keep: Keep,
) -> (FloatTensor<B>, SavedLinear<B>) {
    let recording = site.context().snapshot();
    let layer = site.layer();
    let (x, x_cast, _) = site_cast::<B>(&recording, site, x, Role::Activation);
    let keep_raw_weight = keep.weight && !recording.policy.cache_weights;
    let raw_weight = keep_raw_weight.then(|| weight.clone());
    let (weight, w_cast, w_bias) = site_cast::<B>(&recording, site, weight, Role::Weight);
    site.context().record(|report| {
        report.add(layer, LinearOp::Forward, Role::Activation, &x_cast);
        report.add(layer, LinearOp::Forward, Role::Weight, &w_cast);
    });
    let saved = SavedLinear {
        x: keep.x.then(|| x.clone()),
        weight: match (keep.weight, raw_weight) {
            (false, _) => None,
            (true, Some(raw)) => Some(Operand::Raw(raw, w_bias)),
            (true, None) => Some(Operand::Cast(weight.clone())),
        },
        recording,
    };
    let formats = gemm_formats(policy_of(&saved), Role::Activation, Role::Weight);
    (
        gemm(|| kernel::linear::<B>(x, weight, bias, formats)),
        saved,
    )
}

/// The cast of an FP8-stored weight in the forward of `site`, when the policy casts the weight
/// to the stored format with the stored bias (what it does at every step for a weight that
/// does not change): the cast's outcome, with the bookkeeping a cast of the f32 weight does
/// (the amax joins an `fp8-delayed` history, its bias is logged for a recomputed forward).
/// `None`, with nothing recorded, when the policy would cast otherwise.
fn stored_weight_cast(
    recording: &Recording,
    site: &Fp8Site,
    weight: &Fp8Weight,
) -> Option<CastOutcome> {
    let policy = recording.policy.as_ref();
    if policy.mode == Precision::Bf16 {
        return None;
    }
    let (format, own_rule) = policy.rule_for(Role::Weight)?;
    if format != weight.format() {
        return None;
    }
    let (context, layer) = (site.context(), site.layer());
    let stats = weight.stats();
    let own_bias = bias_for(own_rule, stats.amax, format).ok()?;
    let delayed = policy.mode == Precision::Fp8Delayed;
    let recompute = context.cast_recompute(layer, Role::Weight);
    let bias = match recompute {
        CastRecompute::Replay(Some(Some(bias))) => bias,
        CastRecompute::Replay(Some(None)) => return None,
        CastRecompute::Replay(None) => own_bias,
        _ if delayed => context
            .delayed_bias(layer, Role::Weight, policy, format)
            .unwrap_or(own_bias),
        _ => own_bias,
    };
    if bias != weight.bias() {
        return None;
    }
    if let CastRecompute::Replay(_) = recompute {
        return Some(CastOutcome::Skipped);
    }
    if delayed {
        context.record_amax(layer, Role::Weight, stats.amax, policy.amax_history_len);
        if recompute == CastRecompute::Log {
            context.log_cast(layer, Role::Weight, Some(bias));
        }
    }
    Some(CastOutcome::Quantized(recording.stats.then_some(stats)))
}

/// Forward of the named layer `site` with an FP8-stored weight (frozen: no dW):
/// `q_E4(x) @ W + b`, keeping the weight for dX when `keep_weight`. Bit for bit
/// [`site_forward`] of the f32 weight the codes were made from. Where the policy would cast
/// the weight otherwise (another format or bias, `bf16`, FP8 off), the layer computes with the
/// weight's decoded values as [`site_forward`] does with an f32 weight.
pub fn site_forward_stored<B: Fp8Kernels>(
    x: FloatTensor<B>,
    weight: &Fp8Weight,
    bias: Option<FloatTensor<B>>,
    site: &Fp8Site,
    keep_weight: bool,
) -> (FloatTensor<B>, SavedLinear<B>) {
    let recording = site.context().snapshot();
    let Some(w_cast) = stored_weight_cast(&recording, site, weight) else {
        let w = kernel::decoded::<B>(weight, &B::float_device(&x));
        let keep = Keep {
            x: false,
            weight: keep_weight,
        };
        return site_forward::<B>(x, w, bias, site, keep);
    };
    let (x, x_cast, _) = site_cast::<B>(&recording, site, x, Role::Activation);
    site.context().record(|report| {
        report.add(site.layer(), LinearOp::Forward, Role::Activation, &x_cast);
        report.add(site.layer(), LinearOp::Forward, Role::Weight, &w_cast);
    });
    let saved = SavedLinear {
        x: None,
        weight: keep_weight.then(|| Operand::Stored(weight.clone())),
        recording,
    };
    (gemm(|| kernel::linear_stored::<B>(x, weight, bias)), saved)
}

/// Backward of the named layer `site`: `dX = q_E5(dY) @ q_E4(W)^T` and `dW = q_E4(X)^T @ q_E5(dY)`
/// (summed over the batch dimensions), each only when the forward kept its operand.
pub fn site_backward<B: Fp8Kernels>(
    saved: SavedLinear<B>,
    site: &Fp8Site,
    output_grad: FloatTensor<B>,
) -> (Option<FloatTensor<B>>, Option<FloatTensor<B>>) {
    let recording = &saved.recording;
    let policy = recording.policy.as_ref();
    let (dy, dy_cast, _) = site_cast::<B>(recording, site, output_grad, Role::Gradient);
    let op = if saved.weight.is_some() {
        LinearOp::BackwardX
    } else {
        LinearOp::BackwardWeight
    };
    site.context()
        .record(|report| report.add(site.layer(), op, Role::Gradient, &dy_cast));
    let dx = saved.weight.map(|w| {
        let w = match w {
            Operand::Cast(w) => w,
            // Cast again: the same tensor gives the same figures, already recorded.
            Operand::Raw(w, None) => operand_cast::<B>(policy, recording.stats, w, Role::Weight),
            Operand::Stored(w) => {
                return gemm(|| kernel::linear_x_backward_stored::<B>(&w, dy.clone()));
            }
            // The forward's bias, from a history that has moved on since.
            Operand::Raw(w, Some(bias)) => {
                let (format, _) = policy.rule_for(Role::Weight).expect("FP8 is on");
                match B::fp8_quantize_operand(w, format, BiasRule::Constant(bias), false) {
                    QuantOutput::Quantized(w, _) | QuantOutput::NonFinite(w, _) => w,
                }
            }
        };
        let formats = gemm_formats(policy, Role::Gradient, Role::Weight);
        gemm(|| kernel::linear_x_backward::<B>(w, dy.clone(), formats))
    });
    // One GEMM over all rows: [N, in]^T @ [N, out], N the product of the batch dimensions.
    let formats = gemm_formats(policy, Role::Activation, Role::Gradient);
    let dw = saved
        .x
        .map(|x| gemm(|| kernel::linear_weight_backward::<B>(x, dy, formats)));
    (dx, dw)
}

// ---- anonymous layers (thread-local policy) -------------------------------------------------

/// Casts an operand of an anonymous layer's GEMM, reporting to this thread's report.
fn cast_reported<B: Fp8Kernels>(
    policy: &Fp8Policy,
    layer: &LayerId,
    op: LinearOp,
    tensor: FloatTensor<B>,
    role: Role,
) -> FloatTensor<B> {
    let (tensor, outcome) = cast::<B>(policy, current_stats(), tensor, role);
    context::record(|report| report.add(layer, op, role, &outcome));
    tensor
}

/// Forward: `q_E4(x) @ q_E4(W) + b`.
pub fn forward<B: Fp8Kernels>(
    x: FloatTensor<B>,
    weight: FloatTensor<B>,
    bias: Option<FloatTensor<B>>,
) -> FloatTensor<B> {
    let policy = current_policy();
    if !policy.is_on() {
        return gemm(|| B::linear(x, weight, bias));
    }
    let (op, layer) = (LinearOp::Forward, next_call(LinearOp::Forward));
    let x = cast_reported::<B>(&policy, &layer, op, x, Role::Activation);
    let weight = cast_reported::<B>(&policy, &layer, op, weight, Role::Weight);
    gemm(|| B::linear(x, weight, bias))
}

/// Input gradient: `q_E5(dY) @ q_E4(W)^T`.
pub fn x_backward<B: Fp8Kernels>(
    weight: FloatTensor<B>,
    output_grad: FloatTensor<B>,
) -> FloatTensor<B> {
    let policy = current_policy();
    if !policy.is_on() {
        return gemm(|| B::linear_x_backward(weight, output_grad));
    }
    let (op, layer) = (LinearOp::BackwardX, next_call(LinearOp::BackwardX));
    let output_grad = cast_reported::<B>(&policy, &layer, op, output_grad, Role::Gradient);
    let weight = cast_reported::<B>(&policy, &layer, op, weight, Role::Weight);
    gemm(|| B::linear_x_backward(weight, output_grad))
}

/// Weight gradient: `q_E4(X)^T @ q_E5(dY)`, summed over batch dimensions.
pub fn weight_backward<B: Fp8Kernels>(
    x: FloatTensor<B>,
    output_grad: FloatTensor<B>,
) -> FloatTensor<B> {
    let policy = current_policy();
    if !policy.is_on() {
        return gemm(|| B::linear_weight_backward(x, output_grad));
    }
    let (op, layer) = (
        LinearOp::BackwardWeight,
        next_call(LinearOp::BackwardWeight),
    );
    let x = cast_reported::<B>(&policy, &layer, op, x, Role::Activation);
    let output_grad = cast_reported::<B>(&policy, &layer, op, output_grad, Role::Gradient);
    gemm(|| B::linear_weight_backward(x, output_grad))
}
