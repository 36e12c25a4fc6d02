//! FP8-stored weights: a frozen weight kept as its FP8 bytes and its power-of-two scale, one byte
//! a parameter (docs/design.md, "FP8-stored base weights").
//!
//! A frozen weight's FP8-AMAX cast is the same at every step (same tensor, same amax, same
//! bias), so it can be made once and the f32 weight dropped. [`Fp8Weight::encode`] runs the
//! cast the decorator runs (the same kernel, the same bias rule) and keeps each value's bit
//! pattern in the format; the GEMMs read the bytes back through a 256-entry table of their
//! values (`Fp8Kernels::matmul_stored`), so a layer computes exactly what it computed from the
//! f32 weight.
//!
//! The weight is the layer's `[d_input, d_output]` matrix `W`, stored row-major in the
//! checkpoint's layout: `[d_input, d_output]` (GPT-2's `Conv1D`), or `[d_output, d_input]`
//! (`nn.Linear`, `transposed`).

use std::fmt;
use std::sync::Arc;

use rayon::prelude::*;

use crate::format::{pow2, Fp8Format};
use crate::kernel::cpu::{quantize_slice, HostQuant};
use crate::kernel::QuantStats;
use crate::scaling::{BiasRule, NonFiniteAmax};

/// Values per task when encoding (large enough that rayon's overhead vanishes).
const CHUNK: usize = 1 << 16;

/// A frozen weight as FP8 codes with one power-of-two scale. Cheap to clone (shared bytes).
#[derive(Clone)]
pub struct Fp8Weight {
    inner: Arc<Inner>,
}

struct Inner {
    /// Row-major in the stored layout.
    codes: Vec<u8>,
    /// `[d_input, d_output]`, the layer's view.
    in_out: [usize; 2],
    /// Stored as `[d_output, d_input]`.
    transposed: bool,
    format: Fp8Format,
    /// Values are `decode(code) * 2^-bias`.
    bias: i32,
    /// The cast's figures (amax, bias, underflow, saturation), as the decorator reports a cast.
    stats: QuantStats,
}

impl Fp8Weight {
    /// The FP8 cast of `values` (row-major `[d_input, d_output]`, or `[d_output, d_input]` when
    /// `transposed`) under `rule`, bit for bit the decorator's cast of the same tensor; an error
    /// when the weight's amax is not finite.
    pub fn encode(
        values: &[f32],
        in_out: [usize; 2],
        transposed: bool,
        format: Fp8Format,
        rule: BiasRule,
    ) -> Result<Self, NonFiniteAmax> {
        assert_eq!(
            values.len(),
            in_out[0] * in_out[1],
            "a {}x{} weight of {} values",
            in_out[0],
            in_out[1],
            values.len()
        );
        let mut cast = vec![0.0f32; values.len()];
        let stats = match quantize_slice::<f32>(values, &mut cast, format, rule, true) {
            HostQuant::Done(Some(stats)) => stats,
            HostQuant::Done(None) => unreachable!("statistics were asked for"),
            HostQuant::NonFinite(amax) => return Err(NonFiniteAmax { amax }),
        };
        let scale = pow2(stats.bias);
        let mut codes = vec![0u8; values.len()];
        codes
            .par_chunks_mut(CHUNK)
            .zip(cast.par_chunks(CHUNK))
            .for_each(|(codes, cast)| {
                for (code, &q) in codes.iter_mut().zip(cast) {
                    // q * 2^bias is the format's value the cast rounded to (exact: a power of
                    // two within f32's normal range).
                    *code = format.encode(q * scale).unwrap_or_else(|| {
                        panic!("{q:e} x 2^{} is not a {format} value", stats.bias)
                    });
                }
            });
        Ok(Self {
            inner: Arc::new(Inner {
                codes,
                in_out,
                transposed,
                format,
                bias: stats.bias,
                stats,
            }),
        })
    }

    /// `[d_input, d_output]`.
    pub fn in_out(&self) -> [usize; 2] {
        self.inner.in_out
    }

    /// The stored layout's dimensions: `[d_input, d_output]`, or `[d_output, d_input]` when
    /// [`Self::transposed`].
    pub fn stored_dims(&self) -> [usize; 2] {
        let [i, o] = self.inner.in_out;
        if self.inner.transposed {
            [o, i]
        } else {
            [i, o]
        }
    }

    /// Whether the codes are stored as `[d_output, d_input]`.
    pub fn transposed(&self) -> bool {
        self.inner.transposed
    }

    /// The FP8 format of the codes.
    pub fn format(&self) -> Fp8Format {
        self.inner.format
    }

    /// The scaling bias: values are `decode(code) * 2^-bias`.
    pub fn bias(&self) -> i32 {
        self.inner.bias
    }

    /// The cast's statistics (what a cast of the f32 weight reports).
    pub fn stats(&self) -> QuantStats {
        self.inner.stats
    }

    /// The codes, row-major in the stored layout.
    pub fn codes(&self) -> &[u8] {
        &self.inner.codes
    }

    /// Bytes held: one a parameter.
    pub fn bytes(&self) -> usize {
        self.inner.codes.len()
    }

    /// The f32 value of every code (NaN patterns, which no weight holds, as NaN).
    pub fn value_table(&self) -> [f32; 256] {
        let (format, unscale) = (self.inner.format, pow2(-self.inner.bias));
        std::array::from_fn(|code| format.decode(code as u8) * unscale)
    }

    /// The bf16 bit pattern of every code's value (exact: an FP8 value times a power of two has
    /// at most 4 significant bits).
    pub fn bf16_table(&self) -> [u16; 256] {
        self.value_table().map(|v| (v.to_bits() >> 16) as u16)
    }

    /// The values, row-major in the stored layout (for backends without a GEMM that reads the
    /// codes).
    pub fn decode(&self) -> Vec<f32> {
        let table = self.value_table();
        let mut out = vec![0.0f32; self.inner.codes.len()];
        out.par_chunks_mut(CHUNK)
            .zip(self.inner.codes.par_chunks(CHUNK))
            .for_each(|(out, codes)| {
                for (v, &c) in out.iter_mut().zip(codes) {
                    *v = table[usize::from(c)];
                }
            });
        out
    }
}

impl fmt::Debug for Fp8Weight {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [i, o] = self.inner.in_out;
        write!(
            f,
            "Fp8Weight({i}x{o}, {}, bias {}{})",
            self.inner.format,
            self.inner.bias,
            if self.inner.transposed {
                ", stored transposed"
            } else {
                ""
            }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scaling::quantize_scaled;

    fn values(n: usize, seed: u32) -> Vec<f32> {
        // Spread over magnitudes (some underflow, one at the amax) with both signs.
        (0..n)
            .map(|i| {
                let h = (i as u32).wrapping_mul(2654435761).wrapping_add(seed) >> 8;
                let x = (h % 20001) as f32 / 10000.0 - 1.0;
                x * x * x * 0.05
            })
            .collect()
    }

    #[test]
    fn decoded_values_are_the_decorators_cast_bit_for_bit() {
        for format in [Fp8Format::E4M3Fnuz, Fp8Format::E4M3Fn] {
            for rule in [
                BiasRule::Amax { margin: 0 },
                BiasRule::Amax { margin: 2 },
                BiasRule::Constant(-3),
            ] {
                let x = values(3 * 70_001, 7);
                let w = Fp8Weight::encode(&x, [3, 70_001], false, format, rule).unwrap();
                let mut cast = vec![0.0f32; x.len()];
                let HostQuant::Done(Some(stats)) =
                    quantize_slice::<f32>(&x, &mut cast, format, rule, true)
                else {
                    panic!("finite")
                };
                assert_eq!(w.bias(), stats.bias);
                assert_eq!(w.stats(), stats);
                assert_eq!(w.bytes(), x.len());
                for ((&d, &c), &xi) in w.decode().iter().zip(&cast).zip(&x) {
                    // Equal values; the fnuz formats have no negative zero.
                    assert!(
                        d == c
                            && (d != 0.0
                                || format == Fp8Format::E4M3Fnuz
                                || d.to_bits() == c.to_bits()),
                        "{format} {rule:?}: {xi:e} -> {d:e}, cast {c:e}"
                    );
                    assert_eq!(d, quantize_scaled(xi, format, stats.bias));
                }
            }
        }
    }

    #[test]
    fn bf16_table_holds_the_values() {
        let w = Fp8Weight::encode(
            &values(1000, 3),
            [10, 100],
            true,
            Fp8Format::E4M3Fnuz,
            BiasRule::Amax { margin: 0 },
        )
        .unwrap();
        for (v, b) in w.value_table().iter().zip(w.bf16_table()) {
            let widened = f32::from_bits(u32::from(b) << 16);
            assert!(
                v.is_nan() && widened.is_nan() || v.to_bits() == widened.to_bits(),
                "{v:e}"
            );
        }
        assert_eq!(w.stored_dims(), [100, 10]);
    }

    #[test]
    fn a_non_finite_weight_is_refused() {
        let mut x = values(64, 1);
        x[9] = f32::INFINITY;
        let e = Fp8Weight::encode(
            &x,
            [8, 8],
            false,
            Fp8Format::E4M3Fnuz,
            BiasRule::Amax { margin: 0 },
        );
        assert!(e.is_err());
    }
}
