//! Data-parallel peers agreeing on each cast's scale (Transformer Engine's amax reduction over
//! the data-parallel group).
//!
//! Under FP8-AMAX a tensor's scale comes from its own absolute maximum. When a batch is split
//! between peers, each peer's activations and gradients are a part of the batch's, and a part's
//! amax can fall in a lower binade than the whole's: its FP8 values, and so the training, would
//! differ from the same batch on one device. With an [`AmaxReducer`] on a model's
//! [`crate::Fp8Context`], every activation and gradient cast of a named layer takes its bias from
//! the largest amax over the peers, so 2 peers x batch 4 cast exactly what 1 device x batch 8
//! casts. (Under `fp8-delayed` the reduced amax is what joins the history, so every peer keeps
//! the same one.) Weights are not reduced: data parallelism keeps them identical on every peer.
//!
//! Every peer calls [`AmaxReducer::reduce_max`] for the same casts in the same order (the same
//! model on the same shapes does), so an implementation can be a collective operation; the
//! trainer's is an all-reduce of burn-collective.

/// Begins the panic message of a failed collective operation (a peer or a node stopped, or its
/// connection broke). A cast cannot return an error through Burn's ops, so it panics; the
/// trainer's binary recognises this prefix and ends the process with exit 1 and the message.
pub const COLLECTIVE_FAILED: &str = "the data-parallel collective failed";

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData, TensorPrimitive};
use burn_collective::{PeerId, ReduceOperation};

/// The largest of every peer's amax for one cast.
pub trait AmaxReducer: Send + Sync {
    /// The largest of the peers' `amax` (each peer passes its own, in the same order of casts);
    /// a NaN or infinite amax on any peer gives a non-finite result on every peer, so all of
    /// them see the same non-finite cast.
    fn reduce_max(&self, amax: f32) -> f32;
}

/// The [`AmaxReducer`] of a peer registered with burn-collective (`burn_collective::register`
/// on backend `B`, by every peer of the group before its first cast): one all-reduce (sum) of a
/// vector with one slot per peer, each peer's amax in its own slot, then the largest slot.
pub struct CollectiveAmax<B: Backend> {
    /// The peer's id in its process's collective.
    id: usize,
    /// Its slot among every peer of the group (all processes).
    slot: usize,
    slots: usize,
    device: B::Device,
}

impl<B: Backend> CollectiveAmax<B> {
    /// The reducer of peer `peer` (0-based) of `peers`, all in this process, whose vectors
    /// live on `device`.
    pub fn new(peer: usize, peers: usize, device: B::Device) -> Self {
        Self::in_group(peer, peer, peers, device)
    }

    /// The reducer of the peer registered as `id` in this process, which holds slot `slot` of
    /// the `slots` peers of a group over several processes (nodes).
    pub fn in_group(id: usize, slot: usize, slots: usize, device: B::Device) -> Self {
        assert!(slot < slots, "slot {slot} of {slots}");
        Self {
            id,
            slot,
            slots,
            device,
        }
    }
}

impl<B: Backend> AmaxReducer for CollectiveAmax<B>
where
    B::Device: Send + Sync,
{
    fn reduce_max(&self, amax: f32) -> f32 {
        let mut slots = vec![0.0f32; self.slots];
        slots[self.slot] = amax;
        let local = Tensor::<B, 1>::from_data(TensorData::new(slots, [self.slots]), &self.device);
        let id = PeerId::from(self.id as u32);
        let summed = burn_collective::all_reduce::<B>(
            id,
            local.into_primitive().tensor(),
            ReduceOperation::Sum,
        )
        .unwrap_or_else(|e| {
            panic!(
                "{COLLECTIVE_FAILED}: peer {}: the amax all-reduce: {e:?}",
                self.slot
            )
        });
        let summed = Tensor::<B, 1>::from_primitive(TensorPrimitive::Float(summed));
        // A slot holds one peer's amax plus zeros: exact.
        max_of(
            summed
                .into_data()
                .convert::<f32>()
                .into_vec::<f32>()
                .expect("f32 slots"),
        )
    }
}

/// The largest of `values`, NaN when any is NaN (`f32::max` would drop it).
pub fn max_of(values: impl IntoIterator<Item = f32>) -> f32 {
    values.into_iter().fold(f32::NEG_INFINITY, |m, v| {
        if v.is_nan() || m.is_nan() {
            f32::NAN
        } else {
            m.max(v)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nan_on_any_peer_wins() {
        assert_eq!(max_of([1.0, 3.0, 2.0]), 3.0);
        assert!(max_of([1.0, f32::NAN, 2.0]).is_nan());
        assert!(max_of([f32::NAN, 2.0]).is_nan());
        assert_eq!(max_of([1.0, f32::INFINITY]), f32::INFINITY);
        assert_eq!(max_of([]), f32::NEG_INFINITY);
    }
}
