//! `exp` as branch-free f32 arithmetic, and the loops of the fused passes that call it, compiled
//! for each vector width the CPU has (`fp8_backend::multiversion!`).
//!
//! libm's `expf` and `tanhf` are scalar calls: a profile of the 2x768 and gpt2-124M training
//! steps put them at 7% and 10% of the step (GELU's tanh forward and backward, the attention
//! softmax, the cross-entropy over the vocabulary). [`exp`] is the Cephes polynomial (as SIMD
//! libraries write it) on the reduced argument, within 2 ulp of the correctly rounded result over
//! the whole f32 range, subnormal results included (tested below against f64). GELU's tanh form
//! is computed through one `exp` as `x * sigmoid(2u)`, which equals `0.5 x (1 + tanh(u))`.

use fp8_backend::multiversion;
pub use fp8_backend::simd::Isa;

/// log2(e).
const LOG2E: f32 = std::f32::consts::LOG2_E;
/// ln(2) split in two: `LN2_HI` has few significant bits, so `n * LN2_HI` is exact for the
/// |n| <= 150 that occur, and `LN2_LO` carries the rest.
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
/// Above this, e^x overflows f32 (ln of the largest f32, rounded down).
const EXP_HI: f32 = 88.722_83;
/// Below this, e^x rounds to zero (ln of half the smallest subnormal).
const EXP_LO: f32 = -103.972_08;
/// 1.5 * 2^23: adding and subtracting it rounds to the nearest integer (ties to even).
const ROUND: f32 = 12_582_912.0;

/// sqrt(2 / pi), as `NewGELUActivation` writes it (`math.sqrt(2.0 / math.pi)`).
pub const SQRT_2_OVER_PI: f32 = 0.797_884_6;
/// The cubic coefficient of the tanh approximation of GELU.
pub const GELU_CUBIC: f32 = 0.044_715;

/// 2^n for -126 <= n <= 127, from the exponent field.
#[inline(always)]
fn pow2i(n: i32) -> f32 {
    f32::from_bits(((n + 127) as u32) << 23)
}

/// e^x within 2 ulp; +inf above [`EXP_HI`], 0 below [`EXP_LO`], NaN for NaN.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    let xc = x.clamp(EXP_LO, EXP_HI);
    // x = n ln2 + r, |r| <= ln2 / 2.
    let n = (xc * LOG2E + ROUND) - ROUND;
    let r = (xc - n * LN2_HI) - n * LN2_LO;
    let mut p = 1.987_569_1e-4_f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 5.000_000_1e-1;
    let er = p * (r * r) + r + 1.0;
    // 2^n in two factors: n runs from -150 to 128, past what one exponent field holds.
    let n = n as i32;
    let half = n >> 1;
    let y = er * pow2i(half) * pow2i(n - half);
    let y = if x > EXP_HI { f32::INFINITY } else { y };
    let y = if x < EXP_LO { 0.0 } else { y };
    if x.is_nan() {
        x
    } else {
        y
    }
}

/// `0.5 x (1 + tanh(u))`, `u = sqrt(2/pi) (x + 0.044715 x^3)`, as `x / (1 + e^(-2u))`.
#[inline(always)]
fn gelu_tanh(x: f32) -> f32 {
    let u = SQRT_2_OVER_PI * (x + GELU_CUBIC * (x * x * x));
    x / (1.0 + exp(-2.0 * u))
}

/// d gelu_tanh(x) / dx = `s + 2 x s (1 - s) u'`, `s = sigmoid(2u)` (= (1 + tanh(u)) / 2).
/// With `e = e^(-2u)`, `s = 1 / (1 + e)` and `1 - s = e s`, which keeps its precision where
/// `s` is close to 1.
#[inline(always)]
fn gelu_tanh_grad(x: f32) -> f32 {
    let x2 = x * x;
    let u = SQRT_2_OVER_PI * (x + GELU_CUBIC * (x2 * x));
    let du = SQRT_2_OVER_PI * (1.0 + 3.0 * GELU_CUBIC * x2);
    let e = exp(-2.0 * u);
    let s = 1.0 / (1.0 + e);
    // e s^2 is 0 * 0 for very negative x (e = inf gives s = 0: inf * 0 would be NaN).
    let s1ms = if e == f32::INFINITY { 0.0 } else { e * s * s };
    s + 2.0 * x * s1ms * du
}

/// Lanes of the partial sums: as many as an AVX-512 register holds, so each build keeps its
/// sums in registers.
const LANES: usize = 16;

/// The sum of `v` in [`LANES`] partial sums, added up in a fixed order.
#[inline(always)]
fn lane_sum(v: &[f32], mut f: impl FnMut(f32) -> f32) -> f32 {
    let mut acc = [0f32; LANES];
    let chunks = v.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for (a, &x) in acc.iter_mut().zip(c) {
            *a += f(x);
        }
    }
    let mut sum = tail.iter().fold(0f32, |s, &x| s + f(x));
    for a in acc {
        sum += a;
    }
    sum
}

multiversion! {
    /// `y = gelu_tanh(x)`, element-wise.
    pub fn gelu_forward(x: &[f32], y: &mut [f32]) -> () {
        for (y, &x) in y.iter_mut().zip(x) {
            *y = gelu_tanh(x);
        }
    }
}

multiversion! {
    /// `g *= gelu_tanh'(x)`, element-wise.
    pub fn gelu_backward(x: &[f32], g: &mut [f32]) -> () {
        for (g, &x) in g.iter_mut().zip(x) {
            *g *= gelu_tanh_grad(x);
        }
    }
}

/// `x * sigmoid(x)` (SiLU) and its derivative `sigmoid(x) (1 + x (1 - sigmoid(x)))`.
#[inline(always)]
fn silu_and_grad(x: f32) -> (f32, f32) {
    let s = 1.0 / (1.0 + exp(-x));
    (x * s, s * (1.0 + x * (1.0 - s)))
}

multiversion! {
    /// `h = silu(g) * u`, element-wise (the SwiGLU product of a Llama MLP).
    pub fn swiglu_forward(g: &[f32], u: &[f32], h: &mut [f32]) -> () {
        for ((h, &g), &u) in h.iter_mut().zip(g).zip(u) {
            *h = silu_and_grad(g).0 * u;
        }
    }
}

multiversion! {
    /// From `dh` (in `dg`): `dg = dh * u * silu'(g)` and `du = dh * silu(g)`, in place.
    pub fn swiglu_backward(g: &[f32], u: &[f32], dg: &mut [f32], du: &mut [f32]) -> () {
        for (((dg, du), &g), &u) in dg.iter_mut().zip(du.iter_mut()).zip(g).zip(u) {
            let (silu, grad) = silu_and_grad(g);
            let dh = *dg;
            *du = dh * silu;
            *dg = dh * u * grad;
        }
    }
}

multiversion! {
    /// `v = e^(v - shift)` in place; returns the sum of the new values.
    pub fn exp_shifted_sum(v: &mut [f32], shift: f32) -> f32 {
        for x in v.iter_mut() {
            *x = exp(*x - shift);
        }
        lane_sum(v, |x| x)
    }
}

multiversion! {
    /// The sum of `e^(v - shift)` (v unchanged).
    pub fn sum_exp_shifted(v: &[f32], shift: f32) -> f32 {
        lane_sum(v, |x| exp(x - shift))
    }
}

multiversion! {
    /// `v = e^(v / divisor - shift) * scale` in place.
    pub fn exp_affine(v: &mut [f32], divisor: f32, shift: f32, scale: f32) -> () {
        for x in v.iter_mut() {
            *x = exp(*x / divisor - shift) * scale;
        }
    }
}

multiversion! {
    /// `v = e^(v * factor - shift)` in place.
    pub fn exp_scaled(v: &mut [f32], factor: f32, shift: f32) -> () {
        for x in v.iter_mut() {
            *x = exp(*x * factor - shift);
        }
    }
}

multiversion! {
    /// The sum of squares of `v`, in f64 partial sums.
    pub fn sum_squares(v: &[f32]) -> f64 {
        let mut acc = [0f64; 8];
        let chunks = v.chunks_exact(8);
        let tail = chunks.remainder();
        for c in chunks {
            for (a, &x) in acc.iter_mut().zip(c) {
                *a += f64::from(x) * f64::from(x);
            }
        }
        let tail: f64 = tail.iter().map(|&x| f64::from(x) * f64::from(x)).sum();
        acc.iter().sum::<f64>() + tail
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Distance in units in the last place between `got` and the f32 nearest `want`.
    fn ulps(got: f32, want: f64) -> u32 {
        let want = want as f32;
        if got == want {
            return 0;
        }
        let key = |v: f32| {
            let b = v.to_bits() as i64;
            if b & 0x8000_0000 != 0 {
                0x8000_0000 - b
            } else {
                b
            }
        };
        (key(got) - key(want)).unsigned_abs() as u32
    }

    /// Every 997th f32 bit pattern between -104 and 89 (both signs; 2.2M values), and every
    /// pattern in a band around each end of the range and around the subnormal threshold.
    fn exp_inputs() -> Vec<f32> {
        let mut xs: Vec<f32> = (0..u32::MAX / 997)
            .map(|i| f32::from_bits(i * 997))
            .filter(|x| x.is_finite() && (-104.0..89.0).contains(x))
            .collect();
        for edge in [EXP_HI, EXP_LO, -87.336_55, 0.0, -0.0] {
            let b = edge.to_bits();
            xs.extend((b.saturating_sub(2000)..b + 2000).map(f32::from_bits));
        }
        xs.retain(|x| x.is_finite() && *x < 89.0 && *x > -104.0);
        xs
    }

    #[test]
    fn exp_is_within_2_ulp_of_f64_everywhere() {
        let xs = exp_inputs();
        for isa in Isa::available() {
            let mut v = xs.clone();
            exp_shifted_sum(isa, &mut v, 0.0);
            let mut worst = (0, 0.0f32);
            for (&x, &y) in xs.iter().zip(&v) {
                let want = f64::from(x).exp();
                let u = ulps(y, want);
                // Subnormal results have fewer bits; compare those absolutely.
                let ok = if want < f64::from(f32::MIN_POSITIVE) {
                    (f64::from(y) - want).abs() <= 2.0 * 1.4e-45
                } else {
                    u <= 2
                };
                assert!(ok, "{isa:?}: exp({x:e}) = {y:e}, want {want:e} ({u} ulp)");
                if u > worst.0 && want >= f64::from(f32::MIN_POSITIVE) {
                    worst = (u, x);
                }
            }
            eprintln!(
                "{isa:?}: worst {} ulp at {:e} over {} inputs",
                worst.0,
                worst.1,
                xs.len()
            );
        }
    }

    #[test]
    fn exp_edges() {
        for isa in Isa::available() {
            let mut v = vec![
                f32::INFINITY,
                f32::NEG_INFINITY,
                f32::NAN,
                89.0,
                -104.0,
                0.0,
            ];
            exp_shifted_sum(isa, &mut v, 0.0);
            assert_eq!(v[0], f32::INFINITY, "{isa:?}");
            assert_eq!(v[1], 0.0, "{isa:?}");
            assert!(v[2].is_nan(), "{isa:?}");
            assert_eq!(v[3], f32::INFINITY, "{isa:?}");
            assert_eq!(v[4], 0.0, "{isa:?}");
            assert_eq!(v[5], 1.0, "{isa:?}");
        }
    }

    /// GELU and its gradient against the tanh form in f64: 4e-7 of the larger of |y| and the
    /// smallest normal, a few f32 roundings of the formula (an error in a coefficient or in
    /// the sigmoid identity moves results by 1e-3 or more).
    #[test]
    fn gelu_matches_the_tanh_form_in_f64() {
        const REL: f64 = 4e-7;
        let xs: Vec<f32> = (-20_000..=20_000)
            .map(|i| i as f32 * 6e-4)
            .chain([-60.0, 60.0, 0.0])
            .collect();
        let reference = |x: f64| {
            let u = f64::from(SQRT_2_OVER_PI) * (x + f64::from(GELU_CUBIC) * x * x * x);
            let t = u.tanh();
            let du = f64::from(SQRT_2_OVER_PI) * (1.0 + 3.0 * f64::from(GELU_CUBIC) * x * x);
            (
                0.5 * x * (1.0 + t),
                0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * du,
            )
        };
        for isa in Isa::available() {
            let mut y = vec![0f32; xs.len()];
            gelu_forward(isa, &xs, &mut y);
            let mut g = vec![1f32; xs.len()];
            gelu_backward(isa, &xs, &mut g);
            for ((&x, &y), &g) in xs.iter().zip(&y).zip(&g) {
                let (want_y, want_g) = reference(f64::from(x));
                let tol = |w: f64| REL * w.abs().max(1.0) + 1e-30;
                assert!(
                    (f64::from(y) - want_y).abs() <= tol(want_y),
                    "{isa:?}: gelu({x}) = {y}, want {want_y}"
                );
                assert!(
                    (f64::from(g) - want_g).abs() <= tol(want_g),
                    "{isa:?}: gelu'({x}) = {g}, want {want_g}"
                );
            }
        }
    }

    #[test]
    fn sums_match_f64() {
        let v: Vec<f32> = (0..1037).map(|i| ((i as f32) * 0.37).sin() * 3.0).collect();
        for isa in Isa::available() {
            let want: f64 = v.iter().map(|&x| (f64::from(x) - 1.5).exp()).sum();
            let got = sum_exp_shifted(isa, &v, 1.5);
            assert!(
                (f64::from(got) - want).abs() < 1e-6 * want,
                "{isa:?}: {got} vs {want}"
            );
            let mut w = v.clone();
            let got = exp_shifted_sum(isa, &mut w, 1.5);
            assert!(
                (f64::from(got) - want).abs() < 1e-6 * want,
                "{isa:?}: {got} vs {want}"
            );
            let want_sq: f64 = v.iter().map(|&x| f64::from(x) * f64::from(x)).sum();
            let got_sq = sum_squares(isa, &v);
            assert!(
                (got_sq - want_sq).abs() < 1e-12 * want_sq,
                "{isa:?}: {got_sq} vs {want_sq}"
            );
            let mut a = v.clone();
            exp_affine(isa, &mut a, 2.0, 0.5, 3.0);
            for (&x, &y) in v.iter().zip(&a) {
                let want = (f64::from(x) / 2.0 - 0.5).exp() * 3.0;
                assert!(
                    (f64::from(y) - want).abs() <= 4e-7 * want,
                    "{isa:?}: {y} vs {want}"
                );
            }
        }
    }
}
