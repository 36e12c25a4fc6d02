//! Rotary position embeddings' inverse frequencies, as `transformers` computes them
//! (`modeling_rope_utils.py`) in f32: `default` `theta^(-2i/d)`, `linear` divided by the
//! factor, `llama3` (Llama 3.1 and later) long wavelengths divided by the factor, short ones
//! kept, those between interpolated. The attention builds its cosine and sine tables from them
//! (`crate::model::ops::rotary_attention::RotaryTables`).

use super::config::RopeScaling;

/// The `head_dim / 2` inverse frequencies of a head of `head_dim` with base `theta`.
pub fn inv_freq(head_dim: usize, theta: f64, scaling: &RopeScaling) -> Vec<f32> {
    let theta = theta as f32;
    let base: Vec<f32> = (0..head_dim / 2)
        .map(|i| 1.0 / theta.powf((2 * i) as f32 / head_dim as f32))
        .collect();
    match *scaling {
        RopeScaling::Default => base,
        RopeScaling::Linear { factor } => base.iter().map(|f| f / factor as f32).collect(),
        RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings,
        } => {
            let (factor, low, high) = (
                factor as f32,
                low_freq_factor as f32,
                high_freq_factor as f32,
            );
            let old_context = original_max_position_embeddings as f32;
            let low_freq_wavelen = old_context / low;
            let high_freq_wavelen = old_context / high;
            base.iter()
                .map(|&f| {
                    let wavelen = 2.0 * std::f32::consts::PI / f;
                    if wavelen < high_freq_wavelen {
                        f
                    } else if wavelen > low_freq_wavelen {
                        f / factor
                    } else {
                        let smooth = (old_context / wavelen - low) / (high - low);
                        (1.0 - smooth) * f / factor + smooth * f
                    }
                })
                .collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llama3_scaling_keeps_high_frequencies_and_divides_low_ones() {
        let scaling = RopeScaling::Llama3 {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 16,
        };
        let (plain, scaled) = (
            inv_freq(32, 500000.0, &RopeScaling::Default),
            inv_freq(32, 500000.0, &scaling),
        );
        // Wavelengths below 16 / 4 = 4 positions keep their frequency; above 16, divided by 8.
        for (p, s) in plain.iter().zip(&scaled) {
            let wavelen = 2.0 * std::f32::consts::PI / p;
            if wavelen < 4.0 {
                assert_eq!(p, s);
            } else if wavelen > 16.0 {
                assert_eq!(*s, p / 8.0);
            } else {
                assert!(*s < *p && *s > p / 8.0, "{p} -> {s} interpolates");
            }
        }
        assert!(plain.iter().zip(&scaled).any(|(p, s)| p != s));
        let linear = inv_freq(8, 10000.0, &RopeScaling::Linear { factor: 4.0 });
        assert_eq!(linear[0], 0.25);
    }
}
