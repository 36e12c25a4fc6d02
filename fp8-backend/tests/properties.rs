//! Property tests of the quantizer (proptest): the algebra a rounding cast must obey.

use fp8_backend::kernel::cpu;
use fp8_backend::{amax_bias, quantize_scaled, Fp8Format, MAX_BIAS};
use proptest::prelude::*;

/// Relative error bound of round-to-nearest for normal values: half a unit in the last place,
/// 2^-(m+1) with m mantissa bits: 2^-4 for E4 (m = 3), 2^-3 for E5 (m = 2).
fn max_rel_error(f: Fp8Format) -> f32 {
    0.5f32.powi(f.mantissa_bits() as i32 + 1)
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
    fn bounded_relative_error_of_normals((f, x) in format().prop_flat_map(|f| {
        // The format's normal binades: 2^emin ..= 2^floor(log2 max).
        let top = f.max().log2().floor() as i32;
        (Just(f), spread(f.min_normal_exp()..top + 1))
    })) {
        let a = x.abs();
        prop_assume!(a.is_finite() && a >= f.min_normal() && a <= f.max());
        let rel = (f.quantize(x) - x).abs() / a;
        prop_assert!(rel <= max_rel_error(f), "{f}: x={x:e} rel={rel:e}");
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
        // And so the largest element never saturates.
        prop_assert_eq!(quantize_scaled(amax, f, bias).abs() <= amax * 2.0, true);
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
