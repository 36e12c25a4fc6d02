//! One optimizer step's forward/backward with gradient accumulation, and the AdamW update of
//! the model's parameters. Everything stays on the device: gradients are summed over
//! micro-batches there, and a step reads back one small tensor (the loss and each gradient's
//! sum of squares, for the non-finite check and global-norm clipping).

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::ops::FloatTensor;
use burn::tensor::Tensor;
use datasets::Batch;
use fp8_backend::Fp8Report;
use rayon::prelude::*;

use super::optimizer::{AdamW, Coefficients};
use crate::host::HostTensors;
use crate::model::loss::{batch_inputs, batch_loss, logits_loss};
use crate::model::names::param_grad_tensors;
use crate::model::ops::vmath::{self, Isa};
use crate::model::{Model, ModelBackend, Segments};

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
    /// Real input tokens consumed (padding not counted).
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
    /// Keep only each block's input through the forward; recompute the block in the backward
    /// ([`checkpointed_gradients`]).
    pub activation_checkpointing: bool,
    /// The step's seed (the backend's RNG was seeded with it). With activation checkpointing,
    /// each block's dropout masks are drawn from a seed derived from it, in both of the block's
    /// forwards.
    pub seed: u64,
}

/// A peer's part of one micro-batch.
pub struct Share {
    pub batch: Batch,
    /// The share of the micro-batch's loss weight (loss tokens) that these rows hold: the
    /// peers' weighted mean losses add up to the whole micro-batch's mean. 1 on one device.
    pub weight: f32,
    /// Real input tokens of the whole micro-batch (every peer's rows; padding not counted).
    pub tokens: u64,
}

impl Share {
    /// The whole batch, on one device.
    pub fn whole(batch: Batch) -> Self {
        Self {
            tokens: batch.num_tokens() as u64,
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
        let tokens = batch.num_tokens() as u64;
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
                    tokens,
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
        let scale = |mut loss: Tensor<B, 1>| {
            if share.weight != 1.0 {
                loss = loss.mul_scalar(share.weight);
            }
            if let Some(factor) = options.loss_factor {
                loss = loss.mul_scalar(factor);
            }
            loss
        };
        let (value, micro) = if options.activation_checkpointing {
            let seed = options.seed ^ (micro as u64).wrapping_mul(SEGMENT_SEED_STRIDE);
            checkpointed_gradients(model, &share.batch, scale, grad_accum, seed, device)
        } else {
            let loss = scale(batch_loss(model, &share.batch, device));
            let value = loss.clone().inner();
            let grads = loss.div_scalar(grad_accum as f32).backward();
            (value, gradient_list(param_grad_tensors(model, &grads)))
        };
        loss_sum = Some(match loss_sum {
            Some(s) => s + value,
            None => value,
        });
        if sum.is_empty() {
            sum = micro;
        } else {
            add_gradients(&mut sum, micro);
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

/// Odd constant (2^64 / golden ratio) spreading micro-batch and block numbers over seeds.
const SEGMENT_SEED_STRIDE: u64 = 0x9E37_79B9_7F4A_7C15;

/// Gradients in module order (one per parameter, `None` where it took no part).
type GradientList<B> = Vec<Option<Tensor<B, 1>>>;

fn gradient_list<B: Backend>(named: Vec<(String, Option<Tensor<B, 1>>)>) -> GradientList<B> {
    named.into_iter().map(|(_, g)| g).collect()
}

/// Adds `more` (same parameters, same order) into `sum`.
fn add_gradients<B: Backend>(sum: &mut GradientList<B>, more: GradientList<B>) {
    for (acc, g) in sum.iter_mut().zip(more) {
        *acc = match (acc.take(), g) {
            (Some(a), Some(g)) => Some(a + g),
            (a, g) => a.or(g),
        };
    }
}

/// One micro-batch's loss (`scale`d, before the division by `grad_accum`) and the gradients of
/// the scaled loss divided by `grad_accum`, with activation checkpointing per block:
///
/// 1. a forward with nothing tracked (no graph, no saved activations) that keeps each
///    block's input, `L + 1` tensors of `[B, T, C]`; its FP8 casts are logged
///    ([`fp8_backend::Fp8Context::log_forward_casts`]);
/// 2. the head and the loss on the last block's output, tracked from there: their backward
///    gives the gradient `dy` of that output;
/// 3. for each block, last first: the block again on its kept input, tracked, its casts
///    replayed from the log (the same FP8 operands, recorded once), and the backward of
///    `sum(y * dy)`, whose gradient with respect to `y` is `dy` exactly; the input's gradient
///    is the next `dy`;
/// 4. the embeddings, the same way (when they take a gradient).
///
/// Each block's dropout masks are drawn from its own seed, set again before its second
/// forward, so both forwards of a block compute the same function. Every parameter's
/// gradient is the sum of its segments' (the tied embedding: the head's and the
/// embeddings'), so gradients equal those of [`batch_loss`]'s one backward: the same ops on
/// the same values, with dropout off (with dropout on, the masks are other draws).
pub fn checkpointed_gradients<B: AutodiffBackend + ModelBackend>(
    model: &Model<B>,
    batch: &Batch,
    scale: impl Fn(Tensor<B, 1>) -> Tensor<B, 1>,
    grad_accum: usize,
    seed: u64,
    device: &B::Device,
) -> (Tensor<B::InnerBackend, 1>, GradientList<B::InnerBackend>) {
    let reseed = |segment: usize| {
        B::seed(
            device,
            seed.wrapping_add((segment as u64 + 1).wrapping_mul(SEGMENT_SEED_STRIDE)),
        )
    };
    // Packed: one row of the examples, the windows' tail padding left out (as `batch_loss`).
    let compact = batch.without_padding();
    let batch = compact.as_ref().unwrap_or(batch);
    let tokens = batch_inputs::<B>(batch, device);
    let segments = Segments::of(batch);
    let segments = segments.as_ref();
    let blocks = model.blocks();
    let fp8 = model.fp8();
    // With data-parallel peers, every peer's backward of a segment is over before any peer
    // starts the next: burn-autodiff cleans up after a backward by locking every graph, and a
    // peer inside its next backward holds its graph while it waits in a collective (a gradient
    // cast's amax reduction), so without this the two would wait on each other.
    let barrier = || {
        if let Some(peers) = fp8.amax_reducer() {
            peers.reduce_max(0.0);
        }
    };

    // 1. Untracked forward, keeping each block's input. (A lazy parameter's clone would draw
    // values of its own: every parameter is initialised in place first.)
    model.visit(&mut Materialize);
    let untracked = model.clone().no_grad();
    fp8.log_forward_casts();
    reseed(0);
    let mut kept = vec![untracked.embed(tokens.clone(), segments).inner()];
    for i in 0..blocks {
        reseed(i + 1);
        let x = Tensor::from_inner(kept[i].clone());
        kept.push(untracked.block(i, x, segments).inner());
    }
    drop(untracked);

    // 2. Head and loss.
    let h = Tensor::<B, 3>::from_inner(kept.pop().expect("the last block's output")).require_grad();
    let loss = scale(logits_loss(model.head(h.clone()), batch, device));
    let value = loss.clone().inner();
    let grads = loss.div_scalar(grad_accum as f32).backward();
    let mut dy = h.grad(&grads).expect("the head's input takes a gradient");
    let mut sum = gradient_list(param_grad_tensors(model, &grads));
    drop(grads);
    barrier();

    // 3. Each block recomputed, then its backward. A block's input takes a gradient only when
    // something under it trains (under LoRA's frozen base, not the first block's: as in one
    // graph, whose embeddings would not be tracked, its projections then compute no dX).
    let mut below = Vec::with_capacity(blocks);
    let mut trains = model.embeddings_trainable();
    for i in 0..blocks {
        below.push(trains);
        trains |= model.block_trainable(i);
    }
    fp8.replay_forward_casts();
    for i in (0..blocks).rev() {
        if !below[i] && !model.block_trainable(i) {
            break;
        }
        reseed(i + 1);
        let x = Tensor::<B, 3>::from_inner(kept.pop().expect("block input"));
        let x = if below[i] { x.require_grad() } else { x };
        let y = model.block(i, x.clone(), segments);
        let grads = (y * Tensor::from_inner(dy.clone())).sum().backward();
        add_gradients(&mut sum, gradient_list(param_grad_tensors(model, &grads)));
        barrier();
        if !below[i] {
            break;
        }
        dy = x.grad(&grads).expect("a block's input takes a gradient");
    }
    fp8.end_cast_log();

    // 4. Embeddings.
    if model.embeddings_trainable() {
        reseed(0);
        let x = model.embed(tokens, segments);
        let grads = (x * Tensor::from_inner(dy)).sum().backward();
        add_gradients(&mut sum, gradient_list(param_grad_tensors(model, &grads)));
    }
    (value, sum)
}

/// Initialises every lazy parameter of a module in place.
struct Materialize;

impl<B: Backend> ModuleVisitor<B> for Materialize {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let _ = param.val();
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

#[cfg(test)]
mod tests {
    use burn::backend::{Autodiff, Flex};
    use burn::tensor::backend::Backend;
    use datasets::Batch;
    use fp8_backend::{Fp8, Fp8Policy, Precision};

    use super::*;
    use crate::model::{ModelConfig, ModelOptions};

    type Ad = Autodiff<Fp8<Flex>>;

    fn batch() -> Batch {
        let (rows, seq) = (2, 16);
        let token = |i: usize| ((i * 37 + 11) % 250) as u32;
        Batch {
            inputs: (0..rows * seq).map(token).collect(),
            targets: (0..rows * seq).map(|i| token(i + 1)).collect(),
            loss_mask: None,
            attention_mask: None,
            positions: None,
            batch: rows,
            seq,
        }
    }

    /// [`batch`] packed: examples of 5, 7 and 4 tokens, then 16 (positions restart at each).
    fn packed_batch() -> Batch {
        let row = [
            (0..5).collect::<Vec<u32>>(),
            (0..7).collect(),
            (0..4).collect(),
        ]
        .concat();
        Batch {
            loss_mask: Some((0..32).map(|i| (i % 3) as f32).collect()),
            positions: Some([row, (0..16).collect()].concat()),
            ..batch()
        }
    }

    fn flat(grads: &GradientList<Fp8<Flex>>) -> Vec<Vec<f32>> {
        let host = |g: &Tensor<Fp8<Flex>, 1>| g.clone().into_data().to_vec::<f32>().unwrap();
        grads
            .iter()
            .map(|g| g.as_ref().map_or(vec![], host))
            .collect()
    }

    /// The gradients of one backward over the whole graph, each block's (and the embeddings')
    /// dropout masks drawn from the seeds [`checkpointed_gradients`] gives them.
    fn reference(model: &Model<Ad>, batch: &Batch, seed: u64) -> GradientList<Fp8<Flex>> {
        let device = Default::default();
        let reseed = |segment: u64| {
            Ad::seed(
                &device,
                seed.wrapping_add((segment + 1).wrapping_mul(SEGMENT_SEED_STRIDE)),
            )
        };
        let tokens = batch_inputs::<Ad>(batch, &device);
        reseed(0);
        let segments = Segments::of(batch);
        let mut x = model.embed(tokens, segments.as_ref());
        for i in 0..model.blocks() {
            reseed(i as u64 + 1);
            x = model.block(i, x, segments.as_ref());
        }
        let loss = logits_loss(model.head(x), batch, &device);
        gradient_list(param_grad_tensors(model, &loss.backward()))
    }

    /// With dropout on, a block's second forward must draw the masks of its first: then the
    /// checkpointed gradients are those of the whole graph under the same masks, bit for bit
    /// (the same ops on the same values; the tied embedding's two parts add commutatively).
    /// Masks drawn afresh would give gradients of another function: off by O(1). The models
    /// are fresh presets, so their parameters are lazy (see [`Materialize`]). Packed rows
    /// (each block told the segments in both forwards) the same.
    #[test]
    fn checkpointed_gradients_equal_one_backward_under_the_same_dropout_masks() {
        let device = Default::default();
        for (preset, mode) in [
            ("tiny", Precision::Fp8Amax),
            ("llama-tiny", Precision::Fp32),
        ] {
            let options = ModelOptions {
                dropout: 0.3,
                fp8: Fp8Policy::with_mode(mode),
            };
            let config = ModelConfig::preset(preset).unwrap();
            let model = Model::<Ad>::new(&config, &options, &device).unwrap();
            for batch in [batch(), packed_batch()] {
                let preset = format!("{preset} packed {}", batch.positions.is_some());
                let seed = 99;
                let (_, ours) = checkpointed_gradients(&model, &batch, |l| l, 1, seed, &device);
                let (ours, theirs) = (flat(&ours), flat(&reference(&model, &batch, seed)));
                // And without the same masks, the gradients do differ.
                let other = flat(&reference(&model, &batch, seed + 1));
                let mut worst = 0f32;
                let mut moved = 0f32;
                for ((a, b), c) in ours.iter().zip(&theirs).zip(&other) {
                    assert_eq!(a.len(), b.len());
                    let scale = b.iter().fold(1e-12f32, |m, v| m.max(v.abs()));
                    for ((x, y), z) in a.iter().zip(b).zip(c) {
                        worst = worst.max((x - y).abs() / scale);
                        moved = moved.max((z - y).abs() / scale);
                    }
                }
                println!("{preset}: checkpointed vs one backward {worst:e}; other masks {moved:e}");
                assert_eq!(worst, 0.0, "{preset}");
                assert!(moved > 1e-2, "{preset}: dropout changed nothing ({moved})");
            }
        }
    }
}
