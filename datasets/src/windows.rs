//! Language-model windows over a token stream, exactly as docs/design.md "Data windows" fixes them.
//!
//! In order (llm.c's loader): a batch reads the `B*T + 1` tokens at the position; inputs are the
//! first `B*T` as `[B, T]`, targets the last `B*T`; the position advances by `B*T`, and resets
//! to 0 first when fewer than `B*T + 1` tokens remain (wrap-around).
//!
//! Shuffled: the stream is cut into windows of `T + 1` tokens starting at multiples of `T`
//! (window `w` reads tokens `w*T ..= w*T + T`); each epoch visits them in a permutation fixed by
//! the seed and the epoch number; a batch takes the next `B` windows, running on into the next
//! epoch's permutation at the end of one. The position is the count of windows taken.

use std::path::PathBuf;

use crate::batch::Batch;
use crate::error::DataError;
use crate::rng::permutation;
use crate::stream::TokenStream;

/// The order windows are read in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WindowOrder {
    /// llm.c's sequential reading with wrap-around.
    Sequential,
    /// Windows permuted per epoch with this seed.
    Shuffled { seed: u64 },
}

/// Batches of windows of one token stream.
#[derive(Clone, Debug)]
pub struct LmWindows {
    tokens: TokenStream,
    batch: usize,
    seq: usize,
    order: WindowOrder,
    /// Sequential: token offset of the next batch. Shuffled: windows taken so far.
    position: u64,
    /// Shuffled: the permutation of `epoch_perm.0`.
    epoch_perm: Option<(u64, Vec<u32>)>,
    buf: Vec<u32>,
}

impl LmWindows {
    /// Windows of `tokens` in batches of `[batch, seq]`. `origin` and `what` name the data in
    /// the error when the stream is shorter than one batch (in order) or one window (shuffled).
    pub fn new(
        tokens: TokenStream,
        batch: usize,
        seq: usize,
        order: WindowOrder,
        origin: PathBuf,
        what: &str,
    ) -> Result<LmWindows, DataError> {
        if batch == 0 || seq == 0 {
            return Err(DataError::config(
                "batch_size / seq_len",
                "must be at least 1",
            ));
        }
        let (needed, why) = match order {
            WindowOrder::Sequential => {
                (batch * seq + 1, format!("B*T + 1 with B={batch}, T={seq}"))
            }
            WindowOrder::Shuffled { .. } => (seq + 1, format!("T + 1 with T={seq}")),
        };
        if tokens.len() < needed {
            return Err(DataError::TooShort {
                path: origin,
                what: what.to_string(),
                tokens: tokens.len() as u64,
                needed: needed as u64,
                why,
            });
        }
        if let WindowOrder::Shuffled { .. } = order {
            if (tokens.len() - 1) / seq > u32::MAX as usize {
                return Err(DataError::config(
                    "seq_len",
                    "more than 2^32 windows; raise seq_len",
                ));
            }
        }
        Ok(LmWindows {
            tokens,
            batch,
            seq,
            order,
            position: 0,
            epoch_perm: None,
            buf: Vec::new(),
        })
    }

    /// Number of windows of `T + 1` tokens at multiples of `T`.
    pub fn num_windows(&self) -> usize {
        (self.tokens.len() - 1) / self.seq
    }

    /// Batches in one pass over the data (rounded down, at least 1).
    pub fn batches_per_epoch(&self) -> usize {
        match self.order {
            WindowOrder::Sequential => ((self.tokens.len() - 1) / (self.batch * self.seq)).max(1),
            WindowOrder::Shuffled { .. } => (self.num_windows() / self.batch).max(1),
        }
    }

    pub fn position(&self) -> u64 {
        self.position
    }

    pub fn set_position(&mut self, position: u64) {
        self.position = position;
    }

    pub fn tokens(&self) -> &TokenStream {
        &self.tokens
    }

    pub fn order(&self) -> WindowOrder {
        self.order
    }

    /// `[B, T]` of every batch.
    pub fn next_batch_shape(&self) -> [usize; 2] {
        [self.batch, self.seq]
    }

    /// The next `[B, T]` batch.
    pub fn next_batch(&mut self) -> Batch {
        match self.order {
            WindowOrder::Sequential => self.next_sequential(),
            WindowOrder::Shuffled { seed } => self.next_shuffled(seed),
        }
    }

    fn next_sequential(&mut self) -> Batch {
        let span = self.batch * self.seq;
        if self.position as usize + span + 1 > self.tokens.len() {
            self.position = 0;
        }
        let start = self.position as usize;
        let mut inputs = Vec::with_capacity(span);
        let mut targets = Vec::with_capacity(span);
        self.tokens.extend_into(start..start + span, &mut inputs);
        self.tokens
            .extend_into(start + 1..start + span + 1, &mut targets);
        self.position += span as u64;
        Batch {
            inputs,
            targets,
            loss_mask: None,
            attention_mask: None,
            positions: None,
            batch: self.batch,
            seq: self.seq,
        }
    }

    fn next_shuffled(&mut self, seed: u64) -> Batch {
        let (t, n) = (self.seq, self.num_windows() as u64);
        let mut inputs = Vec::with_capacity(self.batch * t);
        let mut targets = Vec::with_capacity(self.batch * t);
        self.buf.resize(t + 1, 0);
        for _ in 0..self.batch {
            let (epoch, i) = (self.position / n, (self.position % n) as usize);
            if self.epoch_perm.as_ref().map(|p| p.0) != Some(epoch) {
                self.epoch_perm = Some((epoch, permutation(n as usize, seed, epoch)));
            }
            let w = self.epoch_perm.as_ref().expect("set above").1[i] as usize;
            self.tokens.copy_to(w * t, &mut self.buf);
            inputs.extend_from_slice(&self.buf[..t]);
            targets.extend_from_slice(&self.buf[1..]);
            self.position += 1;
        }
        Batch {
            inputs,
            targets,
            loss_mask: None,
            attention_mask: None,
            positions: None,
            batch: self.batch,
            seq: t,
        }
    }

    /// Every window from the start, in order, each once (for evaluation): `num_windows / B`
    /// batches, at least one (rows past the last window wrap to the first). Where the stream
    /// holds `B*T + 1` tokens these are exactly the first batches of the in-order reading.
    /// Does not move the position.
    pub fn eval_pass(&self) -> impl Iterator<Item = Batch> + '_ {
        let (b, t, n) = (self.batch, self.seq, self.num_windows());
        (0..(n / b).max(1)).map(move |k| {
            let mut inputs = Vec::with_capacity(b * t);
            let mut targets = Vec::with_capacity(b * t);
            let mut buf = vec![0u32; t + 1];
            for r in 0..b {
                self.tokens.copy_to(((k * b + r) % n) * t, &mut buf);
                inputs.extend_from_slice(&buf[..t]);
                targets.extend_from_slice(&buf[1..]);
            }
            Batch {
                inputs,
                targets,
                loss_mask: None,
                attention_mask: None,
                positions: None,
                batch: b,
                seq: t,
            }
        })
    }
}
