//! A batch of token sequences, row-major `[batch, seq]`, and how one prompt/completion example
//! becomes a padded row with loss and attention masks.

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
            attention_mask: self.attention_mask.as_ref().map(|m| m[span].to_vec()),
            batch: end - start,
            seq: self.seq,
        }
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
            batch,
            seq,
        }
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
        let t = self.seq;
        let full_completion = tokens.len() - prompt;
        let completion = full_completion.min(t);
        let keep_prompt = prompt.min(t + 1 - completion);
        let truncated = keep_prompt < prompt || completion < full_completion;
        // The row's sequence is tokens[first..first + len], len <= t + 1.
        let (first, len) = (prompt - keep_prompt, keep_prompt + completion);
        let base = row * t;
        let (mask, attn) = (
            self.loss_mask.as_mut().expect("padded batch"),
            self.attention_mask.as_mut().expect("padded batch"),
        );
        for j in 0..len.saturating_sub(1) {
            self.inputs[base + j] = tokens[first + j];
            self.targets[base + j] = tokens[first + j + 1];
            attn[base + j] = true;
            // Target j is the sequence's token j+1.
            mask[base + j] = if loss(first + j + 1) { 1.0 } else { 0.0 };
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
}
