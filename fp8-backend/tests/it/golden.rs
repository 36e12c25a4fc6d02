//! Every row of the `ml_dtypes` golden data, reproduced bit for bit by the scalar reference and by
//! the tensor kernel of each backend we ship (see `tests/fixtures/README.md`).

use burn::backend::NdArray;
use burn::tensor::{Shape, TensorData};
use fp8_backend::{amax_bias, BiasRule, Fp8Format, Fp8Kernels, QuantOutput};

const QUANTIZE_CSV: &str = include_str!("../fixtures/quantize_golden.csv");
const AMAX_JSONL: &str = include_str!("../fixtures/amax_golden.jsonl");
const GOLDEN_META: &str = include_str!("../fixtures/golden_meta.json");
const GENERATOR: &str = include_str!("../fixtures/gen_golden.py");

/// The `fixture_version` this file reads. The generator's `FIXTURE_VERSION`, the committed
/// `golden_meta.json` and this constant change together: bump the generator's, re-run it, then
/// update this file to read the new fixtures.
const FIXTURE_VERSION: u64 = 1;

const REGENERATE: &str = "re-run `python fp8-backend/tests/fixtures/gen_golden.py` \
                          (needs numpy and ml_dtypes; see tests/fixtures/README.md)";

/// Fails, naming the generator to re-run, when the committed fixtures were not written by the
/// generator as it stands, or are not the version this file reads.
fn check_fixture_version() {
    let meta: serde_json::Value = serde_json::from_str(GOLDEN_META)
        .unwrap_or_else(|e| panic!("fixtures/golden_meta.json: {e}; {REGENERATE}"));
    let written = meta["fixture_version"].as_u64().unwrap_or_else(|| {
        panic!("fixtures/golden_meta.json has no integer `fixture_version`; {REGENERATE}")
    });
    assert_eq!(
        meta["generator"], "gen_golden.py",
        "fixtures/golden_meta.json names another generator"
    );
    let generator = GENERATOR
        .lines()
        .find_map(|l| l.strip_prefix("FIXTURE_VERSION = "))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .expect("fixtures/gen_golden.py defines `FIXTURE_VERSION = <integer>`");
    assert!(
        written == generator,
        "stale golden fixtures: golden_meta.json has fixture_version {written}, \
         gen_golden.py writes version {generator}; {REGENERATE}"
    );
    assert!(
        written == FIXTURE_VERSION,
        "golden fixtures are version {written}, golden.rs reads version {FIXTURE_VERSION}: {}",
        if written < FIXTURE_VERSION {
            format!("the fixtures are stale; {REGENERATE}")
        } else {
            "update golden.rs (FIXTURE_VERSION and what it reads) to the new fixtures".to_string()
        }
    );
}

fn hex(s: &str) -> f32 {
    f32::from_bits(u32::from_str_radix(s, 16).unwrap_or_else(|e| panic!("bad hex {s}: {e}")))
}

/// Equal bits, or both NaN, or both zero (the sign of zero is free).
fn same(got: f32, want: f32) -> bool {
    got.to_bits() == want.to_bits()
        || (got.is_nan() && want.is_nan())
        || (got == 0.0 && want == 0.0)
}

/// (inputs, expected outputs per format in `Fp8Format::ALL` order).
fn quantize_rows() -> (Vec<f32>, [Vec<f32>; 4]) {
    check_fixture_version();
    let mut lines = QUANTIZE_CSV.lines();
    assert_eq!(
        lines.next(),
        Some("input,e4m3fn,e5m2,e4m3fnuz,e5m2fnuz"),
        "unexpected header: the fixture changed; see tests/fixtures/README.md"
    );
    let mut inputs = Vec::new();
    let mut expected: [Vec<f32>; 4] = Default::default();
    for line in lines {
        let cols: Vec<&str> = line.split(',').collect();
        assert_eq!(cols.len(), 5, "bad row {line}");
        inputs.push(hex(cols[0]));
        for (e, c) in expected.iter_mut().zip(&cols[1..]) {
            e.push(hex(c));
        }
    }
    (inputs, expected)
}

struct AmaxRecord {
    format: Fp8Format,
    margin: i32,
    shape: Vec<usize>,
    amax: f32,
    bias: i32,
    input: Vec<f32>,
    output: Vec<f32>,
}

fn amax_records() -> Vec<AmaxRecord> {
    check_fixture_version();
    AMAX_JSONL
        .lines()
        .enumerate()
        .map(|(i, line)| {
            let v: serde_json::Value =
                serde_json::from_str(line).unwrap_or_else(|e| panic!("line {}: {e}", i + 1));
            let hexes = |k: &str| -> Vec<f32> {
                v[k].as_array()
                    .unwrap()
                    .iter()
                    .map(|s| hex(s.as_str().unwrap()))
                    .collect()
            };
            AmaxRecord {
                format: v["format"].as_str().unwrap().parse().unwrap(),
                margin: v["margin"].as_i64().unwrap() as i32,
                shape: v["shape"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|d| d.as_u64().unwrap() as usize)
                    .collect(),
                amax: v["amax"].as_f64().unwrap() as f32,
                bias: v["bias"].as_i64().unwrap() as i32,
                input: hexes("input"),
                output: hexes("output"),
            }
        })
        .collect()
}

fn assert_all_same(what: &str, inputs: &[f32], got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let bad: Vec<String> = inputs
        .iter()
        .zip(got.iter().zip(want))
        .filter(|(_, (g, w))| !same(**g, **w))
        .take(5)
        .map(|(x, (g, w))| {
            format!(
                "x={:08x} got={:08x} want={:08x}",
                x.to_bits(),
                g.to_bits(),
                w.to_bits()
            )
        })
        .collect();
    assert!(bad.is_empty(), "{what}: mismatches (first 5): {bad:#?}");
}

#[test]
fn fixtures_are_the_version_this_test_reads() {
    check_fixture_version();
}

#[test]
fn scalar_reference_matches_quantize_golden() {
    let (inputs, expected) = quantize_rows();
    assert!(
        inputs.len() > 80_000,
        "fixture truncated: {} rows",
        inputs.len()
    );
    for (format, want) in Fp8Format::ALL.iter().zip(&expected) {
        let got: Vec<f32> = inputs.iter().map(|&x| format.quantize(x)).collect();
        assert_all_same(format.name(), &inputs, &got, want);
    }
}

#[test]
fn scalar_reference_matches_amax_golden() {
    let records = amax_records();
    assert_eq!(records.len(), 390, "fixture changed");
    for (i, r) in records.iter().enumerate() {
        let amax = r.input.iter().fold(0f32, |m, x| m.max(x.abs()));
        assert_eq!(amax, r.amax, "record {i}: amax");
        assert_eq!(
            amax_bias(amax, r.format, r.margin),
            Ok(r.bias),
            "record {i}: bias"
        );
        let got: Vec<f32> = r
            .input
            .iter()
            .map(|&x| fp8_backend::quantize_scaled(x, r.format, r.bias))
            .collect();
        assert_all_same(
            &format!("record {i} ({})", r.format),
            &r.input,
            &got,
            &r.output,
        );
    }
}

fn run_kernel<B: Fp8Kernels>(
    device: &B::Device,
    input: &[f32],
    shape: Vec<usize>,
    format: Fp8Format,
    rule: BiasRule,
) -> (Vec<f32>, Option<fp8_backend::QuantStats>) {
    let data = TensorData::new(input.to_vec(), Shape::from(shape));
    let tensor = B::float_from_data(data, device);
    match B::fp8_quantize(tensor, format, rule, true) {
        QuantOutput::Quantized(t, stats) => {
            let data = burn::tensor::read_sync(B::float_into_data(t)).unwrap();
            (data.convert::<f32>().into_vec().unwrap(), stats)
        }
        QuantOutput::NonFinite(_, amax) => panic!("{format}: unexpected non-finite amax {amax}"),
    }
}

/// The quantize golden through a backend's tensor kernel, with a constant bias of 0.
pub fn check_quantize_golden<B: Fp8Kernels>(device: &B::Device) {
    let (inputs, expected) = quantize_rows();
    // NaN and infinity inputs make the amax non-finite, but a constant bias does not need it;
    // statistics are asked for, so the kernel still computes (and reports) it.
    for (format, want) in Fp8Format::ALL.iter().zip(&expected) {
        let (got, _) = run_kernel::<B>(
            device,
            &inputs,
            vec![inputs.len()],
            *format,
            BiasRule::Constant(0),
        );
        assert_all_same(
            &format!("{} on {}", format, B::name(device)),
            &inputs,
            &got,
            want,
        );
    }
}

/// Every amax record through a backend's tensor kernel, in the record's shape.
pub fn check_amax_golden<B: Fp8Kernels>(device: &B::Device) {
    for (i, r) in amax_records().iter().enumerate() {
        let rule = BiasRule::Amax { margin: r.margin };
        let (got, stats) = run_kernel::<B>(device, &r.input, r.shape.clone(), r.format, rule);
        let stats = stats.expect("statistics were asked for");
        assert_eq!(
            stats.amax,
            r.amax,
            "record {i}: amax on {}",
            B::name(device)
        );
        assert_eq!(
            stats.bias,
            r.bias,
            "record {i}: bias on {}",
            B::name(device)
        );
        assert_all_same(
            &format!("record {i} ({})", r.format),
            &r.input,
            &got,
            &r.output,
        );
    }
}

/// How a record's tensor reaches the kernel: as the view a layer's operand often is rather than
/// a fresh tensor.
#[derive(Clone, Copy, Debug)]
enum View {
    /// Its last two dimensions stored the other way round and swapped back (a transposed
    /// weight, `[out, in]` read as `[in, out]`); records of one dimension are skipped.
    Transposed,
    /// The middle third of a buffer whose other thirds hold values 10^6 times larger, which
    /// must reach neither the amax nor the output (q, k and v as views of `c_attn`'s output).
    Sliced,
}

/// Every amax record through a backend's kernel as a `view`: the outputs, amax and bias of the
/// golden data, bit for bit.
fn check_amax_golden_views<B: Fp8Kernels>(device: &B::Device, view: View) {
    use burn::tensor::{Tensor, TensorPrimitive};
    let mut checked = 0;
    for (i, r) in amax_records().iter().enumerate() {
        let n = r.input.len();
        let tensor = match view {
            View::Transposed => {
                let d = r.shape.len();
                if d < 2 {
                    continue;
                }
                let (rows, cols) = (r.shape[d - 2], r.shape[d - 1]);
                let mut stored_shape = r.shape.clone();
                stored_shape.swap(d - 2, d - 1);
                // Each [rows, cols] matrix stored as its transpose.
                let mut stored = vec![0f32; n];
                for (m, chunk) in r.input.chunks(rows * cols).enumerate() {
                    for a in 0..rows {
                        for b in 0..cols {
                            stored[m * rows * cols + b * rows + a] = chunk[a * cols + b];
                        }
                    }
                }
                let t = B::float_from_data(TensorData::new(stored, stored_shape), device);
                B::float_swap_dims(t, d - 2, d - 1)
            }
            View::Sliced => {
                let big: Vec<f32> = r.input.iter().map(|x| x * 1e6).collect();
                let buffer = [big.clone(), r.input.clone(), big].concat();
                let t = B::float_from_data(TensorData::new(buffer, [3 * n]), device);
                Tensor::<B, 1>::from_primitive(TensorPrimitive::Float(t))
                    .slice([n..2 * n])
                    .into_primitive()
                    .tensor()
            }
        };
        let rule = BiasRule::Amax { margin: r.margin };
        let (got, stats) = match B::fp8_quantize(tensor, r.format, rule, true) {
            QuantOutput::Quantized(t, stats) => {
                let data = burn::tensor::read_sync(B::float_into_data(t)).unwrap();
                (data.convert::<f32>().into_vec::<f32>().unwrap(), stats)
            }
            QuantOutput::NonFinite(_, amax) => panic!("record {i}: non-finite amax {amax}"),
        };
        let stats = stats.expect("statistics were asked for");
        let what = format!("record {i} ({}, {view:?}) on {}", r.format, B::name(device));
        assert_eq!(stats.amax, r.amax, "{what}: amax");
        assert_eq!(stats.bias, r.bias, "{what}: bias");
        assert_all_same(&what, &r.input, &got, &r.output);
        checked += 1;
    }
    // Every format and margin of the file has records of two or more dimensions.
    assert!(checked >= 200, "only {checked} records checked as {view:?}");
}

#[test]
fn ndarray_kernel_matches_amax_golden_on_views() {
    check_amax_golden_views::<NdArray>(&Default::default(), View::Transposed);
    check_amax_golden_views::<NdArray>(&Default::default(), View::Sliced);
}

#[test]
fn ndarray_kernel_matches_quantize_golden() {
    check_quantize_golden::<NdArray>(&Default::default());
}

#[test]
fn ndarray_kernel_matches_amax_golden() {
    check_amax_golden::<NdArray>(&Default::default());
}

#[test]
fn generic_fallback_matches_amax_golden() {
    // The host round trip any other backend gets, exercised here on ndarray's f64 flavour.
    type B64 = NdArray<f64>;
    check_amax_golden::<B64>(&Default::default());
}

#[cfg(feature = "cuda")]
mod cuda {
    use burn::backend::Cuda;

    // The device kernel, not the host path CUDA takes by default (`kernel/cube.rs`).
    fn device_kernel() {
        crate::common::cuda_device_kernel();
    }

    #[test]
    fn cuda_kernel_matches_quantize_golden() {
        device_kernel();
        super::check_quantize_golden::<Cuda>(&Default::default());
    }

    #[test]
    fn cuda_kernel_matches_amax_golden() {
        device_kernel();
        super::check_amax_golden::<Cuda>(&Default::default());
    }

    #[test]
    fn cuda_kernel_matches_amax_golden_on_views() {
        device_kernel();
        for view in [super::View::Transposed, super::View::Sliced] {
            super::check_amax_golden_views::<Cuda>(&Default::default(), view);
        }
    }
}

#[cfg(feature = "wgpu")]
mod wgpu {
    use burn::backend::Wgpu;

    #[test]
    fn wgpu_kernel_matches_quantize_golden() {
        super::check_quantize_golden::<Wgpu>(&Default::default());
    }

    #[test]
    fn wgpu_kernel_matches_amax_golden() {
        super::check_amax_golden::<Wgpu>(&Default::default());
    }

    /// Transposed and sliced views, every format and margin of the golden data.
    #[test]
    fn wgpu_kernel_matches_amax_golden_on_views() {
        for view in [super::View::Transposed, super::View::Sliced] {
            super::check_amax_golden_views::<Wgpu>(&Default::default(), view);
        }
    }
}

/// Every FP8 bit pattern of `codes_golden.csv` (ml_dtypes' reading of each byte in each format):
/// `Fp8Format::decode` gives its value bit for bit (NaN patterns as NaN), and `encode` gives the
/// byte back for every finite value (the stored base weights are these bytes).
#[test]
fn every_code_decodes_as_ml_dtypes_reads_it_and_encodes_back() {
    const CODES_CSV: &str = include_str!("../fixtures/codes_golden.csv");
    let formats = [
        Fp8Format::E4M3Fn,
        Fp8Format::E5M2,
        Fp8Format::E4M3Fnuz,
        Fp8Format::E5M2Fnuz,
    ];
    let mut rows = 0;
    for line in CODES_CSV.lines().skip(1) {
        let fields: Vec<&str> = line.split(',').collect();
        let code: u8 = fields[0].parse().expect("a byte");
        for (format, hex_bits) in formats.iter().zip(&fields[1..]) {
            let want = hex(hex_bits);
            let got = format.decode(code);
            if want.is_nan() {
                assert!(got.is_nan(), "{format} {code:#04x}: {got}, ml_dtypes NaN");
                assert_eq!(format.encode(got), None, "{format}: NaN has no code");
                continue;
            }
            assert_eq!(
                got.to_bits(),
                want.to_bits(),
                "{format} {code:#04x}: {got:e}, ml_dtypes {want:e}"
            );
            if want.is_finite() {
                assert_eq!(format.encode(want), Some(code), "{format} {want:e}");
            } else {
                assert_eq!(format.encode(want), None, "{format} {want}");
            }
        }
        rows += 1;
    }
    assert_eq!(rows, 256, "codes_golden.csv holds every byte");
}
