//! Named configurations of the GPT-2 family: OpenAI's GPT-2 sizes, distilgpt2, Cerebras-GPT,
//! and tiny test shapes.

use super::{Activation, Gpt2Config};

impl Gpt2Config {
    /// Names accepted by [`Gpt2Config::preset`].
    #[rustfmt::skip]
    pub const PRESETS: &'static [&'static str] = &[
        "gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl", "distilgpt2", "cerebras-gpt-111m",
        "cerebras-gpt-256m", "cerebras-gpt-590m", "cerebras-gpt-1.3b", "cerebras-gpt-2.7b",
        "cerebras-gpt-6.7b", "cerebras-gpt-13b", "tiny", "tiny-gpt2-vocab",
    ];

    /// `gpt2` (124M): 12 layers, 768 wide, 12 heads.
    pub fn gpt2_small() -> Self {
        Self::new(50257, 1024, 768, 12, 12)
    }
    /// `gpt2-medium` (355M).
    pub fn gpt2_medium() -> Self {
        Self::new(50257, 1024, 1024, 24, 16)
    }
    /// `gpt2-large` (774M).
    pub fn gpt2_large() -> Self {
        Self::new(50257, 1024, 1280, 36, 20)
    }
    /// `gpt2-xl` (1.5B).
    pub fn gpt2_xl() -> Self {
        Self::new(50257, 1024, 1600, 48, 25)
    }
    /// `distilgpt2` (82M): gpt2-small with 6 layers.
    pub fn distilgpt2() -> Self {
        Self::new(50257, 1024, 768, 6, 12)
    }

    /// Cerebras-GPT (Dey et al. 2023, arXiv 2304.03208, table of model sizes): GPT-2 architecture,
    /// 2048 positions, exact GELU, no dropout, n_inner = 4 * n_embd.
    fn cerebras(n_embd: usize, n_layer: usize, n_head: usize) -> Self {
        Self {
            n_inner: Some(4 * n_embd),
            activation_function: Activation::Gelu,
            resid_pdrop: 0.0,
            embd_pdrop: 0.0,
            attn_pdrop: 0.0,
            ..Self::new(50257, 2048, n_embd, n_layer, n_head)
        }
    }
    /// `cerebras/Cerebras-GPT-111M`.
    pub fn cerebras_gpt_111m() -> Self {
        Self::cerebras(768, 10, 12)
    }
    /// `cerebras/Cerebras-GPT-256M`.
    pub fn cerebras_gpt_256m() -> Self {
        Self::cerebras(1088, 14, 17)
    }
    /// `cerebras/Cerebras-GPT-590M`.
    pub fn cerebras_gpt_590m() -> Self {
        Self::cerebras(1536, 18, 12)
    }
    /// `cerebras/Cerebras-GPT-1.3B`.
    pub fn cerebras_gpt_1_3b() -> Self {
        Self::cerebras(2048, 24, 16)
    }
    /// `cerebras/Cerebras-GPT-2.7B`.
    pub fn cerebras_gpt_2_7b() -> Self {
        Self::cerebras(2560, 32, 32)
    }
    /// `cerebras/Cerebras-GPT-6.7B`.
    pub fn cerebras_gpt_6_7b() -> Self {
        Self::cerebras(4096, 32, 32)
    }
    /// `cerebras/Cerebras-GPT-13B`.
    pub fn cerebras_gpt_13b() -> Self {
        Self::cerebras(5120, 40, 40)
    }

    /// Test preset, the shape of `tests/fixtures/gpt2-tiny`: every projection non-square
    /// (c_attn 64x192, c_fc 64x192, mlp.c_proj 192x64), 2 blocks, 64 positions, 512 tokens.
    pub fn tiny() -> Self {
        Self {
            n_inner: Some(192),
            bos_token_id: Some(511),
            eos_token_id: Some(511),
            ..Self::new(512, 64, 64, 2, 4)
        }
    }
    /// Test preset with GPT-2's 50257-token vocabulary, for end-to-end runs with the real tokenizer.
    pub fn tiny_gpt2_vocab() -> Self {
        Self {
            vocab_size: 50257,
            n_positions: 256,
            bos_token_id: Some(50256),
            eos_token_id: Some(50256),
            ..Self::tiny()
        }
    }

    /// Looks up a preset by its hub-style name (see [`Gpt2Config::PRESETS`]; case-insensitive);
    /// `None` when it is not a GPT-2 preset.
    pub fn preset(name: &str) -> Option<Self> {
        Some(match name.to_ascii_lowercase().as_str() {
            "gpt2" | "gpt2-small" => Self::gpt2_small(),
            "gpt2-medium" => Self::gpt2_medium(),
            "gpt2-large" => Self::gpt2_large(),
            "gpt2-xl" => Self::gpt2_xl(),
            "distilgpt2" => Self::distilgpt2(),
            "cerebras-gpt-111m" => Self::cerebras_gpt_111m(),
            "cerebras-gpt-256m" => Self::cerebras_gpt_256m(),
            "cerebras-gpt-590m" => Self::cerebras_gpt_590m(),
            "cerebras-gpt-1.3b" => Self::cerebras_gpt_1_3b(),
            "cerebras-gpt-2.7b" => Self::cerebras_gpt_2_7b(),
            "cerebras-gpt-6.7b" => Self::cerebras_gpt_6_7b(),
            "cerebras-gpt-13b" => Self::cerebras_gpt_13b(),
            "tiny" => Self::tiny(),
            "tiny-gpt2-vocab" => Self::tiny_gpt2_vocab(),
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn presets_are_valid() {
        for name in Gpt2Config::PRESETS {
            let config = Gpt2Config::preset(name).unwrap();
            config.validate(Path::new(name)).unwrap();
        }
        assert!(Gpt2Config::preset("gpt3").is_none());
    }
}
