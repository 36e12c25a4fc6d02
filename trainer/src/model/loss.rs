//! Losses and evaluation passes over data batches: the one loss loop that `train` (validation),
//! `eval` and `dump-step` share.

use std::sync::Arc;

use burn::tensor::activation::log_softmax;
use burn::tensor::backend::Backend;
use burn::tensor::{ElementConversion, Int, Tensor, TensorData, TensorPrimitive};
use datasets::Batch;

use super::ops::cross_entropy::Targets;
use super::{Model, ModelBackend, Segments};

/// Inputs `[B, T]`, targets `[B, T]` and the loss mask `[B, T]` (if any) of a batch.
pub type BatchTensors<B> = (Tensor<B, 2, Int>, Tensor<B, 2, Int>, Option<Tensor<B, 2>>);

/// The tensors of a batch on `device`.
pub fn batch_tensors<B: Backend>(batch: &Batch, device: &B::Device) -> BatchTensors<B> {
    let (targets, mask) = targets_and_mask(batch, device);
    (batch_inputs(batch, device), targets, mask)
}

/// Token ids `[B, T]` as an int tensor on `device`.
fn token_tensor<B: Backend>(batch: &Batch, ids: &[u32], device: &B::Device) -> Tensor<B, 2, Int> {
    let ids: Vec<i64> = ids.iter().map(|&t| t as i64).collect();
    Tensor::from_data(TensorData::new(ids, [batch.batch, batch.seq]), device)
}

/// The batch's inputs `[B, T]` on `device`.
pub fn batch_inputs<B: Backend>(batch: &Batch, device: &B::Device) -> Tensor<B, 2, Int> {
    token_tensor(batch, &batch.inputs, device)
}

/// The batch's targets `[B, T]` and loss mask (if any) on `device`.
fn targets_and_mask<B: Backend>(
    batch: &Batch,
    device: &B::Device,
) -> (Tensor<B, 2, Int>, Option<Tensor<B, 2>>) {
    let shape = [batch.batch, batch.seq];
    let mask = batch
        .loss_mask
        .as_ref()
        .map(|m| Tensor::<B, 2>::from_data(TensorData::new(m.clone(), shape), device));
    (token_tensor(batch, &batch.targets, device), mask)
}

/// Mean next-token cross-entropy of a batch; with a loss mask, the mean over masked-in tokens
/// (the fused op where the backend has it, else composed from Burn's ops).
pub fn batch_loss<B: ModelBackend>(
    model: &Model<B>,
    batch: &Batch,
    device: &B::Device,
) -> Tensor<B, 1> {
    // Packed: one row of the examples, the windows' tail padding left out.
    let compact = batch.without_padding();
    let batch = compact.as_ref().unwrap_or(batch);
    let segments = Segments::of(batch);
    let logits = model.forward_packed(batch_inputs(batch, device), segments.as_ref());
    logits_loss(logits, batch, device)
}

/// [`batch_loss`] of the batch's logits `[B, T, V]`.
pub fn logits_loss<B: ModelBackend>(
    logits: Tensor<B, 3>,
    batch: &Batch,
    device: &B::Device,
) -> Tensor<B, 1> {
    let [b, t, v] = logits.dims();
    let weight = batch.loss_mask.as_ref().map(|m| m.iter().sum::<f32>());
    let fused = Arc::new(Targets {
        tokens: batch.targets.clone(),
        weights: batch.loss_mask.clone(),
        divisor: weight.map_or((b * t) as f32, |w| w.max(1.0)),
    });
    let flat = logits.reshape([b * t, v]).into_primitive().tensor();
    let logits = match B::fused_cross_entropy(flat, &fused) {
        Ok(loss) => return Tensor::from_primitive(TensorPrimitive::Float(loss)),
        Err(flat) => {
            Tensor::<B, 2>::from_primitive(TensorPrimitive::Float(flat)).reshape([b, t, v])
        }
    };
    // Composed from Burn's ops (a backend without the fused loss).
    let (targets, mask) = targets_and_mask::<B>(batch, device);
    match mask {
        None => mean_cross_entropy(logits, targets),
        Some(mask) => (token_log_probs(logits, targets) * mask)
            .sum()
            .neg()
            .div_scalar(weight.unwrap_or(1.0).max(1.0)),
    }
}

/// Mean cross-entropy over every position, composed from Burn's ops:
/// `-mean(log_softmax(logits)[target])`. `logits` `[B, T, V]`, `targets` `[B, T]`; returns a
/// one-element tensor.
pub fn mean_cross_entropy<B: Backend>(
    logits: Tensor<B, 3>,
    targets: Tensor<B, 2, Int>,
) -> Tensor<B, 1> {
    let log_probs = log_softmax(logits, 2);
    log_probs.gather(2, targets.unsqueeze_dim(2)).mean().neg() // gather: (B, T, 1)
}

/// `log p(target)` at every position: `[B, T, V]`, `[B, T]` -> `[B, T]`.
fn token_log_probs<B: Backend>(logits: Tensor<B, 3>, targets: Tensor<B, 2, Int>) -> Tensor<B, 2> {
    let [b, t, _] = logits.dims();
    log_softmax(logits, 2)
        .gather(2, targets.unsqueeze_dim(2))
        .reshape([b, t])
}

/// The mean loss of an evaluation pass and the loss tokens it covered.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PassLoss {
    /// Mean cross-entropy per loss token (nats).
    pub loss: f64,
    /// Loss tokens evaluated.
    pub tokens: u64,
}

/// Mean loss over `batches`, each batch weighted by its loss tokens; `None` when they hold none.
pub fn mean_loss<B: ModelBackend>(
    model: &Model<B>,
    batches: impl Iterator<Item = Batch>,
    device: &B::Device,
) -> Option<PassLoss> {
    let (mut sum, mut tokens) = (0.0f64, 0u64);
    for batch in batches {
        let n = batch.num_loss_tokens() as u64;
        let loss = batch_loss(model, &batch, device)
            .into_scalar()
            .elem::<f64>();
        sum += loss * n as f64;
        tokens += n;
    }
    (tokens > 0).then(|| PassLoss {
        loss: sum / tokens as f64,
        tokens,
    })
}

/// Log-likelihood of each row's masked-in tokens (classification: a label word's score).
pub fn row_scores<B: ModelBackend>(
    model: &Model<B>,
    batch: &Batch,
    device: &B::Device,
) -> Vec<f32> {
    let (inputs, targets, mask) = batch_tensors::<B>(batch, device);
    let logp = token_log_probs(model.forward(inputs), targets);
    let logp = match mask {
        Some(mask) => logp * mask,
        None => logp,
    };
    logp.sum_dim(1)
        .into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .expect("f32")
}
