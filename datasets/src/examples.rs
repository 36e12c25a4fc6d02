//! Batches of prompt/completion examples and conversations: right-padded to `T`, with a loss
//! mask on completion tokens (on the tokens a conversation's mask marks) and an attention mask
//! on real tokens (see [`Batch`]). Examples are read in order or,
//! shuffled, in a permutation per epoch fixed by the seed; the position is the count of
//! examples taken (packed: of windows), running on across epochs.
//!
//! Packed (`data.packing`), each row is a window holding several examples, each cut as it would
//! be in a row of its own; only a window's tail is padding, and the batch's positions say where
//! each example starts. An epoch's examples are packed best-fit decreasing (TRL's `bfd`): the
//! longest first, each into the window it fills most tightly, a new window when none has
//! room; the windows then follow the epoch's order (of their first example), their examples
//! too. The number of windows depends only on the examples' lengths, so it is the same every
//! epoch; the position counts windows taken.

use std::collections::BTreeSet;
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

    /// The positions example `i` fills in a row of `seq` ([`Batch::span`]).
    fn span(&self, i: usize, seq: usize) -> usize {
        let e = self.cache.example(self.indices[i] as usize);
        Batch::span(e.prompt_len as usize, e.completion_len as usize, seq)
    }

    /// Writes example `i` into row `row` of `out` (see [`Batch::set_masked_row`]); returns
    /// whether it was cut to fit.
    fn fill_row(&self, i: usize, out: &mut Batch, row: usize) -> bool {
        self.fill_span(i, out, row, 0)
    }

    /// Writes example `i` into row `row` of `out` from position `offset` on (see
    /// [`Batch::set_masked_span`]); returns whether it was cut to fit.
    fn fill_span(&self, i: usize, out: &mut Batch, row: usize, offset: usize) -> bool {
        let e = self.cache.example(self.indices[i] as usize);
        let (s, p) = (e.start as usize, e.prompt_len as usize);
        let n = p + e.completion_len as usize;
        let mut tokens = Vec::with_capacity(n);
        self.cache.tokens().extend_into(s..s + n, &mut tokens);
        match self.cache.loss_mask(s..s + n) {
            Some(mask) => out.set_masked_span(row, offset, &tokens, p, |k| mask[k] != 0),
            None => out.set_masked_span(row, offset, &tokens, p, |k| k >= p),
        }
    }
}

/// Padded batches of an [`ExampleSet`], one example a row or packed.
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
    /// Packed: the windows of an epoch (the same in every epoch).
    packed_windows: Option<usize>,
    /// Packed: the examples of each window of one epoch, for the epoch being read.
    epoch_windows: Option<(u64, Arc<Vec<Vec<u32>>>)>,
}

/// How much of one epoch's batches is padding: positions that hold no example's input token,
/// one example a row and packed.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Padding {
    /// Rows of `T` positions one epoch takes one example a row (the examples).
    pub rows: usize,
    /// Windows of `T` positions one epoch takes packed.
    pub windows: usize,
    /// Whether the batches are packed (`data.packing`).
    pub packed: bool,
    /// Positions that hold an example's input token (the same packed or not).
    pub real: u64,
    /// Positions per row (T).
    pub seq: usize,
}

impl Padding {
    /// The share of padding with one example a row.
    pub fn unpacked(&self) -> f64 {
        share(self.real, self.rows, self.seq)
    }

    /// The share of padding in packed windows.
    pub fn packed(&self) -> f64 {
        share(self.real, self.windows, self.seq)
    }

    /// The share of padding of the batches as they are (packed or not).
    pub fn share(&self) -> f64 {
        if self.packed {
            self.packed()
        } else {
            self.unpacked()
        }
    }
}

fn share(real: u64, rows: usize, seq: usize) -> f64 {
    let all = (rows * seq) as f64;
    if all == 0.0 {
        0.0
    } else {
        1.0 - real as f64 / all
    }
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
            packed_windows: None,
            epoch_windows: None,
        })
    }

    /// Packs examples into windows (`data.packing`) when `packing`.
    pub fn packed(mut self, packing: bool) -> Self {
        self.packed_windows = packing.then(|| self.windows_per_epoch());
        self
    }

    /// Windows that packing an epoch takes (the same for every order).
    fn windows_per_epoch(&self) -> usize {
        self.pack(&(0..self.set.len()).collect::<Vec<_>>()).len()
    }

    /// Best-fit decreasing packing of the examples `order` into windows of `T` positions: the
    /// longest first (ties in `order`'s order), each into the window with the least room that
    /// holds it, a new window when none does; windows ordered by their first example in `order`,
    /// examples within a window in `order`'s order.
    fn pack(&self, order: &[usize]) -> Vec<Vec<u32>> {
        let spans: Vec<usize> = order.iter().map(|&i| self.set.span(i, self.seq)).collect();
        let mut longest_first: Vec<usize> = (0..order.len()).collect();
        longest_first.sort_by_key(|&a| std::cmp::Reverse(spans[a]));
        // (room left, window) of the windows with room, the tightest first.
        let mut room: BTreeSet<(usize, usize)> = BTreeSet::new();
        let mut windows: Vec<(usize, Vec<usize>)> = Vec::new();
        for a in longest_first {
            let span = spans[a];
            let w = match room.range((span, 0)..).next().copied() {
                Some(fit) => {
                    room.remove(&fit);
                    fit.1
                }
                None => {
                    windows.push((0, Vec::new()));
                    windows.len() - 1
                }
            };
            windows[w].0 += span;
            windows[w].1.push(a);
            let left = self.seq.saturating_sub(windows[w].0);
            if left > 0 {
                room.insert((left, w));
            }
        }
        for (_, members) in &mut windows {
            members.sort_unstable();
        }
        windows.sort_unstable_by_key(|(_, members)| members[0]);
        windows
            .into_iter()
            .map(|(_, members)| members.into_iter().map(|a| order[a] as u32).collect())
            .collect()
    }

    /// The windows of epoch `epoch` (its order packed), kept for the next call.
    fn windows_of_epoch(&mut self, epoch: u64) -> Arc<Vec<Vec<u32>>> {
        if let Some((e, windows)) = &self.epoch_windows {
            if *e == epoch {
                return windows.clone();
            }
        }
        let n = self.set.len();
        let order: Vec<usize> = match self.seed {
            None => (0..n).collect(),
            Some(seed) => (permutation(n, seed, epoch).into_iter())
                .map(|i| i as usize)
                .collect(),
        };
        let windows = Arc::new(self.pack(&order));
        debug_assert_eq!(Some(windows.len()), self.packed_windows);
        self.epoch_windows = Some((epoch, windows.clone()));
        windows
    }

    /// Whether examples are packed.
    pub fn is_packed(&self) -> bool {
        self.packed_windows.is_some()
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

    /// Batches in one pass (rounded up): of examples, or of packed windows.
    pub fn batches_per_epoch(&self) -> usize {
        self.packed_windows
            .unwrap_or(self.set.len())
            .div_ceil(self.batch)
    }

    /// Examples cut to fit `T + 1` tokens so far.
    pub fn truncated(&self) -> u64 {
        self.truncated
    }

    /// The padding of one epoch, one example a row and packed.
    pub fn padding(&self) -> Padding {
        let real = (0..self.set.len())
            .map(|i| self.set.span(i, self.seq) as u64)
            .sum();
        Padding {
            rows: self.set.len(),
            windows: self
                .packed_windows
                .unwrap_or_else(|| self.windows_per_epoch()),
            packed: self.is_packed(),
            real,
            seq: self.seq,
        }
    }

    /// The example at stream position `position` (the epoch's permutation when shuffled).
    fn example_at(&self, position: u64) -> usize {
        let n = self.set.len() as u64;
        let (epoch, i) = (position / n, (position % n) as usize);
        match self.seed {
            None => i,
            Some(seed) => match &self.epoch_perm {
                Some((e, perm)) if *e == epoch => perm[i] as usize,
                _ => permutation(n as usize, seed, epoch)[i] as usize,
            },
        }
    }

    /// [`ExampleBatches::example_at`], keeping the epoch's permutation for the next call.
    fn next_example(&mut self) -> usize {
        if let Some(seed) = self.seed {
            let n = self.set.len() as u64;
            let epoch = self.position / n;
            if self.epoch_perm.as_ref().map(|p| p.0) != Some(epoch) {
                self.epoch_perm = Some((epoch, permutation(n as usize, seed, epoch)));
            }
        }
        self.example_at(self.position)
    }

    fn count_truncated(&mut self) {
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

    /// The next batch.
    pub fn next_batch(&mut self) -> Batch {
        if self.is_packed() {
            return self.next_packed();
        }
        let mut out = Batch::padded(self.batch, self.seq, self.pad);
        for row in 0..self.batch {
            let k = self.next_example();
            if self.set.fill_row(k, &mut out, row) {
                self.count_truncated();
            }
            self.position += 1;
        }
        out
    }

    /// The next batch of packed windows: each row takes the next examples while they fit (an
    /// example of no input tokens fits anywhere; a row takes at most one epoch's examples).
    fn next_packed(&mut self) -> Batch {
        let per_epoch = self.packed_windows.expect("packed") as u64;
        let mut out = Batch::packed(self.batch, self.seq, self.pad);
        for row in 0..self.batch {
            let (epoch, w) = (self.position / per_epoch, self.position % per_epoch);
            let windows = self.windows_of_epoch(epoch);
            let mut used = 0;
            for &k in &windows[w as usize] {
                let k = k as usize;
                if self.set.fill_span(k, &mut out, row, used) {
                    self.count_truncated();
                }
                used += self.set.span(k, self.seq);
            }
            self.position += 1;
        }
        out
    }

    /// Every example once, in order, in `ceil(n / B)` batches (packed: in the windows that
    /// packing the examples in order gives); rows after the last example are all padding
    /// (mask 0). Does not move the position.
    pub fn eval_pass(&self) -> Box<dyn Iterator<Item = Batch> + '_> {
        if !self.is_packed() {
            return Box::new((0..self.batches_per_epoch()).map(move |k| {
                let mut out = Batch::padded(self.batch, self.seq, self.pad);
                for row in 0..self.batch {
                    let i = k * self.batch + row;
                    if i < self.set.len() {
                        self.set.fill_row(i, &mut out, row);
                    }
                }
                out
            }));
        }
        let windows = self.pack(&(0..self.set.len()).collect::<Vec<_>>());
        Box::new((0..windows.len().div_ceil(self.batch)).map(move |k| {
            let mut out = Batch::packed(self.batch, self.seq, self.pad);
            for row in 0..self.batch {
                let Some(window) = windows.get(k * self.batch + row) else {
                    break;
                };
                let mut used = 0;
                for &i in window {
                    self.set.fill_span(i as usize, &mut out, row, used);
                    used += self.set.span(i as usize, self.seq);
                }
            }
            out
        }))
    }
}
