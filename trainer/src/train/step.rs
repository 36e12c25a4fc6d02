//! One optimizer step's forward/backward with gradient accumulation, evaluation, and the
//! batch-to-tensor glue. Gradients come back to the host (f32, by HF name) where they are
//! summed over micro-batches, checked for non-finite values, clipped and handed to AdamW.

use burn::module::AutodiffModule;
use burn::tensor::activation::log_softmax;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{ElementConversion, Int, Tensor, TensorData};
use datasets::{Batch, DataLoader};
use fp8_backend::{Fp8Policy, Fp8Report};

use super::optimizer::AdamW;
use crate::model::names::{param_grad_tensors, replace_params};
use crate::model::{cross_entropy, Gpt2};

/// Test-only: at this step (1-based), the loss is multiplied by NaN before the backward pass,
/// which poisons every gradient and the FP8 gradient amax (exercises the non-finite policy).
pub const INJECT_NAN_ENV: &str = "FP8_TRAINER_INJECT_NAN_STEP";

/// What the forward/backward passes of one step produced.
pub struct StepGrads {
    /// Mean loss over the micro-batches.
    pub loss: f32,
    /// Summed gradients of every parameter (scaled by 1/grad_accum), in module order.
    pub grads: Vec<Option<Vec<f32>>>,
    /// Input tokens consumed.
    pub tokens: u64,
    /// What the FP8 decorator saw.
    pub report: Fp8Report,
}

/// Inputs `[B, T]`, targets `[B, T]` and the loss mask `[B, T]` (if any) of a batch.
pub fn batch_tensors<B: Backend>(
    batch: &Batch,
    device: &B::Device,
) -> (Tensor<B, 2, Int>, Tensor<B, 2, Int>, Option<Tensor<B, 2>>) {
    let shape = [batch.batch, batch.seq];
    let ints = |v: &[u32]| {
        let v: Vec<i64> = v.iter().map(|&t| t as i64).collect();
        Tensor::<B, 2, Int>::from_data(TensorData::new(v, shape), device)
    };
    let mask = batch
        .loss_mask
        .as_ref()
        .map(|m| Tensor::<B, 2>::from_data(TensorData::new(m.clone(), shape), device));
    (ints(&batch.inputs), ints(&batch.targets), mask)
}

/// Mean next-token cross-entropy of a batch; with a loss mask, the mean over masked-in tokens.
pub fn batch_loss<B: Backend>(model: &Gpt2<B>, batch: &Batch, device: &B::Device) -> Tensor<B, 1> {
    let (inputs, targets, mask) = batch_tensors::<B>(batch, device);
    let logits = model.forward(inputs);
    match mask {
        None => cross_entropy(logits, targets),
        Some(mask) => {
            let [b, t, _] = logits.dims();
            let nll = log_softmax(logits, 2)
                .gather(2, targets.unsqueeze_dim(2))
                .reshape([b, t])
                .neg(); // (B, T)
            let weight: f32 = batch
                .loss_mask
                .as_ref()
                .map(|m| m.iter().sum())
                .unwrap_or(1.0);
            (nll * mask).sum().div_scalar(weight.max(1.0))
        }
    }
}

/// Forward and backward of `grad_accum` micro-batches under `policy`.
pub fn forward_backward<B: AutodiffBackend>(
    model: &Gpt2<B>,
    loader: &mut DataLoader,
    grad_accum: usize,
    policy: Fp8Policy,
    inject_nan: bool,
    device: &B::Device,
) -> StepGrads {
    let _fp8 = fp8_backend::install(policy);
    // Summed on the device: one copy to the host per step, not per micro-batch. (On the CPU the
    // f32 additions are the same, in the same order, as summing on the host.)
    let mut sum: Vec<Option<Tensor<B::InnerBackend, 1>>> = Vec::new();
    let (mut loss_sum, mut tokens) = (0.0f64, 0u64);
    for _ in 0..grad_accum {
        let batch = loader.next_batch();
        tokens += (batch.batch * batch.seq) as u64;
        let mut loss = batch_loss(model, &batch, device);
        if inject_nan {
            loss = loss.mul_scalar(f32::NAN);
        }
        loss_sum += loss.clone().into_scalar().elem::<f64>();
        let grads = loss.div_scalar(grad_accum as f32).backward();
        let micro = param_grad_tensors(model, &grads);
        if sum.is_empty() {
            sum = micro.into_iter().map(|(_, g)| g).collect();
        } else {
            for (acc, (_, g)) in sum.iter_mut().zip(micro) {
                *acc = match (acc.take(), g) {
                    (Some(a), Some(g)) => Some(a + g),
                    (a, g) => a.or(g),
                };
            }
        }
    }
    let sum = sum
        .into_iter()
        .map(|g| g.map(|g| to_vec(g.into_data())))
        .collect();
    StepGrads {
        loss: (loss_sum / grad_accum as f64) as f32,
        grads: sum,
        tokens,
        report: fp8_backend::take_report(),
    }
}

/// Mean loss over the first `max_batches` batches of an evaluation pass (0 = all), weighted
/// by loss tokens, under `policy` (statistics off).
pub fn evaluate<B: AutodiffBackend>(
    model: &Gpt2<B>,
    loader: &DataLoader,
    max_batches: usize,
    policy: Fp8Policy,
    device: &burn::tensor::Device<B::InnerBackend>,
) -> Option<f32> {
    let _fp8 = fp8_backend::install(policy.with_stats(false));
    let model = model.valid();
    let limit = if max_batches == 0 {
        usize::MAX
    } else {
        max_batches
    };
    let (mut sum, mut weight) = (0.0f64, 0.0f64);
    for batch in loader.eval_pass().take(limit) {
        let n = batch.num_loss_tokens() as f64;
        let loss = batch_loss(&model, &batch, device)
            .into_scalar()
            .elem::<f64>();
        sum += loss * n;
        weight += n;
    }
    (weight > 0.0).then(|| (sum / weight) as f32)
}

/// Global L2 norm of the gradients (f64 accumulation).
pub fn global_norm(grads: &[Option<Vec<f32>>]) -> f64 {
    grads
        .iter()
        .flatten()
        .flat_map(|g| g.iter())
        .map(|&x| (x as f64) * (x as f64))
        .sum::<f64>()
        .sqrt()
}

/// Scales gradients so their global norm is at most `max_norm` (PyTorch's
/// `clip_grad_norm_`: factor max_norm / (norm + 1e-6), applied only when below 1).
pub fn clip(grads: &mut [Option<Vec<f32>>], norm: f64, max_norm: f64) {
    if max_norm <= 0.0 {
        return;
    }
    let factor = max_norm / (norm + 1e-6);
    if factor < 1.0 {
        let f = factor as f32;
        grads
            .iter_mut()
            .flatten()
            .for_each(|g| g.iter_mut().for_each(|x| *x *= f));
    }
}

/// The model with the optimizer's master values as its parameters.
pub fn load_params<B: Backend>(model: Gpt2<B>, optimizer: &AdamW, device: &B::Device) -> Gpt2<B> {
    let index: std::collections::HashMap<&str, usize> = optimizer
        .params
        .iter()
        .enumerate()
        .map(|(i, p)| (p.name.as_str(), i))
        .collect();
    replace_params(
        model,
        |name, shape| {
            let p = &optimizer.params[*index.get(name).ok_or(())?];
            Ok::<_, ()>(TensorData::new(p.value.clone(), shape.to_vec()))
        },
        device,
    )
    .expect("the optimizer holds every parameter of the model")
}

/// (name, shape, values) of every parameter, in module order.
pub fn host_params<B: Backend>(model: &Gpt2<B>) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    crate::model::names::param_values(model)
        .into_iter()
        .map(|(name, data)| {
            let shape = data.shape.to_vec();
            (name, shape, to_vec(data))
        })
        .collect()
}

fn to_vec(data: TensorData) -> Vec<f32> {
    data.convert::<f32>()
        .into_vec::<f32>()
        .expect("converted to f32")
}
