//! The ndarray kernel on tensors that are views of other tensors' memory (transposed, permuted,
//! narrowed): the kernel copies such a tensor to logical order before the cast. Its outputs and
//! statistics must be those of the scalar reference applied to the logical values, and the same
//! bits as the contiguous path gives for the same values.

use burn::backend::ndarray::NdArrayTensor;
use burn::backend::NdArray;
use burn::tensor::ops::{FloatTensor, FloatTensorOps};
use burn::tensor::{Tensor, TensorData};
use fp8_backend::{amax_bias, quantize_scaled, BiasRule, Fp8Format, Fp8Kernels, QuantOutput};
use fp8_backend::{QuantStats, MAX_BIAS};

type B = NdArray<f32>;

/// The rules each layout is quantized under: FP8-AMAX without and with a margin, and a constant
/// bias under which the largest values saturate and the smallest underflow.
const RULES: [BiasRule; 3] = [
    BiasRule::Amax { margin: 0 },
    BiasRule::Amax { margin: 3 },
    BiasRule::Constant(0),
];

/// splitmix64 values: uniform in [-1, 1) times 2^k, k uniform in -16..=10 (a dynamic range wider
/// than any FP8 format's, so every tensor has underflows, and beyond max at bias 0), one in 16
/// zero.
fn values(seed: u64, n: usize) -> Vec<f32> {
    let mut state = seed;
    (0..n)
        .map(|_| {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            let r = z ^ (z >> 31);
            if r.is_multiple_of(16) {
                return 0.0;
            }
            let unit = ((r >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0;
            unit * 2f32.powi(((r >> 8) % 27) as i32 - 16)
        })
        .collect()
}

/// Whether the ndarray kernel reads this tensor in place (`as_slice` is `Some`).
fn is_contiguous(t: &FloatTensor<B>) -> bool {
    let NdArrayTensor::F32(storage) = t else {
        panic!("expected an f32 ndarray tensor")
    };
    storage.view().as_slice().is_some()
}

/// The scalar reference on logical values: outputs and statistics as `QuantStats` defines them.
fn reference(xs: &[f32], format: Fp8Format, rule: BiasRule) -> (Vec<f32>, QuantStats) {
    let amax = xs.iter().fold(0f32, |m, x| m.max(x.abs()));
    let bias = match rule {
        BiasRule::Amax { margin } => amax_bias(amax, format, margin).expect("finite values"),
        BiasRule::Constant(b) => b,
    };
    assert!(bias.abs() <= MAX_BIAS);
    let out: Vec<f32> = xs
        .iter()
        .map(|&x| quantize_scaled(x, format, bias))
        .collect();
    let nonzero = xs.iter().filter(|&&x| x != 0.0).count();
    let under = xs
        .iter()
        .zip(&out)
        .filter(|(&x, &q)| x != 0.0 && q == 0.0)
        .count();
    // In f64 the product is exact.
    let max = f64::from(format.max());
    let sat = xs
        .iter()
        .filter(|&&x| f64::from(x.abs()) * 2f64.powi(bias) > max)
        .count();
    let stats = QuantStats {
        amax,
        bias,
        underflow_frac: if nonzero == 0 {
            0.0
        } else {
            (under as f64 / nonzero as f64) as f32
        },
        saturated_frac: (sat as f64 / xs.len() as f64) as f32,
        numel: xs.len(),
    };
    (out, stats)
}

/// The kernel's output (in logical order, with its shape) and statistics.
fn quantize(t: FloatTensor<B>, f: Fp8Format, rule: BiasRule) -> (TensorData, QuantStats) {
    match B::fp8_quantize(t, f, rule, true) {
        QuantOutput::Quantized(out, stats) => (
            burn::tensor::read_sync(B::float_into_data(out)).expect("ndarray reads"),
            stats.expect("statistics were asked for"),
        ),
        QuantOutput::NonFinite(_, amax) => panic!("unexpected non-finite amax {amax}"),
    }
}

/// Same bits, or both zero (the sign of zero is free: docs/design.md).
fn same(a: f32, b: f32) -> bool {
    a.to_bits() == b.to_bits() || (a == 0.0 && b == 0.0)
}

/// One view: `tensor` (contiguous or not, as `contiguous` says) holding `logical` in row-major
/// order of `shape`, against the reference and against a contiguous tensor of the same values.
fn check(name: &str, tensor: FloatTensor<B>, contiguous: bool, logical: &[f32], shape: &[usize]) {
    assert_eq!(
        is_contiguous(&tensor),
        contiguous,
        "{name}: the layout this case is meant to exercise"
    );
    let device = Default::default();
    let (mut underflowed, mut saturated) = (false, false);
    for f in Fp8Format::ALL {
        for rule in RULES {
            let what = format!("{name}, {f}, {rule:?}");
            let (got, stats) = quantize(tensor.clone(), f, rule);
            assert_eq!(got.shape.as_slice(), shape, "{what}: shape");
            let got = got.into_vec::<f32>().expect("f32 output");
            let (want, want_stats) = reference(logical, f, rule);
            if let Some(i) = (0..want.len()).find(|&i| !same(got[i], want[i])) {
                panic!(
                    "{what}: element {i} (x={:e}): kernel {:e}, reference {:e}",
                    logical[i], got[i], want[i]
                );
            }
            assert_eq!(stats, want_stats, "{what}: statistics");
            underflowed |= stats.underflow_frac > 0.0;
            saturated |= stats.saturated_frac > 0.0;

            // The contiguous path, on the same logical values: the same bits.
            let dense =
                B::float_from_data(TensorData::new(logical.to_vec(), shape.to_vec()), &device);
            assert!(is_contiguous(&dense));
            let (dense_out, dense_stats) = quantize(dense, f, rule);
            let dense_out = dense_out.into_vec::<f32>().expect("f32 output");
            assert!(
                dense_out
                    .iter()
                    .zip(&got)
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "{what}: the view and the contiguous tensor give different bits"
            );
            assert_eq!(dense_stats, stats, "{what}: contiguous statistics");
        }
    }
    // The statistics compared were not all zero.
    assert!(
        underflowed && saturated,
        "{name}: no underflow or no saturation to count"
    );
}

#[test]
fn transposed_tensor_is_cast_in_logical_order() {
    let (rows, cols) = (37, 53);
    let v = values(0x5eed_0101, rows * cols);
    let t = Tensor::<B, 2>::from_data(
        TensorData::new(v.clone(), [rows, cols]),
        &Default::default(),
    );
    // Element [j, i] of the transpose is input [i, j].
    let logical: Vec<f32> = (0..cols)
        .flat_map(|j| (0..rows).map(move |i| (i, j)))
        .map(|(i, j)| v[i * cols + j])
        .collect();
    let view = t.transpose().into_primitive().tensor();
    check("transposed [53, 37]", view, false, &logical, &[cols, rows]);
}

#[test]
fn narrowed_tensors_are_cast_in_logical_order() {
    let (rows, cols) = (37, 53);
    let v = values(0x5eed_0102, rows * cols);
    let t = Tensor::<B, 2>::from_data(
        TensorData::new(v.clone(), [rows, cols]),
        &Default::default(),
    );
    // Columns 5..29 of every row. burn-ndarray 0.21 copies a slice into a new array, so this one
    // takes the contiguous path; transposed, it is a view again.
    let narrowed: Vec<f32> = (0..rows)
        .flat_map(|i| (5..29).map(move |j| i * cols + j))
        .map(|k| v[k])
        .collect();
    let columns = t.clone().narrow(1, 5, 24);
    let view = columns.clone().into_primitive().tensor();
    check("columns 5..29", view, true, &narrowed, &[rows, 24]);
    let logical: Vec<f32> = (0..24)
        .flat_map(|j| (0..rows).map(move |i| i * 24 + j))
        .map(|k| narrowed[k])
        .collect();
    let view = columns.transpose().into_primitive().tensor();
    check(
        "columns 5..29, transposed",
        view,
        false,
        &logical,
        &[24, rows],
    );
    // Rows 3..10.
    let logical = &v[3 * cols..10 * cols];
    let view = t.narrow(0, 3, 7).into_primitive().tensor();
    check("rows 3..10", view, true, logical, &[7, cols]);
}

#[test]
fn permuted_tensor_is_cast_in_logical_order() {
    let (a, b, c) = (4, 9, 11);
    let v = values(0x5eed_0103, a * b * c);
    let t = Tensor::<B, 3>::from_data(TensorData::new(v.clone(), [a, b, c]), &Default::default());
    // j in 1..8, then permute([2, 0, 1]): p[k, i, j'] = x[i, 1 + j', k].
    let logical: Vec<f32> = (0..c)
        .flat_map(|k| (0..a).flat_map(move |i| (1..8).map(move |j| (i * b + j) * c + k)))
        .map(|idx| v[idx])
        .collect();
    let view = t
        .narrow(1, 1, 7)
        .permute([2, 0, 1])
        .into_primitive()
        .tensor();
    check(
        "1..8 of the middle axis, permuted to [11, 4, 7]",
        view,
        false,
        &logical,
        &[c, a, 7],
    );
}

#[test]
fn flipped_tensor_is_cast_in_logical_order() {
    let (rows, cols) = (19, 23);
    let v = values(0x5eed_0104, rows * cols);
    let t = Tensor::<B, 2>::from_data(
        TensorData::new(v.clone(), [rows, cols]),
        &Default::default(),
    );
    // Each row reversed: burn-ndarray keeps the memory and negates the stride.
    let logical: Vec<f32> = (0..rows)
        .flat_map(|i| (0..cols).rev().map(move |j| i * cols + j))
        .map(|k| v[k])
        .collect();
    let view = t.flip([1]).into_primitive().tensor();
    check("columns reversed", view, false, &logical, &[rows, cols]);
}
