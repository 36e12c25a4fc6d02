//! Named Llama-family shapes: the models people fine-tune (their `config.json` shapes, random
//! weights: for memory checks and the bench; a real checkpoint is loaded with
//! `model.checkpoint`), and small shapes for pretraining and tests.

use serde_json::Map;

use super::config::{LlamaConfig, RopeScaling, RopeStyle, Variant};

impl LlamaConfig {
    /// Names accepted by [`LlamaConfig::preset`].
    #[rustfmt::skip]
    pub const PRESETS: &'static [&'static str] = &[
        "llama-tiny", "llama-2x768", "smollm2-135m", "smollm2-360m", "tinyllama-1.1b",
        "llama-3.2-1b", "qwen2.5-0.5b",
    ];

    /// A Llama with `transformers`' defaults for everything but the shapes given.
    #[allow(clippy::too_many_arguments)]
    pub fn llama(
        vocab_size: usize,
        hidden_size: usize,
        intermediate_size: usize,
        num_hidden_layers: usize,
        num_attention_heads: usize,
        num_key_value_heads: usize,
        max_position_embeddings: usize,
    ) -> Self {
        Self {
            variant: Variant::Llama,
            vocab_size,
            hidden_size,
            intermediate_size,
            num_hidden_layers,
            num_attention_heads,
            num_key_value_heads,
            head_dim: hidden_size / num_attention_heads,
            explicit_head_dim: false,
            max_position_embeddings,
            rms_norm_eps: 1e-5,
            rope_theta: 10000.0,
            rope_scaling: RopeScaling::Default,
            rope_style: RopeStyle::Transformers4,
            qkv_bias: false,
            o_bias: false,
            mlp_bias: false,
            tie_word_embeddings: false,
            sliding_window: None,
            initializer_range: 0.02,
            bos_token_id: Some(1),
            eos_token_ids: vec![2],
            extra: Map::new(),
        }
    }

    /// The shape of `tests/fixtures/llama-tiny`: 2 layers 64 wide, 4 query heads sharing 2
    /// key/value heads, MLP 160 wide, 512 tokens, 64 positions.
    pub fn llama_tiny() -> Self {
        Self::llama(512, 64, 160, 2, 4, 2, 64)
    }

    /// The bench's shape, about the size of the 2x768 GPT-2 bench: 2 layers 768 wide, 12 query
    /// heads sharing 4 key/value heads, MLP 2048, Llama 2's 32000 tokens, 1024 positions.
    pub fn llama_2x768() -> Self {
        Self::llama(32000, 768, 2048, 2, 12, 4, 1024)
    }

    /// `HuggingFaceTB/SmolLM2-135M`: 30 layers 576 wide, 9 heads / 3 KV heads, tied.
    pub fn smollm2_135m() -> Self {
        Self {
            rope_theta: 100000.0,
            tie_word_embeddings: true,
            bos_token_id: Some(0),
            eos_token_ids: vec![0],
            ..Self::llama(49152, 576, 1536, 30, 9, 3, 8192)
        }
    }

    /// `HuggingFaceTB/SmolLM2-360M`: 32 layers 960 wide, 15 heads / 5 KV heads, tied.
    pub fn smollm2_360m() -> Self {
        Self {
            rope_theta: 100000.0,
            tie_word_embeddings: true,
            bos_token_id: Some(0),
            eos_token_ids: vec![0],
            ..Self::llama(49152, 960, 2560, 32, 15, 5, 8192)
        }
    }

    /// `TinyLlama/TinyLlama-1.1B`: 22 layers 2048 wide, 32 heads / 4 KV heads.
    pub fn tinyllama_1_1b() -> Self {
        Self::llama(32000, 2048, 5632, 22, 32, 4, 2048)
    }

    /// `meta-llama/Llama-3.2-1B`: 16 layers 2048 wide, 32 heads / 8 KV heads, tied, llama3
    /// rotary scaling.
    pub fn llama_3_2_1b() -> Self {
        Self {
            head_dim: 64,
            explicit_head_dim: true,
            rope_theta: 500000.0,
            rope_scaling: RopeScaling::Llama3 {
                factor: 32.0,
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original_max_position_embeddings: 8192,
            },
            tie_word_embeddings: true,
            bos_token_id: Some(128000),
            eos_token_ids: vec![128001],
            ..Self::llama(128256, 2048, 8192, 16, 32, 8, 131072)
        }
    }

    /// `Qwen/Qwen2.5-0.5B`: 24 layers 896 wide, 14 heads / 2 KV heads, q/k/v biases, tied.
    pub fn qwen2_5_0_5b() -> Self {
        Self {
            variant: Variant::Qwen2,
            qkv_bias: true,
            rms_norm_eps: 1e-6,
            rope_theta: 1000000.0,
            tie_word_embeddings: true,
            bos_token_id: Some(151643),
            eos_token_ids: vec![151643],
            ..Self::llama(151936, 896, 4864, 24, 14, 2, 32768)
        }
    }

    /// Looks up a preset by name (case-insensitive); `None` when it is not a Llama-family one.
    pub fn preset(name: &str) -> Option<Self> {
        Some(match name.to_ascii_lowercase().as_str() {
            "llama-tiny" => Self::llama_tiny(),
            "llama-2x768" => Self::llama_2x768(),
            "smollm2-135m" => Self::smollm2_135m(),
            "smollm2-360m" => Self::smollm2_360m(),
            "tinyllama-1.1b" => Self::tinyllama_1_1b(),
            "llama-3.2-1b" => Self::llama_3_2_1b(),
            "qwen2.5-0.5b" => Self::qwen2_5_0_5b(),
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn presets_are_valid_and_have_their_models_sizes() {
        for name in LlamaConfig::PRESETS {
            let config = LlamaConfig::preset(name).unwrap();
            config.validate(Path::new(name)).unwrap();
        }
        assert!(LlamaConfig::preset("llama-7b").is_none());
        // Parameter counts of the released models (their model cards).
        let millions = |c: LlamaConfig| c.num_params() as f64 / 1e6;
        assert_eq!(LlamaConfig::smollm2_135m().num_params(), 134_515_008);
        assert!((millions(LlamaConfig::smollm2_360m()) - 361.8).abs() < 0.1);
        assert!((millions(LlamaConfig::tinyllama_1_1b()) - 1100.0).abs() < 1.0);
        assert!((millions(LlamaConfig::llama_3_2_1b()) - 1235.8).abs() < 0.1);
        assert!((millions(LlamaConfig::qwen2_5_0_5b()) - 494.0).abs() < 0.1);
    }
}
