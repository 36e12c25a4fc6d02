//! Evaluating a GPT model on classification data: for every example and every label, the
//! prompt followed by that label's word, with the loss mask on the word's tokens. The trainer
//! scores each row with the log-likelihood of its word (the sum over masked positions of
//! log p(target)); the prediction is the label whose word scores highest, and accuracy is the
//! fraction of examples predicted right.

use std::ops::Range;

use crate::batch::Batch;
use crate::examples::ExampleSet;
use crate::template::Verbalizer;

/// The examples of one split, with the candidate label words.
#[derive(Clone, Debug)]
pub struct ClassificationSet {
    examples: ExampleSet,
    verbalizer: Verbalizer,
    pad: u32,
}

/// One example: its prompt tokens and the index of its label in [`ClassificationSet::labels`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClassificationExample {
    pub prompt: Vec<u32>,
    pub label: usize,
}

/// Rows `prompt ++ candidate` for a range of examples, every candidate of an example in turn.
#[derive(Clone, Debug, PartialEq)]
pub struct ScoringBatch {
    /// `[examples * candidates, seq]`; the loss mask marks the candidate word's tokens.
    pub batch: Batch,
    /// Per row: (example index in the set, candidate index).
    pub rows: Vec<(usize, usize)>,
    /// Per example of the batch, in order: the index of its true label.
    pub gold: Vec<usize>,
    /// Number of candidates per example.
    pub num_candidates: usize,
}

impl ScoringBatch {
    /// The predicted label of each example, given each row's score (log-likelihood of the
    /// candidate word). Ties go to the lower label index; NaN never wins.
    pub fn predictions(&self, row_scores: &[f32]) -> Vec<usize> {
        assert_eq!(row_scores.len(), self.rows.len(), "one score per row");
        row_scores
            .chunks(self.num_candidates)
            .map(|scores| {
                let mut best = 0;
                for (c, &s) in scores.iter().enumerate() {
                    if s > scores[best] || scores[best].is_nan() && !s.is_nan() {
                        best = c;
                    }
                }
                best
            })
            .collect()
    }

    /// How many examples the scores classify correctly.
    pub fn num_correct(&self, row_scores: &[f32]) -> usize {
        self.predictions(row_scores)
            .iter()
            .zip(&self.gold)
            .filter(|(p, g)| p == g)
            .count()
    }
}

impl ClassificationSet {
    pub(crate) fn new(examples: ExampleSet, verbalizer: Verbalizer, pad: u32) -> Self {
        ClassificationSet {
            examples,
            verbalizer,
            pad,
        }
    }

    /// Number of examples.
    pub fn len(&self) -> usize {
        self.examples.len()
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.examples.is_empty()
    }

    /// Labels as written in the data (the verbalizer's keys, sorted).
    pub fn labels(&self) -> &[String] {
        &self.verbalizer.labels
    }

    /// The label words, in label order.
    pub fn words(&self) -> &[String] {
        &self.verbalizer.words
    }

    /// The label words' tokens, in label order: the candidate continuations to score.
    pub fn candidates(&self) -> &[Vec<u32>] {
        &self.verbalizer.tokens
    }

    /// Example `i` (< `len()`).
    pub fn example(&self, i: usize) -> ClassificationExample {
        let (prompt, _, label) = self.examples.get(i);
        ClassificationExample {
            prompt,
            label: label.unwrap_or(0),
        }
    }

    /// Scoring rows for examples `range` (clamped to the set), `seq` positions each.
    pub fn scoring_batch(&self, range: Range<usize>, seq: usize) -> ScoringBatch {
        let range = range.start.min(self.len())..range.end.min(self.len());
        let k = self.candidates().len();
        let mut batch = Batch::padded(range.len() * k, seq, self.pad);
        let (mut rows, mut gold) = (Vec::new(), Vec::new());
        for i in range {
            let ex = self.example(i);
            for (c, cand) in self.candidates().iter().enumerate() {
                batch.set_example_row(rows.len(), &ex.prompt, cand);
                rows.push((i, c));
            }
            gold.push(ex.label);
        }
        ScoringBatch {
            batch,
            rows,
            gold,
            num_candidates: k,
        }
    }

    /// Scoring batches over the whole set, `examples_per_batch` examples each (the last may
    /// hold fewer).
    pub fn scoring_batches(
        &self,
        examples_per_batch: usize,
        seq: usize,
    ) -> impl Iterator<Item = ScoringBatch> + '_ {
        let step = examples_per_batch.max(1);
        (0..self.len())
            .step_by(step)
            .map(move |s| self.scoring_batch(s..s + step, seq))
    }
}
