//! One optimizer step's forward/backward with gradient accumulation, the gradient norm and
//! clipping, and the model's parameters from the optimizer. Gradients are summed over
//! micro-batches on the device and come back to the host (f32, by HF name) once per step, where
//! they are checked for non-finite values, clipped and handed to AdamW.

use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{ElementConversion, Tensor, TensorData};
use datasets::DataLoader;
use fp8_backend::{Fp8LinearOps, Fp8Report};

use super::optimizer::AdamW;
use crate::model::loss::batch_loss;
use crate::model::names::{param_grad_tensors, replace_params};
use crate::model::Gpt2;

/// Test-only: at this step (1-based), the loss is multiplied by NaN before the backward pass,
/// which poisons every gradient and the FP8 gradient amax (exercises the non-finite policy).
pub const INJECT_NAN_ENV: &str = "FP8_TRAINER_INJECT_NAN_STEP";
/// Test-only: the same with +infinity.
pub const INJECT_INF_ENV: &str = "FP8_TRAINER_INJECT_INF_STEP";

/// The test-only injection the environment asks for: (step, factor of that step's loss).
pub fn injection_from_env() -> Option<(u64, f32)> {
    let at = |name: &str| std::env::var(name).ok().and_then(|v| v.parse::<u64>().ok());
    (at(INJECT_NAN_ENV).map(|s| (s, f32::NAN))).or(at(INJECT_INF_ENV).map(|s| (s, f32::INFINITY)))
}

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

/// Forward and backward of `grad_accum` micro-batches. With `sample_stats`, the FP8 casts of
/// the first micro-batch are recorded (a layer's figures barely move between micro-batches).
pub fn forward_backward<B: AutodiffBackend + Fp8LinearOps>(
    model: &Gpt2<B>,
    loader: &mut DataLoader,
    grad_accum: usize,
    sample_stats: bool,
    poison: Option<f32>,
    device: &B::Device,
) -> StepGrads {
    let fp8 = model.fp8();
    // Whatever an evaluation pass left (its non-finite events) is not this step's.
    fp8.take_report();
    // Summed on the device: one copy to the host per step, not per micro-batch. (On the CPU the
    // f32 additions are the same, in the same order, as summing on the host.)
    let mut sum: Vec<Option<Tensor<B::InnerBackend, 1>>> = Vec::new();
    let (mut loss_sum, mut tokens) = (0.0f64, 0u64);
    for micro in 0..grad_accum {
        fp8.set_stats(sample_stats && micro == 0);
        let batch = loader.next_batch();
        tokens += (batch.batch * batch.seq) as u64;
        let mut loss = batch_loss(model, &batch, device);
        if let Some(factor) = poison {
            loss = loss.mul_scalar(factor);
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
    fp8.set_stats(false);
    let sum = sum
        .into_iter()
        .map(|g| g.map(|g| to_vec(g.into_data())))
        .collect();
    StepGrads {
        loss: (loss_sum / grad_accum as f64) as f32,
        grads: sum,
        tokens,
        report: fp8.take_report(),
    }
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
