//! Named FP8 layers: how a model tells the decorator which layer a linear call is, under which
//! policy, and where its statistics go.
//!
//! A model creates one [`Fp8Context`] and gives each of its FP8 linear layers an [`Fp8Site`]
//! (the layer's name and the shared context), passed to [`crate::fp8_linear`] at every call.
//! The forward takes a snapshot of the context's policy; the backward of the same call uses that
//! snapshot, so a step's forward and backward always agree and nothing depends on the order or
//! the thread in which Burn's autodiff runs the backward pass.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::delayed::{AmaxHistories, AmaxHistory};
use crate::format::{Fp8Format, Role};
use crate::peers::AmaxReducer;
use crate::policy::Fp8Policy;
use crate::report::{Fp8Report, LayerId};

/// The FP8 policy in force for a model's named layers, what their casts recorded, and the amax
/// histories of `fp8-delayed` (`crate::delayed`). Cloning shares it (an `Arc`).
#[derive(Clone, Default)]
pub struct Fp8Context {
    shared: Arc<Mutex<Shared>>,
}

#[derive(Default)]
struct Shared {
    policy: Arc<Fp8Policy>,
    /// Record every cast's statistics (the training loop's switch for sampled steps).
    stats: bool,
    report: Fp8Report,
    histories: AmaxHistories,
    /// Data-parallel peers' amax reduction (`crate::peers`); `None` on a single device.
    reducer: Option<Arc<dyn AmaxReducer>>,
    /// Forward casts of a pass that will be recomputed (activation checkpointing).
    casts: CastLog,
}

/// The forward casts of a pass that activation checkpointing recomputes: the first forward
/// logs the bias of every cast whose bias is not a function of the tensor alone (a history's,
/// under `fp8-delayed`, or the data-parallel peers' largest amax), and the recomputed forward
/// casts again with the logged biases, recording nothing (no statistics, no history, no peer
/// reduction), so it produces the first forward's operands bit for bit.
#[derive(Default)]
enum CastLog {
    #[default]
    Off,
    Logging(HashMap<(LayerId, Role), Option<i32>>),
    Replaying(HashMap<(LayerId, Role), Option<i32>>),
}

/// What a forward cast does under the context's [`CastLog`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CastRecompute {
    /// An ordinary cast (recorded as usual).
    Normal,
    /// A first forward: log the bias where it does not follow from the tensor alone.
    Log,
    /// A recomputed forward: `Some(Some(bias))` the logged bias, `Some(None)` passed on
    /// unchanged (its amax was not finite), `None` nothing logged (the bias is the tensor's
    /// own amax's, computed again).
    Replay(Option<Option<i32>>),
}

impl Fp8Context {
    /// A context with `policy` in force.
    pub fn new(policy: Fp8Policy) -> Self {
        let context = Self::default();
        context.set_policy(policy);
        context
    }

    fn lock(&self) -> MutexGuard<'_, Shared> {
        // A panic while the lock was held cannot leave `Shared` half updated (each update is
        // one assignment or push), so a poisoned lock is still usable.
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The policy calls made from now on use.
    pub fn policy(&self) -> Arc<Fp8Policy> {
        self.lock().policy.clone()
    }

    /// What calls made from now on run under: the policy and whether their casts' statistics
    /// are recorded.
    pub(crate) fn snapshot(&self) -> Recording {
        let shared = self.lock();
        Recording {
            policy: shared.policy.clone(),
            stats: shared.stats,
        }
    }

    /// Replaces the policy (calls already made keep theirs for their backward).
    pub fn set_policy(&self, policy: Fp8Policy) {
        self.lock().policy = Arc::new(policy);
    }

    /// Turns statistics on or off for the calls made from now on (a [`crate::QuantRecord`] for
    /// every cast; the training loop turns them on for the steps that
    /// [`Fp8Policy::stats_every`] samples).
    pub fn set_stats(&self, stats: bool) {
        self.lock().stats = stats;
    }

    /// Makes every activation and gradient cast of this context's layers take its scale from
    /// the largest amax over the data-parallel peers (`crate::peers`), until set to `None`.
    /// Evaluation on one peer alone must run without it (the others would not join the casts).
    pub fn set_amax_reducer(&self, reducer: Option<Arc<dyn AmaxReducer>>) {
        self.lock().reducer = reducer;
    }

    /// The peers' amax reduction, when one is set.
    pub fn amax_reducer(&self) -> Option<Arc<dyn AmaxReducer>> {
        self.lock().reducer.clone()
    }

    /// Hands over everything recorded since the last call.
    pub fn take_report(&self) -> Fp8Report {
        std::mem::take(&mut self.lock().report)
    }

    /// The site of the layer called `name`.
    pub fn site(&self, name: &str) -> Fp8Site {
        Fp8Site {
            layer: LayerId::Named(name.into()),
            context: self.clone(),
        }
    }

    pub(crate) fn record(&self, f: impl FnOnce(&mut Fp8Report)) {
        f(&mut self.lock().report)
    }

    /// The amax history of one tensor, oldest first.
    pub fn amax_history(&self, layer: &LayerId, role: Role) -> Vec<f32> {
        self.lock().histories.of(layer, role)
    }

    /// The bias `fp8-delayed` gives the next cast of a tensor: from its history, `None` when
    /// the history holds no non-zero amax (the cast then scales from its own).
    pub(crate) fn delayed_bias(
        &self,
        layer: &LayerId,
        role: Role,
        policy: &Fp8Policy,
        format: Fp8Format,
    ) -> Option<i32> {
        let margin = policy.margin(role);
        (self.lock().histories).bias(layer, role, policy.amax_compute_algo, format, margin)
    }

    /// Appends a cast's amax to its tensor's history (kept to `len`; not while frozen).
    pub(crate) fn record_amax(&self, layer: &LayerId, role: Role, amax: f32, len: usize) {
        self.lock().histories.record(layer, role, amax, len)
    }

    /// Every amax history, by layer name and role (what a checkpoint saves).
    pub fn amax_histories(&self) -> Vec<AmaxHistory> {
        self.lock().histories.export()
    }

    /// Replaces every amax history (what a resumed run restores).
    pub fn restore_amax_histories(&self, histories: Vec<AmaxHistory>) {
        self.lock().histories.restore(histories)
    }

    /// Starts a forward pass that activation checkpointing will recompute: its casts are
    /// logged (see [`Fp8Context::replay_forward_casts`]). The statistics and histories record
    /// this pass as usual.
    pub fn log_forward_casts(&self) {
        self.lock().casts = CastLog::Logging(HashMap::new());
    }

    /// From now on the forward casts are the logged pass's again: each layer's operands take
    /// the logged biases and record nothing (each layer is cast once per pass, so a layer and
    /// role name one logged cast). Until [`Fp8Context::end_cast_log`].
    ///
    /// # Panics
    /// Without a logged pass.
    pub fn replay_forward_casts(&self) {
        let mut shared = self.lock();
        match std::mem::take(&mut shared.casts) {
            CastLog::Logging(log) | CastLog::Replaying(log) => {
                shared.casts = CastLog::Replaying(log)
            }
            CastLog::Off => panic!("replay_forward_casts without log_forward_casts"),
        }
    }

    /// Casts are ordinary again; the log is dropped.
    pub fn end_cast_log(&self) {
        self.lock().casts = CastLog::Off;
    }

    /// What a forward cast of `layer`'s `role` does under the cast log.
    pub(crate) fn cast_recompute(&self, layer: &LayerId, role: Role) -> CastRecompute {
        match &self.lock().casts {
            CastLog::Off => CastRecompute::Normal,
            CastLog::Logging(_) => CastRecompute::Log,
            CastLog::Replaying(log) => {
                CastRecompute::Replay(log.get(&(layer.clone(), role)).copied())
            }
        }
    }

    /// Logs the bias a forward cast used (`None`: passed on unchanged).
    pub(crate) fn log_cast(&self, layer: &LayerId, role: Role, bias: Option<i32>) {
        if let CastLog::Logging(log) = &mut self.lock().casts {
            log.insert((layer.clone(), role), bias);
        }
    }

    /// Until the guard is dropped, casts use the amax histories but add nothing to them (an
    /// evaluation pass must not change what training does next).
    pub fn freeze_amax_histories(&self) -> FrozenHistories {
        let was = std::mem::replace(&mut self.lock().histories.frozen, true);
        FrozenHistories {
            context: self.clone(),
            was,
        }
    }
}

/// Unfreezes the histories of a context when dropped (see
/// [`Fp8Context::freeze_amax_histories`]).
#[must_use = "the histories are unfrozen when the guard is dropped"]
pub struct FrozenHistories {
    context: Fp8Context,
    was: bool,
}

impl Drop for FrozenHistories {
    fn drop(&mut self) {
        self.context.lock().histories.frozen = self.was;
    }
}

impl fmt::Debug for Fp8Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shared = self.lock();
        f.debug_struct("Fp8Context")
            .field("policy", &shared.policy)
            .field("stats", &shared.stats)
            .field("records", &shared.report.records.len())
            .finish()
    }
}

/// The policy a linear call runs under, and whether its casts' statistics are recorded: a
/// snapshot taken by the forward, which its backward uses too.
#[derive(Clone, Debug)]
pub(crate) struct Recording {
    pub policy: Arc<Fp8Policy>,
    pub stats: bool,
}

/// One named FP8 linear layer: its identity and the context it reports to.
#[derive(Clone, Debug)]
pub struct Fp8Site {
    layer: LayerId,
    context: Fp8Context,
}

impl Fp8Site {
    /// The layer's name.
    pub fn name(&self) -> &str {
        self.layer.name().expect("a site is always named")
    }

    /// The layer as it appears in records.
    pub fn layer(&self) -> &LayerId {
        &self.layer
    }

    /// The context the site reports to.
    pub fn context(&self) -> &Fp8Context {
        &self.context
    }
}
