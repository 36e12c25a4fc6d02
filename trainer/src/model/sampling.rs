//! Autoregressive generation: greedy, or temperature / top-k / top-p sampling with a seed
//! (nanoGPT's `generate`: crop the context to the context length, sample from the last position;
//! top-p is Holtzman et al. 2020, "The Curious Case of Neural Text Degeneration").
//!
//! Without a key/value cache each new token re-runs the whole context: fine for the CPU
//! backend and short outputs, which is what this tool is for.

use std::ops::ControlFlow;

use burn::tensor::{Int, Tensor, TensorData};

use crate::model::{Model, ModelBackend};

/// How to pick each next token.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplingOptions {
    /// Tokens to append.
    pub max_new_tokens: usize,
    /// Logits are divided by this before the softmax; 0 means greedy (argmax).
    pub temperature: f64,
    /// Sample only among the k most likely tokens (ties with the k-th kept); `None`: all.
    pub top_k: Option<usize>,
    /// Nucleus sampling, after temperature and top-k: only the smallest set of most likely
    /// tokens whose probability reaches this (in (0, 1]) is drawn from; `None` or 1: all.
    pub top_p: Option<f64>,
    /// Seed of the sampler's random stream; the same seed gives the same text.
    pub seed: u64,
    /// Stop after emitting any of these tokens (end-of-text; Llama 3 has several).
    pub stop_tokens: Vec<u32>,
    /// Only ids below this are drawn (a tokenizer smaller than the model's padded vocabulary).
    pub vocab_limit: Option<usize>,
}

impl Default for SamplingOptions {
    /// nanoGPT's `sample.py` defaults.
    fn default() -> Self {
        Self {
            max_new_tokens: 100,
            temperature: 0.8,
            top_k: Some(200),
            top_p: None,
            seed: 1337,
            stop_tokens: Vec::new(),
            vocab_limit: None,
        }
    }
}

/// Appends up to `max_new_tokens` tokens to `prompt` (which must be non-empty and within the
/// vocabulary); returns only the new ones.
pub fn generate<B: ModelBackend>(
    model: &Model<B>,
    prompt: &[u32],
    options: &SamplingOptions,
    device: &B::Device,
) -> Vec<u32> {
    generate_with(
        model,
        prompt,
        options,
        device,
        |_| ControlFlow::Continue(()),
    )
}

/// [`generate`], calling `on_token` with each new token as soon as it is drawn (the stop token
/// included); `on_token` returning `Break` ends the generation there (that token is kept).
pub fn generate_with<B: ModelBackend>(
    model: &Model<B>,
    prompt: &[u32],
    options: &SamplingOptions,
    device: &B::Device,
    mut on_token: impl FnMut(u32) -> ControlFlow<()>,
) -> Vec<u32> {
    let n_positions = model.config().max_positions();
    let mut rng = SplitMix64(options.seed);
    let mut tokens: Vec<u32> = prompt.to_vec();
    // Not `with_capacity(max_new_tokens)`: a huge request (the loop stops at the stop token)
    // would abort on the allocation before producing anything.
    let mut new = Vec::new();
    for _ in 0..options.max_new_tokens {
        let context = &tokens[tokens.len().saturating_sub(n_positions)..];
        let ids: Vec<i64> = context.iter().map(|&t| t as i64).collect();
        let input =
            Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [1, context.len()]), device);
        let logits = model.forward(input); // (1, T, V)
        let t = context.len();
        let mut logits: Vec<f32> = logits
            .narrow(1, t - 1, 1)
            .into_data()
            .convert::<f32>()
            .into_vec()
            .expect("converted to f32");
        logits.truncate(options.vocab_limit.unwrap_or(usize::MAX).max(1));
        let next = sample_next(
            &logits,
            options.temperature,
            options.top_k,
            options.top_p,
            &mut rng,
        );
        tokens.push(next);
        new.push(next);
        if on_token(next).is_break() || options.stop_tokens.contains(&next) {
            break;
        }
    }
    new
}

/// Picks a token from one position's logits: temperature, then top-k, then top-p.
pub fn sample_next(
    logits: &[f32],
    temperature: f64,
    top_k: Option<usize>,
    top_p: Option<f64>,
    rng: &mut SplitMix64,
) -> u32 {
    let argmax = || {
        let mut best = 0;
        for (i, &x) in logits.iter().enumerate() {
            if x > logits[best] {
                best = i;
            }
        }
        best as u32
    };
    if temperature <= 0.0 || top_k == Some(1) {
        return argmax();
    }
    let threshold = match top_k {
        Some(0) => return argmax(),
        Some(k) if k < logits.len() => {
            let mut sorted = logits.to_vec();
            sorted.sort_by(|a, b| b.total_cmp(a));
            sorted[k - 1]
        }
        _ => f32::NEG_INFINITY,
    };
    let max = logits[argmax() as usize] as f64;
    let mut weights: Vec<f64> = logits
        .iter()
        .map(|&x| {
            if x >= threshold {
                ((x as f64 - max) / temperature).exp()
            } else {
                0.0
            }
        })
        .collect();
    // p >= 1 keeps every token: skipped, so that the draws are exactly those without top-p.
    if let Some(p) = top_p.filter(|&p| p < 1.0) {
        keep_nucleus(&mut weights, p);
    }
    let mut u = rng.next_f64() * weights.iter().sum::<f64>();
    for (i, w) in weights.iter().enumerate() {
        if u < *w {
            return i as u32;
        }
        u -= w;
    }
    argmax() // only reached through rounding at the very end of the distribution
}

/// Zeroes every weight outside the nucleus: the smallest set of largest weights whose sum
/// reaches `p` of the total (at least one weight, whatever `p`). Equal weights are taken in id
/// order, so the set does not depend on the sort.
fn keep_nucleus(weights: &mut [f64], p: f64) {
    let target = p * weights.iter().sum::<f64>();
    let mut order: Vec<usize> = (0..weights.len()).collect();
    order.sort_by(|&a, &b| weights[b].total_cmp(&weights[a]).then(a.cmp(&b)));
    let mut mass = 0.0;
    let mut kept = 0;
    for &i in &order {
        kept += 1;
        mass += weights[i];
        if mass >= target {
            break;
        }
    }
    for &i in &order[kept..] {
        weights[i] = 0.0;
    }
}

/// A small, fully specified random stream (Steele et al. 2014, "SplitMix64"), so that a seed
/// means the same text on every platform and with every version of any RNG crate.
#[derive(Clone, Debug)]
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1), 53 bits.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_is_argmax() {
        let mut rng = SplitMix64(0);
        assert_eq!(sample_next(&[0.1, 3.0, 2.9], 0.0, None, None, &mut rng), 1);
        assert_eq!(
            sample_next(&[0.1, 3.0, 2.9], 1.0, Some(1), None, &mut rng),
            1
        );
    }

    #[test]
    fn top_k_never_picks_outside_the_k_best() {
        let logits = [5.0, 4.9, -1.0, 4.8, 0.0];
        let mut rng = SplitMix64(7);
        for _ in 0..500 {
            assert!([0, 1].contains(&sample_next(&logits, 5.0, Some(2), None, &mut rng)));
        }
    }

    #[test]
    fn sampling_follows_the_softmax_and_the_seed() {
        // p = softmax([0, ln 3]) = [0.25, 0.75]
        let logits = [0.0, 3f32.ln()];
        let mut rng = SplitMix64(42);
        let ones = (0..20_000)
            .filter(|_| sample_next(&logits, 1.0, None, None, &mut rng) == 1)
            .count();
        assert!((ones as f64 / 20_000.0 - 0.75).abs() < 0.02, "{ones}");
        let draw = |seed| {
            let mut rng = SplitMix64(seed);
            (0..32)
                .map(|_| sample_next(&logits, 1.0, None, None, &mut rng))
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(3), draw(3));
        assert_ne!(draw(3), draw(4));
    }

    /// p = softmax(LN_5_2_1) = [5, 2, 1] / 8: mass boundaries at 0.625 and 0.875.
    const LN_5_2_1: [f32; 3] = [1.609_438, std::f32::consts::LN_2, 0.0];

    /// The set of tokens drawn from `logits` (temperature 1, no top-k) with `top_p`, over 2000
    /// draws of one seeded stream.
    fn drawn(logits: &[f32], top_p: Option<f64>) -> Vec<u32> {
        drawn_with(logits, 1.0, None, top_p)
    }

    fn drawn_with(
        logits: &[f32],
        temperature: f64,
        top_k: Option<usize>,
        top_p: Option<f64>,
    ) -> Vec<u32> {
        let mut rng = SplitMix64(11);
        let mut seen: Vec<u32> = (0..2000)
            .map(|_| sample_next(logits, temperature, top_k, top_p, &mut rng))
            .collect();
        seen.sort();
        seen.dedup();
        seen
    }

    #[test]
    fn top_p_keeps_the_smallest_nucleus_reaching_p() {
        assert_eq!(
            drawn(&LN_5_2_1, None),
            [0, 1, 2],
            "without top-p all are drawn"
        );
        assert_eq!(
            drawn(&LN_5_2_1, Some(0.5)),
            [0],
            "0.625 >= 0.5: the top token only"
        );
        assert_eq!(drawn(&LN_5_2_1, Some(0.62)), [0]);
        assert_eq!(
            drawn(&LN_5_2_1, Some(0.63)),
            [0, 1],
            "just above 0.625: the next one"
        );
        assert_eq!(drawn(&LN_5_2_1, Some(0.87)), [0, 1]);
        assert_eq!(
            drawn(&LN_5_2_1, Some(0.88)),
            [0, 1, 2],
            "just above 0.875: all three"
        );
        // A tiny p still keeps one token.
        assert_eq!(drawn(&LN_5_2_1, Some(1e-9)), [0]);
    }

    #[test]
    fn top_p_over_many_seeds_draws_only_the_top_token() {
        for seed in 0..1000 {
            let mut rng = SplitMix64(seed);
            assert_eq!(sample_next(&LN_5_2_1, 1.0, None, Some(0.5), &mut rng), 0);
        }
    }

    #[test]
    fn top_p_renormalises_within_the_nucleus() {
        // Nucleus {0, 1} with weights 5 : 2.
        let mut rng = SplitMix64(5);
        let ones = (0..20_000)
            .filter(|_| sample_next(&LN_5_2_1, 1.0, None, Some(0.7), &mut rng) == 1)
            .count();
        assert!((ones as f64 / 20_000.0 - 2.0 / 7.0).abs() < 0.02, "{ones}");
    }

    #[test]
    fn top_p_breaks_ties_by_id() {
        // Tokens 1 and 3 tie for the top (p = 0.42 each): either one reaches 0.3; id 1 wins.
        let logits = [0.0, 1.0, 0.0, 1.0];
        assert_eq!(drawn(&logits, Some(0.3)), [1]);
        assert_eq!(drawn(&logits, Some(0.5)), [1, 3]);
    }

    #[test]
    fn top_p_1_draws_exactly_what_no_top_p_draws() {
        let logits = [0.3, -1.0, 2.0, 1.9, 0.0, 0.7];
        for seed in 0..50 {
            let draw = |top_p| {
                let mut rng = SplitMix64(seed);
                (0..64)
                    .map(|_| sample_next(&logits, 0.9, Some(5), top_p, &mut rng))
                    .collect::<Vec<_>>()
            };
            assert_eq!(draw(Some(1.0)), draw(None), "seed {seed}");
        }
    }

    #[test]
    fn top_p_applies_after_top_k_and_temperature() {
        // Top-k 2 leaves [5, 2] / 7: 5/7 = 0.71 reaches 0.7, so only token 0 (without top-k,
        // 0.625 does not: tokens 0 and 1).
        assert_eq!(drawn_with(&LN_5_2_1, 1.0, Some(2), Some(0.7)), [0]);
        assert_eq!(drawn_with(&LN_5_2_1, 1.0, None, Some(0.7)), [0, 1]);
        // A high temperature flattens [5, 2, 1] towards thirds: 0.5 then needs two tokens.
        assert_eq!(drawn_with(&LN_5_2_1, 100.0, None, Some(0.5)), [0, 1]);
    }
}
