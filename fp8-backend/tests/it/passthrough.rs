//! `Autodiff<Fp8<NdArray>>` must compute exactly what `Autodiff<NdArray>` computes while the
//! linear hooks in `crate::linear` only forward (docs/design.md: "With FP8 off, `Autodiff<Fp8<B>>`
//! gives bit-identical results to `Autodiff<B>`"). The model touches the linear hooks (with and
//! without bias, on a rank-3 input), a plain matmul, a layer norm, GELU, ReLU and a softmax.
//!
//! Not tested here: that the linear hooks are *reached*. With the placeholder `crate::linear`
//! forwarding to `B::linear`, both backends give the same bits whether or not the hooks run;
//! the FP8 tests of `crate::linear` (which change the bits) cover it.

use burn::backend::{Autodiff, NdArray};
use burn::module::Param;
use burn::nn::{LayerNorm, LayerNormConfig, Linear};
use burn::tensor::activation::{gelu, relu, softmax};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Tensor, TensorData};
use fp8_backend::Fp8;

const BATCH: usize = 2;
const SEQ: usize = 3;
const D_IN: usize = 8;
const D_HIDDEN: usize = 16;
const D_OUT: usize = 5;

/// Deterministic values in [-1, 1) (64-bit LCG, Knuth's MMIX constants), as f32 `TensorData`.
fn data(seed: u64, shape: &[usize]) -> TensorData {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let n = shape.iter().product();
    let values: Vec<f32> = (0..n)
        .map(|_| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect();
    TensorData::new(values, shape.to_vec())
}

/// The one set of weights and input both backends are built from.
struct Init {
    x: TensorData,
    fc1_weight: TensorData,
    fc1_bias: TensorData,
    ln_gamma: TensorData,
    ln_beta: TensorData,
    mix: TensorData,
    fc2_weight: TensorData,
    fc2_bias: TensorData,
    head_weight: TensorData,
}

impl Init {
    fn new() -> Self {
        Self {
            x: data(1, &[BATCH, SEQ, D_IN]),
            fc1_weight: data(2, &[D_IN, D_HIDDEN]),
            fc1_bias: data(3, &[D_HIDDEN]),
            ln_gamma: data(4, &[D_HIDDEN]),
            ln_beta: data(5, &[D_HIDDEN]),
            mix: data(6, &[D_HIDDEN, D_HIDDEN]),
            fc2_weight: data(7, &[D_HIDDEN, D_HIDDEN]),
            fc2_bias: data(8, &[D_HIDDEN]),
            head_weight: data(9, &[D_HIDDEN, D_OUT]),
        }
    }
}

fn param<B: Backend, const D: usize>(data: &TensorData, device: &B::Device) -> Param<Tensor<B, D>> {
    Param::from_tensor(Tensor::from_data(data.clone(), device))
}

struct Model<B: Backend> {
    fc1: Linear<B>,
    ln: LayerNorm<B>,
    /// Used with `Tensor::matmul`, which does not reach the linear hooks.
    mix: Param<Tensor<B, 2>>,
    fc2: Linear<B>,
    /// No bias: `linear(x, w, None)`.
    head: Linear<B>,
}

impl<B: Backend> Model<B> {
    fn new(init: &Init, device: &B::Device) -> Self {
        let mut ln = LayerNormConfig::new(D_HIDDEN).init(device);
        ln.gamma = param(&init.ln_gamma, device);
        ln.beta = Some(param(&init.ln_beta, device));
        Self {
            fc1: Linear {
                weight: param(&init.fc1_weight, device),
                bias: Some(param(&init.fc1_bias, device)),
            },
            ln,
            mix: param(&init.mix, device),
            fc2: Linear {
                weight: param(&init.fc2_weight, device),
                bias: Some(param(&init.fc2_bias, device)),
            },
            head: Linear {
                weight: param(&init.head_weight, device),
                bias: None,
            },
        }
    }

    fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let h = gelu(self.fc1.forward(x)); // (B, T, H)
        let h = self.ln.forward(h);
        let h = relu(h.matmul(self.mix.val().unsqueeze::<3>())); // (B, T, H)
        let h = softmax(self.fc2.forward(h), 2);
        self.head.forward(h) // (B, T, O)
    }
}

/// Forward output, then the gradient of every parameter and of the input, by name.
fn run<B: AutodiffBackend>(init: &Init) -> Vec<(&'static str, TensorData)> {
    let device = Default::default();
    let model = Model::<B>::new(init, &device);
    let x = Tensor::<B, 3>::from_data(init.x.clone(), &device).require_grad();
    let y = model.forward(x.clone());
    let loss = (y.clone() * y.clone()).mean();
    let grads = loss.backward();

    vec![
        ("output", y.into_data()),
        ("loss", loss.into_data()),
        grad("x", x.grad(&grads)),
        grad("fc1.weight", model.fc1.weight.grad(&grads)),
        grad("fc1.bias", model.fc1.bias.as_ref().unwrap().grad(&grads)),
        grad("ln.gamma", model.ln.gamma.grad(&grads)),
        grad("ln.beta", model.ln.beta.as_ref().unwrap().grad(&grads)),
        grad("mix", model.mix.grad(&grads)),
        grad("fc2.weight", model.fc2.weight.grad(&grads)),
        grad("fc2.bias", model.fc2.bias.as_ref().unwrap().grad(&grads)),
        grad("head.weight", model.head.weight.grad(&grads)),
    ]
}

fn grad<B: Backend, const D: usize>(
    name: &'static str,
    grad: Option<Tensor<B, D>>,
) -> (&'static str, TensorData) {
    let grad = grad.unwrap_or_else(|| panic!("no gradient for {name}"));
    (name, grad.into_data())
}

fn bits(data: &TensorData) -> Vec<u32> {
    let values = data.to_vec::<f32>().expect("f32 tensor");
    values.iter().map(|v| v.to_bits()).collect()
}

#[test]
fn fp8_decorator_is_bit_identical_to_its_inner_backend() {
    let init = Init::new();
    let reference = run::<Autodiff<NdArray>>(&init);
    let decorated = run::<Autodiff<Fp8<NdArray>>>(&init);

    assert_eq!(reference.len(), decorated.len());
    for ((name, want), (_, got)) in reference.iter().zip(&decorated) {
        assert_eq!(want.shape, got.shape, "{name}: shape");
        let (want_bits, got_bits) = (bits(want), bits(got));
        let differing = want_bits
            .iter()
            .zip(&got_bits)
            .filter(|(a, b)| a != b)
            .count();
        assert_eq!(
            differing,
            0,
            "{name}: {differing} of {} values differ (first: {:?} vs {:?})",
            want_bits.len(),
            want.to_vec::<f32>().unwrap().first(),
            got.to_vec::<f32>().unwrap().first(),
        );
        // A gradient of all zeros would make the comparison vacuous.
        assert!(want_bits.iter().any(|b| b << 1 != 0), "{name}: all zero");
    }
}

#[test]
fn fp8_backend_names_its_inner_backend() {
    let device = Default::default();
    assert_eq!(<Fp8<NdArray> as Backend>::name(&device), "fp8<ndarray>");
    assert_eq!(
        <Autodiff<Fp8<NdArray>> as Backend>::name(&device),
        format!("autodiff<{}>", <Fp8<NdArray> as Backend>::name(&device))
    );
}
