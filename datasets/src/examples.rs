//! Batches of prompt/completion examples and conversations: right-padded to `T`, with a loss
//! mask on completion tokens (on the tokens a conversation's mask marks) and an attention mask
//! on real tokens (see [`Batch`]). Examples are read in order or,
//! shuffled, in a permutation per epoch fixed by the seed; the position is the count of
//! examples taken, running on across epochs.

use std::sync::Arc;

use crate::batch::Batch;
use crate::cache::TokenCache;
use crate::error::DataError;
use crate::rng::permutation;

/// The examples of one split: a cache and the indices of the examples in the split.
#[derive(Clone, Debug)]
pub struct ExampleSet {
    pub(crate) cache: TokenCache,
    pub(crate) indices: Arc<[u32]>,
}

impl ExampleSet {
    pub(crate) fn new(cache: TokenCache, indices: Vec<u32>) -> Self {
        ExampleSet {
            cache,
            indices: indices.into(),
        }
    }

    /// Number of examples.
    pub fn len(&self) -> usize {
        self.indices.len()
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.indices.is_empty()
    }

    /// Prompt and completion tokens and label index of example `i` (`< len()`).
    pub fn get(&self, i: usize) -> (Vec<u32>, Vec<u32>, Option<usize>) {
        let e = self.cache.example(self.indices[i] as usize);
        let tokens = self.cache.tokens();
        let (s, p, c) = (
            e.start as usize,
            e.prompt_len as usize,
            e.completion_len as usize,
        );
        let mut prompt = Vec::with_capacity(p);
        let mut completion = Vec::with_capacity(c);
        tokens.extend_into(s..s + p, &mut prompt);
        tokens.extend_into(s + p..s + p + c, &mut completion);
        (prompt, completion, e.label.map(|l| l as usize))
    }

    /// Writes example `i` into row `row` of `out` (see [`Batch::set_masked_row`]); returns
    /// whether it was cut to fit.
    fn fill_row(&self, i: usize, out: &mut Batch, row: usize) -> bool {
        let e = self.cache.example(self.indices[i] as usize);
        let (s, p) = (e.start as usize, e.prompt_len as usize);
        let n = p + e.completion_len as usize;
        let mut tokens = Vec::with_capacity(n);
        self.cache.tokens().extend_into(s..s + n, &mut tokens);
        match self.cache.loss_mask(s..s + n) {
            Some(mask) => out.set_masked_row(row, &tokens, p, |k| mask[k] != 0),
            None => out.set_masked_row(row, &tokens, p, |k| k >= p),
        }
    }
}

/// Padded batches of an [`ExampleSet`].
#[derive(Clone, Debug)]
pub struct ExampleBatches {
    set: ExampleSet,
    batch: usize,
    seq: usize,
    pad: u32,
    seed: Option<u64>,
    position: u64,
    epoch_perm: Option<(u64, Vec<u32>)>,
    truncated: u64,
}

impl ExampleBatches {
    /// `pad` fills padding positions (masked out; GPT-2 uses end-of-text). `seed`: shuffle.
    pub fn new(
        set: ExampleSet,
        batch: usize,
        seq: usize,
        pad: u32,
        seed: Option<u64>,
    ) -> Result<Self, DataError> {
        if batch == 0 || seq == 0 {
            return Err(DataError::config(
                "batch_size / seq_len",
                "must be at least 1",
            ));
        }
        if set.is_empty() {
            return Err(DataError::config(
                "train / validation",
                "the split holds no examples",
            ));
        }
        Ok(ExampleBatches {
            set,
            batch,
            seq,
            pad,
            seed,
            position: 0,
            epoch_perm: None,
            truncated: 0,
        })
    }

    pub fn set(&self) -> &ExampleSet {
        &self.set
    }

    /// `[B, T]` of every batch.
    pub fn shape(&self) -> [usize; 2] {
        [self.batch, self.seq]
    }

    /// The shuffle seed, if shuffled.
    pub fn seed(&self) -> Option<u64> {
        self.seed
    }

    pub fn position(&self) -> u64 {
        self.position
    }

    pub fn set_position(&mut self, position: u64) {
        self.position = position;
    }

    /// Batches in one pass (rounded up).
    pub fn batches_per_epoch(&self) -> usize {
        self.set.len().div_ceil(self.batch)
    }

    /// Examples cut to fit `T + 1` tokens so far.
    pub fn truncated(&self) -> u64 {
        self.truncated
    }

    /// The next batch.
    pub fn next_batch(&mut self) -> Batch {
        let n = self.set.len() as u64;
        let mut out = Batch::padded(self.batch, self.seq, self.pad);
        for row in 0..self.batch {
            let (epoch, i) = (self.position / n, (self.position % n) as usize);
            let k = match self.seed {
                None => i,
                Some(seed) => {
                    if self.epoch_perm.as_ref().map(|p| p.0) != Some(epoch) {
                        self.epoch_perm = Some((epoch, permutation(n as usize, seed, epoch)));
                    }
                    self.epoch_perm.as_ref().expect("set above").1[i] as usize
                }
            };
            if self.set.fill_row(k, &mut out, row) {
                self.truncated += 1;
                if self.truncated == 1 {
                    log::warn!(
                        "an example is longer than seq_len + 1 = {} tokens; its prompt (the \
                         tokens before the first that carries the loss) is cut from the left, \
                         then its end from the right (further cuts are counted, not logged)",
                        self.seq + 1
                    );
                }
            }
            self.position += 1;
        }
        out
    }

    /// Every example once, in order, in `ceil(n / B)` batches; rows after the last example are
    /// all padding (mask 0). Does not move the position.
    pub fn eval_pass(&self) -> impl Iterator<Item = Batch> + '_ {
        (0..self.batches_per_epoch()).map(move |k| {
            let mut out = Batch::padded(self.batch, self.seq, self.pad);
            for row in 0..self.batch {
                let i = k * self.batch + row;
                if i < self.set.len() {
                    self.set.fill_row(i, &mut out, row);
                }
            }
            out
        })
    }
}
