//! One optimizer step's forward/backward with gradient accumulation, and the AdamW update of
//! the model's parameters. Everything stays on the device: gradients are summed over
//! micro-batches there, and a step reads back one small tensor (the loss and each gradient's
//! sum of squares, for the non-finite check and global-norm clipping).

use burn::module::{Module, ModuleMapper, Param};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::ops::FloatTensor;
use burn::tensor::Tensor;
use datasets::Batch;
use fp8_backend::Fp8Report;
use rayon::prelude::*;

use super::optimizer::{AdamW, Coefficients};
use crate::host::HostTensors;
use crate::model::loss::batch_loss;
use crate::model::names::param_grad_tensors;
use crate::model::ops::vmath::{self, Isa};
use crate::model::{Model, ModelBackend};

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
pub struct StepGrads<B: Backend> {
    /// Mean loss over the micro-batches.
    pub loss: f32,
    /// Summed gradients of every parameter (scaled by 1/grad_accum), flattened, in module
    /// order; `None` for a parameter that took no part in the loss.
    pub grads: Vec<Option<Tensor<B, 1>>>,
    /// Each gradient's sum of squares (f32 on the device; 0 for `None`).
    pub sum_squares: Vec<f64>,
    /// Input tokens consumed.
    pub tokens: u64,
    /// What the FP8 layers saw.
    pub report: Fp8Report,
}

impl<B: Backend> StepGrads<B> {
    /// Global L2 norm of the gradients.
    pub fn global_norm(&self) -> f64 {
        self.sum_squares.iter().sum::<f64>().sqrt()
    }

    /// The first parameter (module order) whose gradient is not finite.
    pub fn first_non_finite(&self) -> Option<usize> {
        self.sum_squares.iter().position(|s| !s.is_finite())
    }
}

/// How one step's forward/backward passes run.
#[derive(Clone, Debug, PartialEq)]
pub struct StepOptions {
    /// Micro-batches per step.
    pub grad_accum: usize,
    /// Record the FP8 casts' statistics (of the first micro-batch: a layer's figures barely
    /// move between micro-batches).
    pub stats: bool,
    /// Test-only: the loss is multiplied by this before the backward (see [`INJECT_NAN_ENV`]).
    pub loss_factor: Option<f32>,
}

/// A peer's part of one micro-batch.
pub struct Share {
    pub batch: Batch,
    /// The share of the micro-batch's loss weight (loss tokens) that these rows hold: the
    /// peers' weighted mean losses add up to the whole micro-batch's mean. 1 on one device.
    pub weight: f32,
    /// Input tokens of the whole micro-batch (every peer's rows).
    pub tokens: u64,
}

impl Share {
    /// The whole batch, on one device.
    pub fn whole(batch: Batch) -> Self {
        Self {
            tokens: (batch.batch * batch.seq) as u64,
            batch,
            weight: 1.0,
        }
    }

    /// `batch` split by rows between `peers` peers (each gets `batch.batch / peers` rows, in
    /// peer order), each share weighted by its loss tokens.
    ///
    /// # Panics
    /// If the rows do not divide between the peers.
    pub fn split(batch: &Batch, peers: usize) -> Vec<Self> {
        assert!(
            batch.batch.is_multiple_of(peers),
            "{} rows among {peers} peers",
            batch.batch
        );
        let rows = batch.batch / peers;
        let total = batch.loss_weight();
        (0..peers)
            .map(|p| {
                let part = batch.rows(p * rows, (p + 1) * rows);
                let weight = if total > 0.0 {
                    (part.loss_weight() / total) as f32
                } else {
                    0.0
                };
                Self {
                    batch: part,
                    weight,
                    tokens: (batch.batch * batch.seq) as u64,
                }
            })
            .collect()
    }
}

/// Sums a flat tensor over the data-parallel peers (every peer calls it with the same length
/// at the same point of the step and gets the same sum).
pub trait GradReducer<B: Backend> {
    fn sum(&self, flat: Tensor<B, 1>) -> Tensor<B, 1>;
}

/// The micro-batch loop: forward and backward of one step's micro-batches (a peer's shares of
/// them under data parallelism), gradients summed on the device. With `reducer`, the loss and
/// the gradients are summed over the peers (each share's loss weighted by its part of the
/// micro-batch) before anything is read, so every peer returns the same figures.
pub fn gradients<B: AutodiffBackend + ModelBackend>(
    model: &Model<B>,
    shares: Vec<Share>,
    options: &StepOptions,
    device: &B::Device,
    reducer: Option<&dyn GradReducer<B::InnerBackend>>,
) -> StepGrads<B::InnerBackend>
where
    B::InnerBackend: HostTensors,
{
    let fp8 = model.fp8();
    // Whatever an evaluation pass left (its non-finite events) is not this step's.
    fp8.take_report();
    let grad_accum = shares.len();
    let mut sum: Vec<Option<Tensor<B::InnerBackend, 1>>> = Vec::new();
    let mut loss_sum: Option<Tensor<B::InnerBackend, 1>> = None;
    let mut tokens = 0u64;
    for (micro, share) in shares.into_iter().enumerate() {
        fp8.set_stats(options.stats && micro == 0);
        tokens += share.tokens;
        let mut loss = batch_loss(model, &share.batch, device);
        if share.weight != 1.0 {
            loss = loss.mul_scalar(share.weight);
        }
        if let Some(factor) = options.loss_factor {
            loss = loss.mul_scalar(factor);
        }
        let value = loss.clone().inner();
        loss_sum = Some(match loss_sum {
            Some(s) => s + value,
            None => value,
        });
        let grads = loss.div_scalar(grad_accum as f32).backward();
        let micro = param_grad_tensors(model, &grads);
        drop(grads);
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
    let mut loss_sum = loss_sum.expect("a micro-batch");
    if let Some(reducer) = reducer {
        (loss_sum, sum) = reduce_together(reducer, loss_sum, sum);
    }
    let (loss_sum, sum_squares) = read_with_sum_squares(loss_sum, &sum);
    StepGrads {
        loss: (f64::from(loss_sum) / grad_accum as f64) as f32,
        grads: sum,
        sum_squares,
        tokens,
        report: fp8.take_report(),
    }
}

/// The loss and every gradient summed over the peers in one collective call: concatenated into
/// one flat tensor, reduced, cut back.
fn reduce_together<B: Backend>(
    reducer: &dyn GradReducer<B>,
    loss: Tensor<B, 1>,
    grads: Vec<Option<Tensor<B, 1>>>,
) -> (Tensor<B, 1>, Vec<Option<Tensor<B, 1>>>) {
    let lengths: Vec<Option<usize>> = grads
        .iter()
        .map(|g| g.as_ref().map(|g| g.dims()[0]))
        .collect();
    let mut parts = vec![loss];
    parts.extend(grads.into_iter().flatten());
    let summed = reducer.sum(Tensor::cat(parts, 0));
    let mut at = 1;
    let grads = lengths
        .into_iter()
        .map(|n| {
            n.map(|n| {
                let part = summed.clone().narrow(0, at, n);
                at += n;
                part
            })
        })
        .collect();
    (summed.narrow(0, 0, 1), grads)
}

/// Reads `value` (one element) and each gradient's sum of squares in one transfer; a missing
/// gradient counts 0. On the CPU backends the sums are one pass over each gradient's memory
/// (f64 partial sums), not a squared copy of it and then a sum.
pub fn read_with_sum_squares<B: HostTensors>(
    value: Tensor<B, 1>,
    grads: &[Option<Tensor<B, 1>>],
) -> (f32, Vec<f64>) {
    let primitives: Vec<FloatTensor<B>> = grads
        .iter()
        .flatten()
        .map(|g| g.clone().into_primitive().tensor())
        .collect();
    let host: Option<Vec<&[f32]>> = primitives.iter().map(B::host_slice).collect();
    if let Some(slices) = host {
        let isa = Isa::best();
        let mut squares = slices.into_iter().map(|g| {
            g.par_chunks(1 << 16)
                .map(|c| vmath::sum_squares(isa, c))
                .sum::<f64>()
        });
        let sum_squares = grads
            .iter()
            .map(|g| match g {
                Some(_) => squares.next().expect("one per gradient"),
                None => 0.0,
            })
            .collect();
        let value = value.into_data().convert::<f32>().into_vec().expect("f32");
        return (value[0], sum_squares);
    }
    let mut parts = vec![value];
    parts.extend(
        grads
            .iter()
            .flatten()
            .map(|g| (g.clone() * g.clone()).sum()),
    );
    let read: Vec<f32> = Tensor::cat(parts, 0)
        .into_data()
        .convert::<f32>()
        .into_vec()
        .expect("f32");
    let mut squares = read[1..].iter();
    let sum_squares = grads
        .iter()
        .map(|g| match g {
            Some(_) => f64::from(*squares.next().expect("one per gradient")),
            None => 0.0,
        })
        .collect();
    (read[0], sum_squares)
}

/// The factor that scales gradients of global norm `norm` to at most `max_norm` (PyTorch's
/// `clip_grad_norm_`: max_norm / (norm + 1e-6), applied only when below 1; 0 turns it off).
pub fn clip_factor(norm: f64, max_norm: f64) -> f32 {
    if max_norm <= 0.0 {
        return 1.0;
    }
    let factor = max_norm / (norm + 1e-6);
    if factor < 1.0 {
        factor as f32
    } else {
        1.0
    }
}

/// One AdamW update of every parameter with a gradient, in place on the device; the model's
/// parameters keep their ids (and stay the f32 master weights).
pub fn apply_adamw<B: AutodiffBackend>(
    model: Model<B>,
    optimizer: &mut AdamW<B::InnerBackend>,
    grads: Vec<Option<Tensor<B::InnerBackend, 1>>>,
    coefficients: &[Coefficients; 2],
) -> Model<B>
where
    B::InnerBackend: HostTensors,
{
    struct Update<'a, B: AutodiffBackend> {
        optimizer: &'a mut AdamW<B::InnerBackend>,
        grads: std::vec::IntoIter<Option<Tensor<B::InnerBackend, 1>>>,
        index: usize,
        coefficients: &'a [Coefficients; 2],
    }
    impl<B: AutodiffBackend> ModuleMapper<B> for Update<'_, B>
    where
        B::InnerBackend: HostTensors,
    {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
            let index = self.index;
            self.index += 1;
            let Some(grad) = self.grads.next().flatten() else {
                return param;
            };
            param.map(|value| {
                let dims: [usize; D] = value.dims();
                let flat = value.inner().reshape([dims.iter().product::<usize>()]);
                let updated = self.optimizer.update(index, flat, grad, self.coefficients);
                Tensor::from_inner(updated.reshape(dims)).require_grad()
            })
        }
    }
    let mut update = Update::<B> {
        optimizer,
        grads: grads.into_iter(),
        index: 0,
        coefficients,
    };
    model.map(&mut update)
}
