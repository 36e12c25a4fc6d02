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
        let t = self.seq;
        let full_completion = completion.len();
        let completion = &completion[..full_completion.min(t)];
        let keep_prompt = prompt.len().min(t + 1 - completion.len());
        let truncated = keep_prompt < prompt.len() || completion.len() < full_completion;
        let prompt = &prompt[prompt.len() - keep_prompt..];
        let len = prompt.len() + completion.len(); // tokens in the row's sequence, <= t + 1
        let at = |i: usize| {
            if i < prompt.len() {
                prompt[i]
            } else {
                completion[i - prompt.len()]
            }
        };
        let base = row * t;
        let (loss, attn) = (
            self.loss_mask.as_mut().expect("padded batch"),
            self.attention_mask.as_mut().expect("padded batch"),
        );
        for j in 0..len.saturating_sub(1) {
            self.inputs[base + j] = at(j);
            self.targets[base + j] = at(j + 1);
            attn[base + j] = true;
            // Target j is sequence token j+1: a completion token when j+1 >= prompt length.
            loss[base + j] = if j + 1 >= prompt.len() { 1.0 } else { 0.0 };
        }
        truncated
    }
}
