//! Property tests of the quantizer (proptest): the algebra a rounding cast must obey.

use fp8_backend::kernel::cpu;
use fp8_backend::{amax_bias, quantize_scaled, Fp8Format, MAX_BIAS};
use proptest::prelude::*;

/// Relative error bound of round-to-nearest for normal values: half a unit in the last place,
/// 2^-(m+1) with m mantissa bits: 2^-4 for E4 (m = 3), 2^-3 for E5 (m = 2). In the binade
/// [2^e, 2^(e+1)) the spacing is 2^(e-m), so the error is at most 2^(e-m-1) <= 2^-(m+1) |x|.
fn max_rel_error(f: Fp8Format) -> f64 {
    0.5f64.powi(f.mantissa_bits() as i32 + 1)
}

/// Half the spacing of the format at |s| <= max (s the scaled input): 2^(e-m-1) with e the
/// binade of s, but never below the subnormal spacing 2^(emin-m), which is fixed.
fn half_spacing(f: Fp8Format, s: f64) -> f64 {
    let e = f64_exponent(s).max(f.min_normal_exp());
    2f64.powi(e - f.mantissa_bits() as i32 - 1)
}

/// floor(log2 |x|) of a non-zero f64 (every scaled f32 is a normal f64).
fn f64_exponent(x: f64) -> i32 {
    ((x.to_bits() >> 52) & 0x7ff) as i32 - 1023
}

/// The cast of `x` with `bias` against what round-to-nearest-even with saturation guarantees,
/// in f64 (where the scalings by 2^bias are exact): with s = x * 2^bias and q(s) the scaled
/// output,
/// - |s| > max (infinities included): q = max with the sign of x (saturation);
/// - min normal <= |s| <= max: |q - s| <= 2^-(m+1) |s| (relative, half an ulp);
/// - |s| < min normal: |q - s| <= 2^(emin-m-1), half the subnormal spacing (absolute);
/// - and everywhere below max, at most half the spacing of s's binade, with equality (a tie)
///   only where q is an even multiple of the spacing.
fn check_error_bound(f: Fp8Format, x: f32, bias: i32) -> Result<(), TestCaseError> {
    let y = quantize_scaled(x, f, bias);
    if x.is_nan() {
        prop_assert!(y.is_nan(), "{f}: NaN gave {y:e}");
        return Ok(());
    }
    let scale = 2f64.powi(bias);
    let s = f64::from(x) * scale;
    let q = f64::from(y) * scale;
    let max = f64::from(f.max());
    let what = format!(
        "{f} bias {bias}: x={x:e} ({:08x}) scaled {s:e} -> {q:e}",
        x.to_bits()
    );
    if s.abs() > max {
        prop_assert!(q == max.copysign(s), "not saturated: {what}");
        return Ok(());
    }
    prop_assert!(q.abs() <= max, "beyond max: {what}");
    prop_assert!(q == 0.0 || q.signum() == s.signum(), "sign: {what}");
    let err = (q - s).abs();
    if s.abs() >= f64::from(f.min_normal()) {
        prop_assert!(err <= max_rel_error(f) * s.abs(), "relative error: {what}");
    } else {
        prop_assert!(
            err <= f64::from(f.min_subnormal()) / 2.0,
            "absolute error: {what}"
        );
    }
    if s != 0.0 {
        let half = half_spacing(f, s.abs());
        prop_assert!(err <= half, "more than half a spacing: {what}");
        if err == half {
            // q is a multiple of the spacing 2 * half; ties to even: an even multiple.
            let steps = q.abs() / (2.0 * half);
            prop_assert!(steps % 2.0 == 0.0, "tie not to even: {what}");
        }
    }
    Ok(())
}

fn format() -> impl Strategy<Value = Fp8Format> {
    prop::sample::select(Fp8Format::ALL.to_vec())
}

/// m * 2^e with m in [1, 2) and e in `exps`, either sign: spreads values over many binades.
fn spread(exps: std::ops::Range<i32>) -> impl Strategy<Value = f32> {
    (1.0f32..2.0, exps, any::<bool>()).prop_map(|(m, e, neg)| {
        let v = m * 2f32.powi(e);
        if neg {
            -v
        } else {
            v
        }
    })
}

/// Any f32 bit pattern, NaNs and infinities included.
fn any_f32() -> impl Strategy<Value = f32> {
    any::<u32>().prop_map(f32::from_bits)
}

/// A format, a bias, and an input that lands, once scaled, anywhere from below half the
/// smallest subnormal to beyond max: spread over the binades, or with few significant bits
/// (n * 2^k, n < 2^(m+3): exact FP8 values and exact ties), or any bit pattern at all.
fn scaled_input() -> impl Strategy<Value = (Fp8Format, f32, i32)> {
    (format(), -MAX_BIAS..=MAX_BIAS).prop_flat_map(|(f, bias)| {
        let m = f.mantissa_bits() as i32;
        let lo = f.min_normal_exp() - m - 3;
        let hi = f.max().log2().floor() as i32 + 3;
        let unscale = 2f32.powi(-bias);
        let spread = spread(lo..hi).prop_map(move |s| s * unscale);
        let few_bits =
            (0u32..1 << (m + 3), lo..hi - m, any::<bool>()).prop_map(move |(n, k, neg)| {
                let v = n as f32 * 2f32.powi(k) * unscale;
                if neg {
                    -v
                } else {
                    v
                }
            });
        (
            Just(f),
            prop_oneof![spread, few_bits, any_f32()],
            Just(bias),
        )
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4096, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn idempotent(f in format(), x in any_f32()) {
        let q = f.quantize(x);
        let qq = f.quantize(q);
        prop_assert!(qq.to_bits() == q.to_bits() || (q.is_nan() && qq.is_nan()));
    }

    #[test]
    fn odd_symmetric(f in format(), x in any_f32()) {
        let a = f.quantize(-x);
        let b = -f.quantize(x);
        prop_assert!(a == b || (a.is_nan() && b.is_nan()), "q(-x)={a} -q(x)={b}");
    }

    #[test]
    fn monotone(f in format(), x in any_f32(), y in any_f32()) {
        prop_assume!(!x.is_nan() && !y.is_nan());
        let (lo, hi) = if x <= y { (x, y) } else { (y, x) };
        prop_assert!(f.quantize(lo) <= f.quantize(hi));
    }

    #[test]
    fn error_is_bounded_and_ties_go_to_even((f, x, bias) in scaled_input()) {
        check_error_bound(f, x, bias)?;
    }

    #[test]
    fn values_are_representable_and_bounded(f in format(), x in any_f32()) {
        prop_assume!(!x.is_nan());
        let q = f.quantize(x);
        prop_assert!(q.abs() <= f.max());
        // Representable: a multiple of the smallest subnormal with at most m+1 significant bits.
        let steps = q.abs() / f.min_subnormal();
        prop_assert_eq!(steps.fract(), 0.0);
        let s = steps as u64;
        if s != 0 {
            let significant = 64 - s.leading_zeros() - s.trailing_zeros();
            prop_assert!(significant <= f.mantissa_bits() + 1, "{f}: {q:e}");
        }
    }

    #[test]
    fn amax_maps_into_top_binade(f in format(), x in spread(-20..30)) {
        let amax = x.abs();
        prop_assume!(amax.is_finite() && amax > 0.0);
        let bias = amax_bias(amax, f, 0).unwrap();
        prop_assume!(bias.abs() < MAX_BIAS); // unclipped
        let scaled = f64::from(amax) * 2f64.powi(bias);
        let max = f64::from(f.max());
        prop_assert!(scaled > max / 2.0 && scaled <= max, "{f}: amax={amax:e} bias={bias} scaled={scaled}");
        // And so the largest element is rounded, not clipped: within half an ulp of itself.
        let q = f64::from(quantize_scaled(amax, f, bias));
        let rel = (q - f64::from(amax)).abs() / f64::from(amax);
        prop_assert!(rel <= max_rel_error(f), "{f}: amax={amax:e} bias={bias} q={q:e}");
    }

    #[test]
    fn kernel_equals_reference(f in format(), xs in prop::collection::vec(any_f32(), 1..300), bias in -31i32..=31) {
        let mut out = vec![0.0; xs.len()];
        cpu::cast_into(&xs, &mut out, f, bias);
        for (x, y) in xs.iter().zip(&out) {
            let r = quantize_scaled(*x, f, bias);
            prop_assert!(r.to_bits() == y.to_bits() || (r.is_nan() && y.is_nan()) || (r == 0.0 && *y == 0.0));
        }
    }
}
