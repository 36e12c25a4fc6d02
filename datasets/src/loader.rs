//! The loader the trainer drives: `next_batch()`, and `state()` / `restore()` so that a run
//! resumed from a checkpoint continues with exactly the batches it would have seen.

use serde::{Deserialize, Serialize};

use crate::batch::Batch;
use crate::error::DataError;
use crate::examples::{ExampleBatches, Padding};
use crate::hash::Fnv64;
use crate::stream::TokenStream;
use crate::windows::{LmWindows, WindowOrder};

/// Where a loader stands; saved in a checkpoint's `trainer_state/`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoaderState {
    /// In-order windows: token offset of the next batch. Shuffled windows or examples: the
    /// number of windows or examples taken (across epochs).
    pub position: u64,
    /// Batches taken since the start (for logs).
    pub batches: u64,
    /// What the position belongs to: kind, order, seed, shape and a hash of the data.
    /// Restoring into a loader with another fingerprint is refused.
    pub fingerprint: String,
}

/// Batches of one split.
#[derive(Clone, Debug)]
pub struct DataLoader {
    inner: Inner,
    fingerprint: String,
    batches: u64,
}

#[derive(Clone, Debug)]
enum Inner {
    Windows(LmWindows),
    Examples(ExampleBatches),
}

/// Hash of a stream's length and 64 evenly spaced blocks of 64 tokens: identifies the content
/// (unlike file times, it survives a fresh checkout) without reading a large corpus.
fn content_hash(tokens: &TokenStream, h: &mut Fnv64) {
    const BLOCKS: usize = 64;
    const BLOCK: usize = 64;
    let n = tokens.len();
    h.field(&(n as u64).to_le_bytes());
    let mut buf = Vec::new();
    for k in 0..BLOCKS {
        let start = (n.saturating_sub(BLOCK) as u128 * k as u128 / (BLOCKS - 1) as u128) as usize;
        buf.clear();
        tokens.extend_into(start..(start + BLOCK).min(n), &mut buf);
        buf.iter().for_each(|t| {
            h.write(&t.to_le_bytes());
        });
    }
}

impl DataLoader {
    /// A loader of language-model windows.
    pub fn from_windows(w: LmWindows) -> DataLoader {
        let mut h = Fnv64::new();
        content_hash(w.tokens(), &mut h);
        let order = match w.order() {
            WindowOrder::Sequential => "in-order".to_string(),
            WindowOrder::Shuffled { seed } => format!("shuffled seed={seed}"),
        };
        let [b, t] = w.next_batch_shape();
        let fingerprint = format!(
            "lm {order} B={b} T={t} tokens={} data={:016x}",
            w.tokens().len(),
            h.finish()
        );
        DataLoader {
            inner: Inner::Windows(w),
            fingerprint,
            batches: 0,
        }
    }

    /// A loader of padded prompt/completion batches.
    pub fn from_examples(e: ExampleBatches) -> DataLoader {
        let mut h = Fnv64::new();
        content_hash(&e.set().cache.tokens(), &mut h);
        e.set().indices.iter().for_each(|i| {
            h.write(&i.to_le_bytes());
        });
        let order = match e.seed() {
            None => "in-order".to_string(),
            Some(seed) => format!("shuffled seed={seed}"),
        };
        let [b, t] = e.shape();
        let fingerprint = format!(
            "examples {order}{} B={b} T={t} n={} data={:016x}",
            if e.is_packed() { " packed" } else { "" },
            e.set().len(),
            h.finish()
        );
        DataLoader {
            inner: Inner::Examples(e),
            fingerprint,
            batches: 0,
        }
    }

    /// A loader of windows over tokens in memory (tests, small data).
    pub fn from_tokens(
        tokens: Vec<u32>,
        batch: usize,
        seq: usize,
        order: WindowOrder,
    ) -> Result<Self, DataError> {
        let w = LmWindows::new(
            TokenStream::from_vec(tokens),
            batch,
            seq,
            order,
            "<memory>".into(),
            "token stream",
        )?;
        Ok(DataLoader::from_windows(w))
    }

    /// The next batch.
    pub fn next_batch(&mut self) -> Batch {
        self.batches += 1;
        match &mut self.inner {
            Inner::Windows(w) => w.next_batch(),
            Inner::Examples(e) => e.next_batch(),
        }
    }

    /// The position to save in a checkpoint.
    pub fn state(&self) -> LoaderState {
        let position = match &self.inner {
            Inner::Windows(w) => w.position(),
            Inner::Examples(e) => e.position(),
        };
        LoaderState {
            position,
            batches: self.batches,
            fingerprint: self.fingerprint.clone(),
        }
    }

    /// Continues from a saved position; refused if it belongs to other data or another shape.
    pub fn restore(&mut self, state: &LoaderState) -> Result<(), DataError> {
        if state.fingerprint != self.fingerprint {
            return Err(DataError::StateMismatch {
                saved: state.fingerprint.clone(),
                current: self.fingerprint.clone(),
            });
        }
        match &mut self.inner {
            Inner::Windows(w) => w.set_position(state.position),
            Inner::Examples(e) => e.set_position(state.position),
        }
        self.batches = state.batches;
        Ok(())
    }

    /// Back to the first batch.
    pub fn reset(&mut self) {
        let start = LoaderState {
            position: 0,
            batches: 0,
            fingerprint: self.fingerprint.clone(),
        };
        self.restore(&start).expect("own fingerprint");
    }

    /// Identifies data, order and shape (see [`LoaderState::fingerprint`]).
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// Batches in one pass over the data.
    pub fn batches_per_epoch(&self) -> usize {
        match &self.inner {
            Inner::Windows(w) => w.batches_per_epoch(),
            Inner::Examples(e) => e.batches_per_epoch(),
        }
    }

    /// A full evaluation pass from the start, independent of the position: consecutive
    /// windows, or every example once (the last batch padded with empty rows).
    pub fn eval_pass(&self) -> Box<dyn Iterator<Item = Batch> + '_> {
        match &self.inner {
            Inner::Windows(w) => Box::new(w.eval_pass()),
            Inner::Examples(e) => e.eval_pass(),
        }
    }

    /// Example data: how much of an epoch is padding, one example a row and packed. `None`
    /// for language-model windows (full: no padding).
    pub fn padding(&self) -> Option<Padding> {
        match &self.inner {
            Inner::Windows(_) => None,
            Inner::Examples(e) => Some(e.padding()),
        }
    }

    /// Examples cut to fit `seq_len + 1` so far (0 for windows).
    pub fn truncated_examples(&self) -> u64 {
        match &self.inner {
            Inner::Windows(_) => 0,
            Inner::Examples(e) => e.truncated(),
        }
    }
}
