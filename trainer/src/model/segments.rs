//! Packed rows (`data.packing`): several examples in one row of `T` positions, each attending
//! only to its own tokens, its positions restarting at 0 (`datasets::Batch::positions`). A
//! model given [`Segments`] computes every example's logits as if it ran alone (up to f32
//! summation order); given none, every row is one sequence at positions `0..T`.

use std::sync::Arc;

use burn::tensor::backend::Backend;
use burn::tensor::{Bool, Int, Tensor, TensorData};
use datasets::Batch;

/// Where the examples of packed rows start: each token's position within its example.
#[derive(Clone, Debug, PartialEq)]
pub struct Segments {
    /// `[B, T]` row-major: 0 at an example's first token, counting up within it.
    positions: Arc<[u32]>,
    batch: usize,
    seq: usize,
}

impl Segments {
    /// Segments of `positions` (`[batch, seq]` row-major).
    ///
    /// # Panics
    /// If the shape does not match, or a row does not start a segment at its first token and
    /// count up by one within each (a position is 0 or its predecessor's plus one).
    pub fn new(positions: Vec<u32>, batch: usize, seq: usize) -> Self {
        assert_eq!(
            positions.len(),
            batch * seq,
            "positions of [{batch}, {seq}]"
        );
        for row in positions.chunks(seq.max(1)) {
            let mut expected = 0;
            for &p in row {
                assert!(
                    p == 0 || p == expected,
                    "position {p} where 0 or {expected} is due: segments count up from 0"
                );
                expected = p + 1;
            }
        }
        Self {
            positions: positions.into(),
            batch,
            seq,
        }
    }

    /// The segments of a packed batch; `None` for one sequence a row.
    pub fn of(batch: &Batch) -> Option<Self> {
        let positions = batch.positions.as_ref()?;
        Some(Self::new(positions.clone(), batch.batch, batch.seq))
    }

    /// The longest example's length: the positions the model must have.
    pub fn longest(&self) -> usize {
        self.positions.iter().max().map_or(0, |&p| p as usize + 1)
    }

    /// `[B, T]`.
    pub fn shape(&self) -> [usize; 2] {
        [self.batch, self.seq]
    }

    /// Each token's position within its example, `[B, T]` row-major.
    pub fn positions(&self) -> &[u32] {
        &self.positions
    }

    /// The first key that the query at position `i` of row `row` sees: its example's first
    /// token.
    pub fn first_key(&self, row: usize, i: usize) -> usize {
        i - self.positions[row * self.seq + i] as usize
    }

    /// The segments of row `row` as `(start, length)`, in order.
    pub fn blocks(&self, row: usize) -> Vec<(usize, usize)> {
        let positions = &self.positions[row * self.seq..(row + 1) * self.seq];
        let mut blocks: Vec<(usize, usize)> = Vec::new();
        for (i, &p) in positions.iter().enumerate() {
            match blocks.last_mut() {
                Some(last) if p != 0 => last.1 += 1,
                _ => blocks.push((i, 1)),
            }
        }
        blocks
    }

    /// Position ids `[B, T]` as an int tensor (GPT-2's `wpe` rows).
    pub fn position_tensor<B: Backend>(&self, device: &B::Device) -> Tensor<B, 2, Int> {
        let ids: Vec<i64> = self.positions.iter().map(|&p| i64::from(p)).collect();
        Tensor::from_data(TensorData::new(ids, [self.batch, self.seq]), device)
    }

    /// `[B, 1, T, T]`: true where query `i` must not see key `j` (a later key, or one of
    /// another example; `first_key(i)` adds a further lower bound, e.g. a sliding window).
    pub fn hidden_keys<B: Backend>(
        &self,
        first_key: impl Fn(usize) -> usize,
        device: &B::Device,
    ) -> Tensor<B, 4, Bool> {
        let t = self.seq;
        let mut hidden = Vec::with_capacity(self.batch * t * t);
        for b in 0..self.batch {
            for i in 0..t {
                let lo = self.first_key(b, i).max(first_key(i));
                hidden.extend((0..t).map(|j| j > i || j < lo));
            }
        }
        Tensor::from_data(TensorData::new(hidden, [self.batch, 1, t, t]), device)
    }
}

/// The row's blocks of `segments` (one block `(0, t)` without).
pub(crate) fn row_blocks(segments: Option<&Segments>, row: usize, t: usize) -> Vec<(usize, usize)> {
    segments.map_or_else(|| vec![(0, t)], |s| s.blocks(row))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_and_first_keys_follow_the_positions() {
        let s = Segments::new(vec![0, 1, 2, 0, 1, 0, 0, 1, 2, 3, 0, 1], 2, 6);
        assert_eq!(s.blocks(0), vec![(0, 3), (3, 2), (5, 1)]);
        assert_eq!(s.blocks(1), vec![(0, 4), (4, 2)]);
        assert_eq!(s.first_key(0, 4), 3);
        assert_eq!(s.first_key(1, 5), 4);
        assert_eq!(row_blocks(None, 0, 6), vec![(0, 6)]);
    }

    #[test]
    #[should_panic(expected = "segments count up from 0")]
    fn positions_that_skip_are_refused() {
        Segments::new(vec![0, 2], 1, 2);
    }
}

/// A model given packed rows computes each example as if it ran alone: logits, loss and
/// gradients, for GPT-2 and a Llama (each with its fused attention and positions).
#[cfg(test)]
mod packed_equals_alone {
    use burn::backend::{Autodiff, Flex};
    use burn::tensor::Tensor;
    use datasets::Batch;
    use fp8_backend::{Fp8, Fp8Policy, Precision};

    use super::Segments;
    use crate::model::loss::{batch_inputs, batch_loss};
    use crate::model::names::param_grad_tensors;
    use crate::model::{Model, ModelConfig, ModelOptions};

    type Ad = Autodiff<Fp8<Flex>>;

    /// Packed against alone: the same f32 operations, but attention's GEMMs run over blocks of
    /// other sizes, the loss sums over other rows and the gradients add the examples' terms in
    /// another order (measured: at most 3.6e-7 relative to the largest element for the logits,
    /// 6.3e-7 for the gradients, 1e-7 for the loss); a key of another example seen or a GPT-2
    /// position not restarted moves them by 1e-1 or more. (Rotary positions need not restart
    /// for this: a rotation by the same offset of a query and its keys leaves their scores
    /// as they were, up to rounding.)
    const PACKED_REL_TOL: f32 = 1e-4;

    /// Example tokens (the last is only a target) and loss masks over their targets (the first
    /// target is prompt).
    fn examples() -> Vec<(Vec<u32>, Vec<f32>)> {
        [6, 4, 8, 5]
            .iter()
            .enumerate()
            .map(|(e, &n)| {
                let tokens = (0..n).map(|i| ((i * 37 + e * 101 + 11) % 500) as u32);
                let mask = (0..n - 1).map(|i| if i >= 1 { 1.0 } else { 0.0 });
                (tokens.collect(), mask.collect())
            })
            .collect()
    }

    fn alone((tokens, mask): &(Vec<u32>, Vec<f32>)) -> Batch {
        let n = tokens.len() - 1;
        Batch {
            inputs: tokens[..n].to_vec(),
            targets: tokens[1..].to_vec(),
            loss_mask: Some(mask.clone()),
            attention_mask: Some(vec![true; n]),
            positions: None,
            batch: 1,
            seq: n,
        }
    }

    /// Rows of 12: examples 0 and 1 (5 + 3 inputs), then 2 and 3 (7 + 4); padding at the tails.
    /// Returns the batch and where each example starts (row, position).
    fn packed(examples: &[(Vec<u32>, Vec<f32>)]) -> (Batch, Vec<(usize, usize)>) {
        let (rows, seq) = ([[0, 1], [2, 3]], 12);
        let mut b = Batch {
            inputs: vec![],
            targets: vec![],
            loss_mask: Some(vec![]),
            attention_mask: Some(vec![]),
            positions: Some(vec![]),
            batch: rows.len(),
            seq,
        };
        let mut starts = vec![(0, 0); examples.len()];
        for (r, row) in rows.iter().enumerate() {
            let span = |b: &mut Batch, inputs: &[u32], targets: &[u32], mask: &[f32], real| {
                let n = inputs.len();
                b.inputs.extend(inputs);
                b.targets.extend(targets);
                b.loss_mask.as_mut().unwrap().extend(mask);
                b.attention_mask.as_mut().unwrap().extend(vec![real; n]);
                b.positions.as_mut().unwrap().extend(0..n as u32);
                n
            };
            let mut used = 0;
            for &e in row {
                starts[e] = (r, used);
                let (tokens, mask) = &examples[e];
                let n = tokens.len() - 1;
                used += span(&mut b, &tokens[..n], &tokens[1..], mask, true);
            }
            let pad = seq - used;
            span(&mut b, &vec![0; pad], &vec![0; pad], &vec![0.0; pad], false);
        }
        (b, starts)
    }

    fn host<const D: usize>(t: Tensor<Ad, D>) -> Vec<f32> {
        t.into_data().convert::<f32>().into_vec().unwrap()
    }

    /// max |a - b| relative to max |b|.
    fn rel(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        let scale = b.iter().fold(1e-12f32, |m, x| m.max(x.abs()));
        a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
    }

    /// Every parameter's gradient on the host (empty where none), in module order.
    fn grads(model: &Model<Ad>, loss: Tensor<Ad, 1>) -> Vec<Vec<f32>> {
        let grads = loss.backward();
        param_grad_tensors(model, &grads)
            .into_iter()
            .map(|(_, g)| {
                g.map_or(vec![], |g| {
                    g.into_data().convert::<f32>().into_vec().unwrap()
                })
            })
            .collect()
    }

    #[test]
    fn packed_rows_give_each_example_its_logits_loss_and_gradients_alone() {
        let device = Default::default();
        let options = ModelOptions {
            dropout: 0.0,
            fp8: Fp8Policy::with_mode(Precision::Fp32),
        };
        for preset in ["tiny", "llama-tiny"] {
            let config = ModelConfig::preset(preset).unwrap();
            let model = Model::<Ad>::new(&config, &options, &device).unwrap();
            let examples = examples();
            let (batch, starts) = packed(&examples);
            let segments = Segments::of(&batch).unwrap();
            let logits = model.forward_packed(batch_inputs(&batch, &device), Some(&segments));
            let [_, t, v] = logits.dims();
            let logits = host(logits);
            let mut worst = 0f32;
            for (e, &(row, at)) in starts.iter().enumerate() {
                let one = alone(&examples[e]);
                let theirs = host(model.forward(batch_inputs(&one, &device)));
                let n = one.seq;
                let ours = &logits[(row * t + at) * v..(row * t + at + n) * v];
                worst = worst.max(rel(ours, &theirs));
            }
            println!("{preset}: packed logits vs alone {worst:e}");
            assert!(
                worst < PACKED_REL_TOL,
                "{preset}: logits differ by {worst:e}"
            );

            // The packed loss is the examples' loss sums over their loss tokens.
            let tokens: Vec<f32> = examples.iter().map(|(_, m)| m.iter().sum()).collect();
            let total: f32 = tokens.iter().sum();
            let loss = batch_loss(&model, &batch, &device);
            let ours = host(loss.clone())[0];
            let mut theirs = 0f32;
            let mut reference: Vec<Vec<f32>> = vec![];
            for (e, example) in examples.iter().enumerate() {
                let l = batch_loss(&model, &alone(example), &device).mul_scalar(tokens[e] / total);
                theirs += host(l.clone())[0];
                let g = grads(&model, l);
                if reference.is_empty() {
                    reference = g;
                } else {
                    for (acc, g) in reference.iter_mut().zip(g) {
                        acc.iter_mut().zip(g).for_each(|(a, g)| *a += g);
                    }
                }
            }
            let loss_rel = (ours - theirs).abs() / theirs;
            println!("{preset}: packed loss {ours} vs alone {theirs} ({loss_rel:e})");
            assert!(
                loss_rel < PACKED_REL_TOL,
                "{preset}: loss {ours} vs {theirs}"
            );

            // And so are its gradients: the examples' gradients weighted the same way.
            let ours = grads(&model, loss);
            let mut worst = 0f32;
            for (a, b) in ours.iter().zip(&reference) {
                assert_eq!(a.len(), b.len());
                if !b.is_empty() {
                    worst = worst.max(rel(a, b));
                }
            }
            println!("{preset}: packed gradients vs alone {worst:e}");
            assert!(
                worst < PACKED_REL_TOL,
                "{preset}: gradients differ by {worst:e}"
            );
        }
    }
}
