//! The anonymous path: FP8 for any model built from `burn::nn::Linear`, through a per-thread
//! policy. (A model that names its layers passes an [`crate::Fp8Site`] instead; see `site.rs`.)
//!
//! Burn's `linear` ops are static functions with no context argument, so the policy lives in a
//! thread-local slot installed for the duration of a computation ([`install`] returns a guard). Burn's
//! autodiff runs the backward pass on the thread that calls `backward()`, so the forward and the
//! backward of one step see the same policy. Tests running in parallel threads each have their own
//! slot; a thread with nothing installed runs with FP8 off.
//!
//! Statistics: every intercepted quantization is recorded (with its statistics when installed
//! with [`install_with_stats`]) with the linear call it belongs to. Forward calls are numbered 0, 1, ... in the order the model makes
//! them; Burn's autodiff replays the backward in reverse creation order, so the k-th layer whose
//! backward runs in a pass is forward call `n - 1 - k`. A forward call after backward calls starts
//! a new pass (the next micro-batch of a gradient accumulation).

use std::cell::RefCell;

use crate::policy::Fp8Policy;
use crate::report::{Fp8Report, LayerId, LinearOp};

#[derive(Default)]
struct Context {
    policy: Fp8Policy,
    /// Record every cast's statistics.
    stats: bool,
    pass: u32,
    forward_calls: u32,
    /// Layers whose backward has started in this pass.
    backward_layers: u32,
    /// The last backward call was a dX (its layer's dW, if any, comes next).
    after_x: bool,
    report: Fp8Report,
}

thread_local! {
    static SLOT: RefCell<Option<Context>> = const { RefCell::new(None) };
}

/// Restores the previously installed policy (or none) when dropped.
#[must_use = "the policy is uninstalled when the guard is dropped"]
pub struct Fp8Guard {
    previous: Option<Context>,
}

impl Drop for Fp8Guard {
    fn drop(&mut self) {
        let previous = self.previous.take();
        SLOT.with(|s| *s.borrow_mut() = previous);
    }
}

/// Makes `policy` this thread's FP8 policy until the guard is dropped.
///
/// # Panics
/// On `fp8-delayed`: its amax histories belong to layer names, which anonymous layers do not
/// have (name them with [`crate::Fp8Site`]s and call [`crate::fp8_linear`]).
pub fn install(policy: Fp8Policy) -> Fp8Guard {
    install_context(policy, false)
}

/// [`install`], every cast recorded with its statistics.
pub fn install_with_stats(policy: Fp8Policy) -> Fp8Guard {
    install_context(policy, true)
}

fn install_context(policy: Fp8Policy, stats: bool) -> Fp8Guard {
    assert!(
        policy.mode != crate::Precision::Fp8Delayed,
        "fp8-delayed needs named layers (Fp8Site): its amax histories are kept per layer name"
    );
    let context = Context {
        policy,
        stats,
        ..Context::default()
    };
    let previous = SLOT.with(|s| s.borrow_mut().replace(context));
    Fp8Guard { previous }
}

/// Runs `f` with `policy` installed on this thread.
pub fn with_policy<R>(policy: Fp8Policy, f: impl FnOnce() -> R) -> R {
    let _guard = install(policy);
    f()
}

/// Runs `f` with `policy` installed on this thread, every cast recorded with its statistics.
pub fn with_policy_and_stats<R>(policy: Fp8Policy, f: impl FnOnce() -> R) -> R {
    let _guard = install_with_stats(policy);
    f()
}

/// This thread's policy (FP8 off when none is installed).
pub fn current_policy() -> Fp8Policy {
    SLOT.with(|s| {
        s.borrow()
            .as_ref()
            .map(|c| c.policy.clone())
            .unwrap_or_else(Fp8Policy::off)
    })
}

/// Whether this thread's casts are recorded with their statistics.
pub(crate) fn current_stats() -> bool {
    SLOT.with(|s| s.borrow().as_ref().is_some_and(|c| c.stats))
}

/// Hands over everything recorded so far and starts a new step (call numbering from 0).
pub fn take_report() -> Fp8Report {
    SLOT.with(|s| match s.borrow_mut().as_mut() {
        Some(c) => {
            c.pass = 0;
            c.forward_calls = 0;
            c.backward_layers = 0;
            c.after_x = false;
            std::mem::take(&mut c.report)
        }
        None => Fp8Report::default(),
    })
}

/// Numbers a linear call. Called once per GEMM by the decorator.
pub(crate) fn next_call(op: LinearOp) -> LayerId {
    let (pass, index) = next_ordinal(op);
    LayerId::Ordinal { pass, index }
}

fn next_ordinal(op: LinearOp) -> (u32, u32) {
    SLOT.with(|s| {
        let mut slot = s.borrow_mut();
        let Some(c) = slot.as_mut() else {
            return (0, 0);
        };
        match op {
            LinearOp::Forward => {
                if c.backward_layers > 0 {
                    c.pass += 1;
                    c.forward_calls = 0;
                    c.backward_layers = 0;
                    c.after_x = false;
                }
                c.forward_calls += 1;
                (c.pass, c.forward_calls - 1)
            }
            // Burn's autodiff computes a layer's dX, then its dW, in one backward node
            // (burn-autodiff `ops/module.rs`). A dX always starts the next layer; a dW does unless
            // it follows its layer's dX (it is alone when the layer's input needs no gradient).
            LinearOp::BackwardX => {
                c.backward_layers += 1;
                c.after_x = true;
                (c.pass, c.forward_calls.saturating_sub(c.backward_layers))
            }
            LinearOp::BackwardWeight => {
                if !c.after_x {
                    c.backward_layers += 1;
                }
                c.after_x = false;
                (c.pass, c.forward_calls.saturating_sub(c.backward_layers))
            }
        }
    })
}

/// Adds to this thread's report (nothing when no policy is installed).
pub(crate) fn record(f: impl FnOnce(&mut Fp8Report)) {
    SLOT.with(|s| {
        if let Some(c) = s.borrow_mut().as_mut() {
            f(&mut c.report)
        }
    })
}
