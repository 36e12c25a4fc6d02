//! A batch of token sequences, row-major `[batch, seq]`, and how one prompt/completion example
//! becomes a padded row (or a span of a packed row) with loss and attention masks.

/// Inputs and next-token targets for one step. All vectors are row-major `[batch, seq]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    /// Input token ids.
    pub inputs: Vec<u32>,
    /// Targets: `targets[b, t]` is the token that follows `inputs[b, t]`.
    pub targets: Vec<u32>,
    /// 1.0 where a target counts in the loss, 0.0 where not (prompt, padding).
    /// `None`: every position counts (language-model windows).
    pub loss_mask: Option<Vec<f32>>,
    /// true for real tokens, false for padding. `None`: no padding.
    pub attention_mask: Option<Vec<bool>>,
    /// Packed rows (`data.packing`): each input's position within its example, 0 at the
    /// example's first token. A token attends to the keys from its example's first token
    /// (`t - positions[t]`) to itself; the padding at a row's tail counts from 0 as one more
    /// span. `None`: every row is one sequence, positions `0..T`.
    pub positions: Option<Vec<u32>>,
    /// Rows (B).
    pub batch: usize,
    /// Positions per row (T).
    pub seq: usize,
}

impl Batch {
    /// `[batch, seq]`.
    pub fn shape(&self) -> [usize; 2] {
        [self.batch, self.seq]
    }

    /// Number of real input tokens (padding left out): what the metrics' `tokens` count.
    pub fn num_tokens(&self) -> usize {
        match &self.attention_mask {
            None => self.batch * self.seq,
            Some(m) => m.iter().filter(|&&real| real).count(),
        }
    }

    /// Number of targets that count in the loss.
    pub fn num_loss_tokens(&self) -> usize {
        match &self.loss_mask {
            None => self.batch * self.seq,
            Some(m) => m.iter().filter(|&&w| w > 0.0).count(),
        }
    }

    /// Rows `start..end` of the batch (a data-parallel peer's share), every field sliced alike.
    ///
    /// # Panics
    /// If the range is empty or past the batch's rows.
    pub fn rows(&self, start: usize, end: usize) -> Batch {
        assert!(
            start < end && end <= self.batch,
            "rows {start}..{end} of a batch of {}",
            self.batch
        );
        let span = start * self.seq..end * self.seq;
        Batch {
            inputs: self.inputs[span.clone()].to_vec(),
            targets: self.targets[span.clone()].to_vec(),
            loss_mask: self.loss_mask.as_ref().map(|m| m[span.clone()].to_vec()),
            attention_mask: self
                .attention_mask
                .as_ref()
                .map(|m| m[span.clone()].to_vec()),
            positions: self.positions.as_ref().map(|p| p[span].to_vec()),
            batch: end - start,
            seq: self.seq,
        }
    }

    /// A packed batch as one row of its examples' positions alone, the padding at its windows'
    /// tails left out (as TRL's padding-free batches): the same examples, targets, loss mask
    /// and positions, in the same order, so the same loss for no compute on padding. `None`
    /// for a batch without positions (one example a row: its padding sits inside the causal
    /// rows), without padding, or without any real position.
    pub fn without_padding(&self) -> Option<Batch> {
        let positions = self.positions.as_ref()?;
        let real = self.attention_mask.as_ref()?;
        let n = real.iter().filter(|&&r| r).count();
        if n == 0 || n == real.len() {
            return None;
        }
        let keep = |v: &[u32]| -> Vec<u32> {
            v.iter()
                .zip(real)
                .filter(|(_, &r)| r)
                .map(|(&x, _)| x)
                .collect()
        };
        Some(Batch {
            inputs: keep(&self.inputs),
            targets: keep(&self.targets),
            loss_mask: self.loss_mask.as_ref().map(|m| {
                m.iter()
                    .zip(real)
                    .filter(|(_, &r)| r)
                    .map(|(&w, _)| w)
                    .collect()
            }),
            attention_mask: None,
            positions: Some(keep(positions)),
            batch: 1,
            seq: n,
        })
    }

    /// The weight of the batch's loss: the sum of its loss mask, or every position.
    pub fn loss_weight(&self) -> f64 {
        match &self.loss_mask {
            None => (self.batch * self.seq) as f64,
            Some(m) => m.iter().map(|&w| f64::from(w)).sum(),
        }
    }

    /// An all-padding batch to be filled row by row with [`Batch::set_example_row`].
    pub(crate) fn padded(batch: usize, seq: usize, pad: u32) -> Batch {
        Batch {
            inputs: vec![pad; batch * seq],
            targets: vec![pad; batch * seq],
            loss_mask: Some(vec![0.0; batch * seq]),
            attention_mask: Some(vec![false; batch * seq]),
            positions: None,
            batch,
            seq,
        }
    }

    /// An all-padding batch of packed rows, filled span by span with
    /// [`Batch::set_masked_span`]; every position is 0..T until then.
    pub(crate) fn packed(batch: usize, seq: usize, pad: u32) -> Batch {
        Batch {
            positions: Some((0..batch * seq).map(|i| (i % seq) as u32).collect()),
            ..Batch::padded(batch, seq, pad)
        }
    }

    /// The positions an example of `prompt + completion` tokens fills in a row of `seq`: its
    /// inputs after [`Batch::set_masked_row`]'s cut (every token but the last).
    pub(crate) fn span(prompt: usize, completion: usize, seq: usize) -> usize {
        let kept = completion.min(seq);
        (prompt.min(seq + 1 - kept) + kept).saturating_sub(1)
    }

    /// Writes `prompt ++ completion` into row `row`: inputs are the sequence without its last
    /// token, targets without its first, the loss counts the targets that are completion tokens,
    /// the rest of the row is padding. A sequence longer than `seq + 1` loses prompt tokens
    /// from the left (keeping at least one) and then completion tokens from the right.
    /// Returns whether anything was cut.
    pub(crate) fn set_example_row(
        &mut self,
        row: usize,
        prompt: &[u32],
        completion: &[u32],
    ) -> bool {
        let tokens: Vec<u32> = prompt.iter().chain(completion).copied().collect();
        self.set_masked_row(row, &tokens, prompt.len(), |k| k >= prompt.len())
    }

    /// Writes `tokens` into row `row`, the targets whose token `k` has `loss(k)` counting in
    /// the loss. `tokens[..prompt]` is the prompt, the rest the completion, cut to fit as in
    /// [`Batch::set_example_row`] (a conversation's prompt is what precedes its first loss
    /// token). Returns whether anything was cut.
    pub(crate) fn set_masked_row(
        &mut self,
        row: usize,
        tokens: &[u32],
        prompt: usize,
        loss: impl Fn(usize) -> bool,
    ) -> bool {
        self.set_masked_span(row, 0, tokens, prompt, loss)
    }

    /// [`Batch::set_masked_row`] into row `row` from position `offset` on: the example is cut
    /// as for a row of its own (to `seq + 1` tokens) and fills [`Batch::span`] positions, which
    /// must fit in the row. A packed batch's positions of the span restart at 0, and the
    /// padding after it counts from 0 again. Returns whether anything was cut.
    pub(crate) fn set_masked_span(
        &mut self,
        row: usize,
        offset: usize,
        tokens: &[u32],
        prompt: usize,
        loss: impl Fn(usize) -> bool,
    ) -> bool {
        let t = self.seq;
        let full_completion = tokens.len() - prompt;
        let completion = full_completion.min(t);
        let keep_prompt = prompt.min(t + 1 - completion);
        let truncated = keep_prompt < prompt || completion < full_completion;
        // The span's sequence is tokens[first..first + len], len <= t + 1.
        let (first, len) = (prompt - keep_prompt, keep_prompt + completion);
        let inputs = len.saturating_sub(1);
        assert!(
            offset + inputs <= t,
            "a span of {inputs} at {offset} in a row of {t}"
        );
        let base = row * t + offset;
        let (mask, attn) = (
            self.loss_mask.as_mut().expect("padded batch"),
            self.attention_mask.as_mut().expect("padded batch"),
        );
        for j in 0..inputs {
            self.inputs[base + j] = tokens[first + j];
            self.targets[base + j] = tokens[first + j + 1];
            attn[base + j] = true;
            // Target j is the sequence's token j+1.
            mask[base + j] = if loss(first + j + 1) { 1.0 } else { 0.0 };
        }
        if let Some(positions) = self.positions.as_mut() {
            let row_end = (row + 1) * t;
            for (j, p) in positions[base..row_end].iter_mut().enumerate() {
                *p = if j < inputs { j } else { j - inputs } as u32;
            }
        }
        truncated
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_slice_every_field_alike() {
        let mut batch = Batch::padded(3, 4, 0);
        batch.set_example_row(0, &[1, 2], &[3]);
        batch.set_example_row(1, &[4], &[5, 6, 7]);
        batch.set_example_row(2, &[8, 9], &[10, 11]);
        let share = batch.rows(1, 3);
        assert_eq!(share.shape(), [2, 4]);
        assert_eq!(share.inputs, batch.inputs[4..12]);
        assert_eq!(share.targets, batch.targets[4..12]);
        assert_eq!(
            share.loss_mask.as_deref(),
            Some(&batch.loss_mask.as_ref().unwrap()[4..12])
        );
        assert_eq!(
            share.attention_mask.as_deref(),
            Some(&batch.attention_mask.as_ref().unwrap()[4..12])
        );
        // The shares' loss weights add up to the batch's.
        let first = batch.rows(0, 1);
        assert_eq!(
            first.loss_weight() + share.loss_weight(),
            batch.loss_weight()
        );
        assert_eq!(share.loss_weight(), 5.0);
    }

    #[test]
    fn num_tokens_leaves_padding_out() {
        let mut batch = Batch::padded(3, 4, 0);
        batch.set_example_row(0, &[1, 2], &[3]);
        batch.set_example_row(1, &[4], &[5, 6, 7]);
        batch.set_example_row(2, &[8, 9], &[10, 11]);
        // Each example's inputs are its tokens but the last: 2 + 3 + 3 of 12 positions.
        assert_eq!(batch.num_tokens(), 8);
        assert_eq!(batch.rows(1, 3).num_tokens(), 6);
        // A window of a language-model stream has no padding.
        batch.attention_mask = None;
        assert_eq!(batch.num_tokens(), 12);
    }
}
