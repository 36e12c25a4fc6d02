//! The cubecl device kernel against the ndarray CPU kernel: the same outputs bit for bit and
//! the same statistics, on random tensors, non-finite tensors, a tensor larger than one launch's
//! units (multi-workgroup reductions) and a transposed view. On wgpu (any Vulkan device; CI uses
//! Mesa's lavapipe, `apt-get install mesa-vulkan-drivers`) and on CUDA (`scripts/device-check`).
#![cfg(any(feature = "wgpu", feature = "cuda"))]

use crate::common::download;
use burn::backend::NdArray;
use burn::tensor::backend::Backend;
use burn::tensor::ops::{FloatTensor, FloatTensorOps};
use burn::tensor::{Shape, TensorData};
use fp8_backend::{BiasRule, Fp8Format, Fp8Kernels, QuantOutput, QuantStats};

/// splitmix64: a deterministic stream of test values, independent of any crate's RNG.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [-1, 1) times 2^k, k uniform in `-spread..=spread`; one value in 16 is zero, so
    /// that underflow fractions have a denominator smaller than numel.
    fn value(&mut self, spread: i32) -> f32 {
        let r = self.next_u64();
        if r.is_multiple_of(16) {
            return 0.0;
        }
        let unit = ((r >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0;
        let k = ((r >> 8) % (2 * spread as u64 + 1)) as i32 - spread;
        unit * 2f32.powi(k)
    }

    fn tensor(&mut self, n: usize, spread: i32) -> Vec<f32> {
        (0..n).map(|_| self.value(spread)).collect()
    }
}

fn upload<B: Backend>(values: &[f32], shape: Vec<usize>) -> FloatTensor<B> {
    B::float_from_data(
        TensorData::new(values.to_vec(), Shape::from(shape)),
        &Default::default(),
    )
}

/// Output values and statistics, or the non-finite amax and the returned tensor's values.
type Run = Result<(Vec<f32>, Option<QuantStats>), (f32, Vec<f32>)>;

fn run<B: Fp8Kernels>(t: FloatTensor<B>, format: Fp8Format, rule: BiasRule, stats: bool) -> Run {
    match B::fp8_quantize(t, format, rule, stats) {
        QuantOutput::Quantized(t, s) => Ok((download::<B>(t), s)),
        QuantOutput::NonFinite(t, amax) => Err((amax, download::<B>(t))),
    }
}

/// Equal bits, or both NaN, or both zero (the sign of zero is free).
fn same(a: f32, b: f32) -> bool {
    a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan()) || (a == 0.0 && b == 0.0)
}

fn assert_same_values(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let bad: Vec<String> = got
        .iter()
        .zip(want)
        .enumerate()
        .filter(|(_, (g, w))| !same(**g, **w))
        .take(5)
        .map(|(i, (g, w))| format!("[{i}] got {g:e} want {w:e}"))
        .collect();
    assert!(bad.is_empty(), "{what}: mismatches (first 5): {bad:#?}");
}

/// Statistics are equal, not close: both kernels count exactly and divide the same way.
fn assert_same_stats(what: &str, got: Option<QuantStats>, want: Option<QuantStats>) {
    let (got, want) = (got.expect("device stats"), want.expect("ndarray stats"));
    assert!(
        same(got.amax, want.amax)
            && got.bias == want.bias
            && got.underflow_frac == want.underflow_frac
            && got.saturated_frac == want.saturated_frac
            && got.numel == want.numel,
        "{what}: device {got:?} ndarray {want:?}"
    );
}

/// Runs both backends on `values` and checks equal outputs (and statistics when asked for).
fn compare<G: Fp8Kernels>(
    what: &str,
    values: &[f32],
    shape: Vec<usize>,
    f: Fp8Format,
    rule: BiasRule,
    st: bool,
) {
    let gpu = run::<G>(upload::<G>(values, shape.clone()), f, rule, st);
    let cpu = run::<NdArray>(upload::<NdArray>(values, shape), f, rule, st);
    let what = format!("{what} {f} {rule:?} stats={st}");
    match (gpu, cpu) {
        (Ok((g, gs)), Ok((c, cs))) => {
            assert_same_values(&what, &g, &c);
            if st {
                assert_same_stats(&what, gs, cs);
            } else {
                assert!(gs.is_none(), "{what}: statistics that were not asked for");
            }
        }
        (g, c) => panic!(
            "{what}: outcomes differ: device {:?} ndarray {:?}",
            g.map(|r| r.1),
            c.map(|r| r.1)
        ),
    }
}

const RULES: [BiasRule; 4] = [
    BiasRule::Amax { margin: 0 },
    BiasRule::Amax { margin: 3 },
    BiasRule::Constant(0),
    BiasRule::Constant(12),
];

fn random_tensors_match_ndarray_with_and_without_stats<G: Fp8Kernels>() {
    let mut rng = Rng(0x5eed_0001);
    // Narrow and wide dynamic ranges: the wide one underflows and (with a constant bias)
    // saturates, so every statistic is exercised.
    for (n, spread) in [(1000, 2), (4099, 30), (70_001, 12)] {
        let values = rng.tensor(n, spread);
        for f in Fp8Format::ALL {
            for rule in RULES {
                for stats in [false, true] {
                    compare::<G>(&format!("n={n}"), &values, vec![n], f, rule, stats);
                }
            }
        }
    }
}

fn non_finite_amax_is_reported_with_stats_and_passed_through_without<G: Fp8Kernels>() {
    let mut rng = Rng(0x5eed_0002);
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let mut values = rng.tensor(3000, 8);
        values[1234] = bad;
        let amax_rule = BiasRule::Amax { margin: 0 };
        let f = Fp8Format::E4M3Fnuz;

        // With statistics: reported, and the tensor comes back unchanged.
        let Err((amax, back)) = run::<G>(upload::<G>(&values, vec![3000]), f, amax_rule, true)
        else {
            panic!("{bad}: expected NonFinite with statistics on");
        };
        assert!(same(amax, bad.abs()), "{bad}: amax {amax}");
        assert_same_values(&format!("{bad} returned input"), &back, &values);

        // Without: no round trip, so the kernel writes the input unchanged (documented).
        let Ok((out, None)) = run::<G>(upload::<G>(&values, vec![3000]), f, amax_rule, false)
        else {
            panic!("{bad}: expected Quantized without statistics");
        };
        assert_same_values(&format!("{bad} pass-through"), &out, &values);

        // A constant bias needs no amax: cast as usual, the statistics show the amax.
        compare::<G>(
            &format!("{bad}"),
            &values,
            vec![3000],
            f,
            BiasRule::Constant(2),
            true,
        );
        compare::<G>(
            &format!("{bad}"),
            &values,
            vec![3000],
            f,
            BiasRule::Constant(2),
            false,
        );
    }
}

fn tensor_beyond_one_launch_reduces_across_workgroups<G: Fp8Kernels>() {
    // 1 << 20 units cover the first 1,048,576 elements; the largest element sits in the grid-
    // stride tail, the zeros and underflows are spread everywhere.
    let n = (1 << 20) + 4321;
    let mut values = Rng(0x5eed_0003).tensor(n, 10);
    values[n - 1] = -3000.0;
    let (out, stats) = run::<G>(
        upload::<G>(&values, vec![n]),
        Fp8Format::E5M2Fnuz,
        BiasRule::Amax { margin: 3 },
        true,
    )
    .expect("finite tensor");
    let stats = stats.expect("stats");
    assert_eq!(stats.amax, 3000.0);
    assert_eq!(stats.bias, 1); // floor(log2(57344 / 3000)) = 4, minus the margin 3
    assert_eq!(out.len(), n);
    for rule in [BiasRule::Amax { margin: 3 }, BiasRule::Constant(20)] {
        compare::<G>("large", &values, vec![n], Fp8Format::E5M2Fnuz, rule, true);
    }
}

fn transposed_input_is_read_in_logical_order<G: Fp8Kernels>() {
    let values = Rng(0x5eed_0004).tensor(64 * 48, 6);
    let f = Fp8Format::E4M3Fn;
    let rule = BiasRule::Amax { margin: 0 };
    let gpu = <G>::float_swap_dims(upload::<G>(&values, vec![64, 48]), 0, 1);
    let cpu = <NdArray>::float_swap_dims(upload::<NdArray>(&values, vec![64, 48]), 0, 1);
    let (g, gs) = run::<G>(gpu, f, rule, true).expect("finite");
    let (c, cs) = run::<NdArray>(cpu, f, rule, true).expect("finite");
    assert_same_values("transposed", &g, &c);
    assert_same_stats("transposed", gs, cs);
    // And the order really is the transposed one: element [1, 0] is input [0, 1].
    let bias = gs.expect("stats").bias;
    assert!(same(
        g[64],
        fp8_backend::quantize_scaled(values[1], f, bias)
    ));
}

fn sliced_input_is_read_at_its_offset<G: Fp8Kernels>() {
    // The middle third of a larger buffer (a view with an offset, as q/k/v are of c_attn's
    // output); the other thirds hold larger values, which must not reach the amax.
    let n = 5000;
    let mut values = Rng(0x5eed_0005).tensor(3 * n, 4);
    for (i, v) in values.iter_mut().enumerate() {
        if !(n..2 * n).contains(&i) {
            *v *= 1e3;
        }
    }
    let slice = |t: FloatTensor<G>| {
        burn::tensor::Tensor::<G, 1>::from_primitive(burn::tensor::TensorPrimitive::Float(t))
            .slice([n..2 * n])
            .into_primitive()
            .tensor()
    };
    let f = Fp8Format::E4M3Fnuz;
    let rule = BiasRule::Amax { margin: 0 };
    let (g, gs) =
        run::<G>(slice(upload::<G>(&values, vec![3 * n])), f, rule, true).expect("finite");
    let (c, cs) = run::<NdArray>(upload::<NdArray>(&values[n..2 * n], vec![n]), f, rule, true)
        .expect("finite");
    assert_same_values("sliced", &g, &c);
    assert_same_stats("sliced", gs, cs);
}

fn device_bias_equals_amax_bias_at_the_edges<G: Fp8Kernels>() {
    // The device derives the bias from exponent fields; these amaxes sit where that can go
    // wrong: f32 subnormals (only visible with a large margin, else the bias clips to 31), a
    // significand just above the format max's, zero, and clipping at -31.
    let amaxes = [
        f32::from_bits(1),
        f32::from_bits(0x0000_0300),
        f32::from_bits(0x007f_ffff),
        f32::MIN_POSITIVE,
        240.0,
        f32::from_bits(120f32.to_bits() + 1),
        57344.0,
        f32::from_bits(57344f32.to_bits() + 1),
        1e30,
        0.0,
    ];
    for amax in amaxes {
        // The amax last, after smaller values of both signs.
        let values = vec![amax * 0.25, -amax * 0.5, 0.0, -amax];
        for f in Fp8Format::ALL {
            for margin in [0, 3, 125, -40] {
                let rule = BiasRule::Amax { margin };
                let (_, stats) =
                    run::<G>(upload::<G>(&values, vec![4]), f, rule, true).expect("finite");
                let stats = stats.expect("stats");
                assert_eq!(stats.amax, amax, "{f}");
                assert_eq!(
                    Ok(stats.bias),
                    fp8_backend::amax_bias(amax, f, margin),
                    "{f} amax {amax:e} margin {margin}"
                );
                compare::<G>("edge", &values, vec![4], f, rule, true);
            }
        }
    }
}

/// The tests above on one device backend.
macro_rules! on_device {
    ($module:ident, $backend:ty) => {
        mod $module {
            // CUDA runs the device kernel only when asked (`fp8_backend::kernel::CUDA_KERNEL_ENV`):
            // these tests are about that kernel. Every test asks before its first cast, so their
            // order does not matter (`cuda_device_kernel` in common/mod.rs).
            fn device_kernel() {
                #[cfg(feature = "cuda")]
                crate::common::cuda_device_kernel();
            }

            #[test]
            fn random_tensors_match_ndarray_with_and_without_stats() {
                device_kernel();
                super::random_tensors_match_ndarray_with_and_without_stats::<$backend>();
            }

            #[test]
            fn non_finite_amax_is_reported_with_stats_and_passed_through_without() {
                device_kernel();
                super::non_finite_amax_is_reported_with_stats_and_passed_through_without::<$backend>(
                );
            }

            #[test]
            fn tensor_beyond_one_launch_reduces_across_workgroups() {
                device_kernel();
                super::tensor_beyond_one_launch_reduces_across_workgroups::<$backend>();
            }

            #[test]
            fn transposed_input_is_read_in_logical_order() {
                device_kernel();
                super::transposed_input_is_read_in_logical_order::<$backend>();
            }

            #[test]
            fn sliced_input_is_read_at_its_offset() {
                device_kernel();
                super::sliced_input_is_read_at_its_offset::<$backend>();
            }

            #[test]
            fn device_bias_equals_amax_bias_at_the_edges() {
                device_kernel();
                super::device_bias_equals_amax_bias_at_the_edges::<$backend>();
            }
        }
    };
}

#[cfg(feature = "wgpu")]
on_device!(wgpu, burn::backend::Wgpu);
#[cfg(feature = "cuda")]
on_device!(cuda, burn::backend::Cuda);
