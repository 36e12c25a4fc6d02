//! Our AdamW and global-norm clipping against `torch.optim.AdamW` + `clip_grad_norm_`, six
//! steps: bias correction past step 1, decoupled weight decay on the matrix only (the bias and
//! the layer norm are 1-D, nanoGPT's grouping), three steps clipped and three not, a different
//! learning rate every step. Fixture: `tests/fixtures/gen_adamw.py` -> `adamw_reference.json`.

use burn::backend::{Flex, NdArray};
use burn::tensor::{Tensor, TensorData};
use fp8_backend::Fp8;
use serde_json::Value;
use trainer::host::HostTensors;
use trainer::train::optimizer::{AdamW, AdamWStep};
use trainer::train::step::{clip_factor, read_with_sum_squares};

use crate::common;

/// Must equal `FIXTURE_VERSION` in gen_adamw.py.
const FIXTURE_VERSION: u64 = 1;
/// Values and moments, max |ours - torch| / max |torch| per tensor, after every step. Both sides
/// are f32 with different roundings (torch: `lerp_` for the first moment, bias corrections in
/// f64; ours: `beta1 * m + (1 - beta1) * g`, f32 `powi`), and the errors compound over six
/// steps: measured here 3.3e-7 worst (the first moment of `h.0.ln_1.weight` at step 6). The generator's own f64 re-implementation differs from
/// torch by up to 6.3e-7 over the six steps, which bounds what f32 rounding alone can do; a
/// wrong bias correction, decay on a 1-D tensor or a missed clip moves values by 1e-4 or more.
const STATE_REL_TOL: f32 = 2e-6;
/// The global norm: ours in f64, torch's in f32 (measured worst 3.3e-8 relative).
const NORM_REL_TOL: f64 = 1e-6;

fn bits_to_f32(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|h| f32::from_bits(u32::from_str_radix(h.as_str().unwrap(), 16).unwrap()))
        .collect()
}

/// max |a - b| / max |b|.
fn rel(a: &[f32], b: &[f32]) -> f32 {
    let scale = b
        .iter()
        .fold(0f32, |m, x| m.max(x.abs()))
        .max(f32::MIN_POSITIVE);
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

/// The training loop's backends: flex (the default CPU) and ndarray, both under the decorator.
#[test]
fn six_steps_match_torch_adamw_with_clipping() {
    six_steps::<Fp8<Flex>>();
    six_steps::<Fp8<NdArray<f32>>>();
}

fn tensor<B: HostTensors>(values: Vec<f32>) -> Tensor<B, 1> {
    let n = values.len();
    Tensor::from_data(TensorData::new(values, [n]), &Default::default())
}

fn host<B: HostTensors>(t: &Tensor<B, 1>) -> Vec<f32> {
    t.clone().into_data().to_vec::<f32>().unwrap()
}

fn six_steps<B: HostTensors>() {
    let path = common::repo_root().join("tests/fixtures/adamw_reference.json");
    let fixture: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(
        fixture["fixture_version"].as_u64(),
        Some(FIXTURE_VERSION),
        "{} is stale: re-run tests/fixtures/gen_adamw.py",
        path.display()
    );
    let betas = fixture["betas"].as_array().unwrap();
    let (beta1, beta2) = (betas[0].as_f64().unwrap(), betas[1].as_f64().unwrap());
    let eps = fixture["eps"].as_f64().unwrap();
    let weight_decay = fixture["weight_decay"].as_f64().unwrap();
    let max_norm = fixture["max_norm"].as_f64().unwrap();

    let params = fixture["params"].as_array().unwrap();
    let shapes: Vec<(String, Vec<usize>)> = params
        .iter()
        .map(|p| {
            let shape = p["shape"].as_array().unwrap();
            let shape = shape.iter().map(|d| d.as_u64().unwrap() as usize).collect();
            (p["name"].as_str().unwrap().to_string(), shape)
        })
        .collect();
    let mut adamw = AdamW::<B>::new(shapes, &Default::default());
    let mut values: Vec<Tensor<B, 1>> = params
        .iter()
        .map(|p| tensor(bits_to_f32(&p["initial"])))
        .collect();
    for (ours, theirs) in adamw.slots.iter().zip(params) {
        assert_eq!(
            ours.decay,
            theirs["decay"].as_bool().unwrap(),
            "{}",
            ours.name
        );
    }

    let mut worst = (String::new(), 0f32);
    let mut clipped_steps = 0;
    let mut worst_norm = 0f64;
    for step in fixture["steps"].as_array().unwrap() {
        let grads: Vec<Option<Tensor<B, 1>>> = adamw
            .slots
            .iter()
            .map(|s| Some(tensor(bits_to_f32(&step["grads"][s.name.as_str()]))))
            .collect();
        // As the training loop computes it: each gradient's f32 sum of squares on the device.
        let (_, squares) = read_with_sum_squares(tensor::<B>(vec![0.0]), &grads);
        let norm = squares.iter().sum::<f64>().sqrt();
        let torch_norm = step["total_norm"].as_f64().unwrap();
        worst_norm = worst_norm.max(((norm - torch_norm) / torch_norm).abs());
        assert!(
            ((norm - torch_norm) / torch_norm).abs() < NORM_REL_TOL,
            "step {}: norm {norm} vs torch {torch_norm}",
            step["step"]
        );
        clipped_steps += usize::from(norm > max_norm);
        let hyper = AdamWStep {
            lr: step["lr"].as_f64().unwrap() as f32,
            beta1: beta1 as f32,
            beta2: beta2 as f32,
            eps: eps as f32,
            weight_decay: weight_decay as f32,
        };
        let coefficients = adamw.begin_step(hyper, clip_factor(norm, max_norm));
        for (i, grad) in grads.into_iter().enumerate() {
            let value = values[i].clone();
            values[i] = adamw.update(i, value, grad.unwrap(), &coefficients);
        }
        for (slot, value) in adamw.slots.iter().zip(&values) {
            let after = &step["after"][slot.name.as_str()];
            let ours = [
                ("value", host(value)),
                ("exp_avg", host(&slot.m)),
                ("exp_avg_sq", host(&slot.v)),
            ];
            for (what, ours) in ours {
                let r = rel(&ours, &bits_to_f32(&after[what]));
                if r > worst.1 {
                    worst = (format!("step {} {} {what}", step["step"], slot.name), r);
                }
            }
        }
    }
    println!(
        "worst: {} rel {:e}; global norm rel {worst_norm:e}",
        worst.0, worst.1
    );
    assert_eq!(clipped_steps, 3, "the fixture clips three of its six steps");
    assert_eq!(adamw.t, 6);
    assert!(
        worst.1 <= STATE_REL_TOL,
        "{} differs by {:e} relative",
        worst.0,
        worst.1
    );
}
