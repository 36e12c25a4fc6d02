//! The language-model loss as one op: the weighted mean next-token cross-entropy of logits
//! `[N, V]`, `Σ_i w_i (logsumexp(x_i) - x_i[t_i]) / divisor`, with its own autodiff node.
//!
//! Composed from Burn's ops, the loss is a `log_softmax` (five passes over the logits, each
//! allocating), a `gather`, and in the backward a zeroed `[N, V]` buffer, a scatter into it and
//! the `log_softmax` backward. For GPT-2's 50257-token vocabulary these `[N, V]` passes rival the
//! LM head's GEMM. Here the forward reads the logits twice (row max, then the sum of
//! exponentials) and keeps them with each row's log-sum-exp; the backward turns them in place
//! into `(softmax(x_i) - onehot(t_i)) * w_i * g / divisor`, one pass, no allocation.
//!
//! On the CPU backends (host slices, see [`crate::host`]); elsewhere [`FusedCrossEntropy`]
//! declines and the caller composes the loss from Burn's ops.

use std::sync::Arc;

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

use super::device::DeviceTargets;
use super::vmath::{self, Isa};
use crate::host::{from_host, HostTensors};

/// What the loss compares the logits with.
#[derive(Debug)]
pub struct Targets {
    /// The target token of every row.
    pub tokens: Vec<u32>,
    /// Each row's weight (a loss mask); `None`: all 1.
    pub weights: Option<Vec<f32>>,
    /// The sum is divided by this (the row count, or the mask's sum).
    pub divisor: f32,
}

impl Targets {
    fn weight(&self, row: usize) -> f32 {
        self.weights.as_ref().map_or(1.0, |w| w[row])
    }

    fn on_device(&self) -> DeviceTargets<'_> {
        DeviceTargets {
            tokens: &self.tokens,
            weights: self.weights.as_deref(),
            divisor: self.divisor,
        }
    }
}

/// Backends that compute [`Targets`]' loss of logits `[N, V]` as one op; `Err(logits)`
/// returns the logits to a caller that must compose the loss itself.
pub trait FusedCrossEntropy: Backend {
    /// The loss, a one-element tensor.
    fn fused_cross_entropy(
        logits: FloatTensor<Self>,
        targets: &Arc<Targets>,
    ) -> Result<FloatTensor<Self>, FloatTensor<Self>>;
}

/// Each row's log-sum-exp and the weighted sum of the row losses.
fn forward_rows(logits: &[f32], vocab: usize, targets: &Targets) -> (f64, Vec<f32>) {
    let isa = Isa::best();
    let rows: Vec<(f64, f32)> = logits
        .par_chunks(vocab)
        .enumerate()
        .map(|(i, x)| {
            let max = x.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
            let sum = vmath::sum_exp_shifted(isa, x, max);
            let lse = max + sum.ln();
            let loss = lse - x[targets.tokens[i] as usize];
            (f64::from(targets.weight(i)) * f64::from(loss), lse)
        })
        .collect();
    let total = rows.iter().map(|(l, _)| l).sum();
    (total, rows.into_iter().map(|(_, lse)| lse).collect())
}

/// The logits' gradient, in place: `(exp(x - lse_i) - onehot(t_i)) * w_i * scale`.
fn backward_rows(logits: &mut [f32], vocab: usize, targets: &Targets, lse: &[f32], scale: f32) {
    let isa = Isa::best();
    logits.par_chunks_mut(vocab).enumerate().for_each(|(i, x)| {
        let s = scale * targets.weight(i);
        vmath::exp_affine(isa, x, 1.0, lse[i], s);
        x[targets.tokens[i] as usize] -= s;
    });
}

fn vocab_of<B: Backend>(logits: &FloatTensor<B>, targets: &Targets) -> usize {
    let shape = logits.shape();
    assert_eq!(
        shape.num_dims(),
        2,
        "fused cross-entropy takes [N, V] logits"
    );
    assert_eq!(shape[0], targets.tokens.len(), "one target per row");
    shape[1]
}

impl<B: HostTensors + Fp8Kernels> FusedCrossEntropy for Fp8<B> {
    fn fused_cross_entropy(
        logits: FloatTensor<Self>,
        targets: &Arc<Targets>,
    ) -> Result<FloatTensor<Self>, FloatTensor<Self>> {
        let vocab = vocab_of::<Self>(&logits, targets);
        let Some(values) = B::host_slice(&logits) else {
            return match B::device_cross_entropy(&logits, &targets.on_device()) {
                Some([loss, _]) => Ok(loss),
                None => Err(logits),
            };
        };
        let (total, _) = forward_rows(values, vocab, targets);
        let device = B::float_device(&logits);
        Ok(from_host::<B>(
            vec![(total / f64::from(targets.divisor)) as f32],
            vec![1],
            &device,
        ))
    }
}

/// The backward node: the logits (to become their gradient), each row's log-sum-exp, the targets.
#[derive(Debug)]
struct CrossEntropyBackward;

/// Each row's log-sum-exp: in host memory for the host pass, a tensor for the device kernels.
#[derive(Debug, Clone)]
enum Lse<B: Backend> {
    Host(Arc<Vec<f32>>),
    Device(FloatTensor<B>),
}

impl<B: HostTensors + Fp8Kernels> Backward<Fp8<B>, 1> for CrossEntropyBackward {
    type State = (FloatTensor<B>, Lse<B>, Arc<Targets>);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node] = ops.parents;
        let upstream = grads.consume::<Fp8<B>>(&ops.node);
        let Some(node) = node else { return };
        let (logits, lse, targets) = ops.state;
        let lse = match lse {
            Lse::Host(lse) => lse,
            Lse::Device(lse) => {
                let grad =
                    B::device_cross_entropy_backward(logits, &lse, &targets.on_device(), &upstream);
                grads.register::<Fp8<B>>(node.id, grad);
                return;
            }
        };
        let g = B::host_slice(&upstream).expect("a host tensor")[0];
        let vocab = vocab_of::<B>(&logits, &targets);
        let mut grad = B::host_exclusive(logits).expect("a host tensor");
        backward_rows(
            B::host_mut(&mut grad),
            vocab,
            &targets,
            &lse,
            g / targets.divisor,
        );
        grads.register::<Fp8<B>>(node.id, grad);
    }
}

impl<B: HostTensors + Fp8Kernels, C: CheckpointStrategy> FusedCrossEntropy for Autodiff<Fp8<B>, C> {
    fn fused_cross_entropy(
        logits: FloatTensor<Self>,
        targets: &Arc<Targets>,
    ) -> Result<FloatTensor<Self>, FloatTensor<Self>> {
        let vocab = vocab_of::<B>(&logits.primitive, targets);
        let (loss, lse) = match B::host_slice(&logits.primitive) {
            Some(values) => {
                let (total, lse) = forward_rows(values, vocab, targets);
                let device = B::float_device(&logits.primitive);
                let loss = from_host::<B>(
                    vec![(total / f64::from(targets.divisor)) as f32],
                    vec![1],
                    &device,
                );
                (loss, Lse::Host(Arc::new(lse)))
            }
            None => match B::device_cross_entropy(&logits.primitive, &targets.on_device()) {
                Some([loss, lse]) => (loss, Lse::Device(lse)),
                None => return Err(logits),
            },
        };
        Ok(
            match CrossEntropyBackward
                .prepare::<C>([logits.node.clone()])
                .compute_bound()
                .stateful()
            {
                OpsKind::Tracked(prep) => {
                    prep.finish((logits.primitive, lse, targets.clone()), loss)
                }
                OpsKind::UnTracked(prep) => prep.finish(loss),
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use burn::backend::{Autodiff, Flex, NdArray};
    use burn::tensor::{Int, Tensor, TensorData, TensorPrimitive};

    use super::*;

    /// The fused loss and gradient against the ones composed from Burn's ops. Both are f32
    /// with different summation orders (measured here: loss 1.0e-7, gradient 3.6e-7 relative to
    /// the largest element); a missing weight, a wrong divisor or an off-by-one target moves
    /// them by 1e-2 or more.
    const FUSED_REL_TOL: f32 = 1e-5;

    fn rel(a: &[f32], b: &[f32]) -> f32 {
        let scale = b.iter().fold(0f32, |m, x| m.max(x.abs()));
        a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
    }

    #[test]
    fn fused_loss_and_gradient_equal_the_composed_ones() {
        fused_equals_composed::<Flex>();
        fused_equals_composed::<NdArray<f32>>();
    }

    fn fused_equals_composed<B: HostTensors + Fp8Kernels>() {
        type Ad<B> = Autodiff<Fp8<B>>;
        let (n, v) = (6, 37);
        let values: Vec<f32> = (0..n * v)
            .map(|i| ((i * 7919 % 1000) as f32 / 100.0 - 5.0) * if i % 11 == 0 { 3.0 } else { 1.0 })
            .collect();
        let tokens: Vec<u32> = (0..n as u32).map(|i| (i * 13 + 5) % v as u32).collect();
        for mask in [None, Some(vec![1.0, 0.0, 1.0, 1.0, 0.0, 1.0])] {
            let d = Default::default();
            let logits = || {
                Tensor::<Ad<B>, 2>::from_data(TensorData::new(values.clone(), [n, v]), &d)
                    .require_grad()
            };
            let weight = mask.as_ref().map(|m| m.iter().sum::<f32>());
            let targets = Arc::new(Targets {
                tokens: tokens.clone(),
                weights: mask.clone(),
                divisor: weight.unwrap_or(n as f32),
            });
            let x = logits();
            let fused = Ad::<B>::fused_cross_entropy(x.clone().into_primitive().tensor(), &targets)
                .expect("flex is a host backend");
            let fused = Tensor::<Ad<B>, 1>::from_primitive(TensorPrimitive::Float(fused));
            let fused_grad = x.grad(&fused.clone().backward()).unwrap();

            let y = logits();
            let ids: Vec<i64> = tokens.iter().map(|&t| t as i64).collect();
            let ids = Tensor::<Ad<B>, 2, Int>::from_data(TensorData::new(ids, [n, 1]), &d);
            let nll = burn::tensor::activation::log_softmax(y.clone(), 1)
                .gather(1, ids)
                .neg();
            let w = mask.clone().unwrap_or(vec![1.0; n]);
            let w = Tensor::<Ad<B>, 2>::from_data(TensorData::new(w, [n, 1]), &d);
            let composed = (nll * w).sum().div_scalar(targets.divisor);
            let composed_grad = y.grad(&composed.clone().backward()).unwrap();

            let host = |t: Tensor<Fp8<B>, 2>| t.into_data().to_vec::<f32>().unwrap();
            let (a, b) = (
                fused.into_data().to_vec::<f32>().unwrap(),
                composed.into_data().to_vec::<f32>().unwrap(),
            );
            assert!(
                rel(&a, &b) < FUSED_REL_TOL,
                "loss {a:?} vs {b:?} (mask {mask:?})"
            );
            let (ga, gb) = (host(fused_grad), host(composed_grad));
            println!(
                "mask {}: loss rel {:e}, gradient rel {:e}",
                mask.is_some(),
                rel(&a, &b),
                rel(&ga, &gb)
            );
            assert!(
                rel(&ga, &gb) < FUSED_REL_TOL,
                "gradient differs by {:e} (mask {mask:?})",
                rel(&ga, &gb)
            );
        }
    }
}
