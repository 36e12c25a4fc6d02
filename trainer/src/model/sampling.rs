//! Autoregressive generation: greedy, or temperature / top-k sampling with a seed
//! (nanoGPT's `generate`: crop the context to `n_positions`, sample from the last position).
//!
//! Without a key/value cache each new token re-runs the whole context: fine for the CPU
//! backend and short outputs, which is what this tool is for.

use burn::tensor::{Int, Tensor, TensorData};

use crate::model::{Gpt2, ModelBackend};

/// How to pick each next token.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplingOptions {
    /// Tokens to append.
    pub max_new_tokens: usize,
    /// Logits are divided by this before the softmax; 0 means greedy (argmax).
    pub temperature: f64,
    /// Sample only among the k most likely tokens (ties with the k-th kept); `None`: all.
    pub top_k: Option<usize>,
    /// Seed of the sampler's random stream; the same seed gives the same text.
    pub seed: u64,
    /// Stop after emitting this token (e.g. end-of-text).
    pub stop_token: Option<u32>,
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
            seed: 1337,
            stop_token: None,
            vocab_limit: None,
        }
    }
}

/// Appends up to `max_new_tokens` tokens to `prompt` (which must be non-empty and within the
/// vocabulary); returns only the new ones.
pub fn generate<B: ModelBackend>(
    model: &Gpt2<B>,
    prompt: &[u32],
    options: &SamplingOptions,
    device: &B::Device,
) -> Vec<u32> {
    let n_positions = model.config().n_positions;
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
        let next = sample_next(&logits, options.temperature, options.top_k, &mut rng);
        tokens.push(next);
        new.push(next);
        if Some(next) == options.stop_token {
            break;
        }
    }
    new
}

/// Picks a token from one position's logits.
pub fn sample_next(
    logits: &[f32],
    temperature: f64,
    top_k: Option<usize>,
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
    let weights: Vec<f64> = logits
        .iter()
        .map(|&x| {
            if x >= threshold {
                ((x as f64 - max) / temperature).exp()
            } else {
                0.0
            }
        })
        .collect();
    let mut u = rng.next_f64() * weights.iter().sum::<f64>();
    for (i, w) in weights.iter().enumerate() {
        if u < *w {
            return i as u32;
        }
        u -= w;
    }
    argmax() // only reached through rounding at the very end of the distribution
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
        assert_eq!(sample_next(&[0.1, 3.0, 2.9], 0.0, None, &mut rng), 1);
        assert_eq!(sample_next(&[0.1, 3.0, 2.9], 1.0, Some(1), &mut rng), 1);
    }

    #[test]
    fn top_k_never_picks_outside_the_k_best() {
        let logits = [5.0, 4.9, -1.0, 4.8, 0.0];
        let mut rng = SplitMix64(7);
        for _ in 0..500 {
            assert!([0, 1].contains(&sample_next(&logits, 5.0, Some(2), &mut rng)));
        }
    }

    #[test]
    fn sampling_follows_the_softmax_and_the_seed() {
        // p = softmax([0, ln 3]) = [0.25, 0.75]
        let logits = [0.0, 3f32.ln()];
        let mut rng = SplitMix64(42);
        let ones = (0..20_000)
            .filter(|_| sample_next(&logits, 1.0, None, &mut rng) == 1)
            .count();
        assert!((ones as f64 / 20_000.0 - 0.75).abs() < 0.02, "{ones}");
        let draw = |seed| {
            let mut rng = SplitMix64(seed);
            (0..32)
                .map(|_| sample_next(&logits, 1.0, None, &mut rng))
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(3), draw(3));
        assert_ne!(draw(3), draw(4));
    }
}
