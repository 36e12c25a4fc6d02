//! Parity with Hugging Face `transformers` on the committed fixture (llm.c's `test_gpt2` habit):
//! logits, loss and every parameter gradient, compared by name; the worst tensor is printed.
//! Regenerate the fixture with `python tests/fixtures/gen_gpt2.py`.

use burn::backend::{Autodiff, NdArray};
use burn::tensor::{Int, Tensor, TensorData};
use fp8_backend::{Fp8, Fp8Policy, LayerFilter};
use serde_json::Value;
use trainer::model::names::param_grads;
use trainer::{load_checkpoint, ModelOptions};

use crate::common;
use crate::common::max_abs_diff;

/// The model runs on the FP8 decorator (with FP8 off, bit-identical to plain ndarray).
type Cpu = Fp8<NdArray<f32>>;
type Train = Autodiff<Cpu>;

/// Must equal `FIXTURE_VERSION` in gen_gpt2.py.
const FIXTURE_VERSION: u64 = 1;
/// Logits, max |ours - reference|. f32 matmuls and softmax summed in a different order than
/// torch's differ by ~1e-6 here; a real bug (a transposed weight, a missing bias, the wrong GELU)
/// moves logits by 1e-2 or more.
const LOGITS_ABS_TOL: f32 = 1e-4;
/// Loss, |ours - reference| / reference: a mean of 128 f32 log-probabilities.
const LOSS_REL_TOL: f64 = 1e-5;
/// Each gradient, max |ours - reference| / max |reference| over the tensor. Relative to the
/// tensor's scale because gradients of different parameters differ by orders of magnitude.
const GRAD_REL_TOL: f32 = 1e-4;

struct Reference {
    tokens: Vec<i64>,
    batch: usize,
    seq_len: usize,
    tensors: Vec<trainer::checkpoint::NamedTensor>,
}

impl Reference {
    fn load() -> Self {
        let dir = common::fixture_dir();
        let meta: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap())
                .unwrap();
        assert_eq!(
            meta["version"].as_u64(),
            Some(FIXTURE_VERSION),
            "fixture {} is stale or from another generator; try re-running `python tests/fixtures/gen_gpt2.py`",
            dir.display()
        );
        Self {
            tokens: meta["tokens"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t.as_i64().unwrap())
                .collect(),
            batch: meta["batch_size"].as_u64().unwrap() as usize,
            seq_len: meta["seq_len"].as_u64().unwrap() as usize,
            tensors: common::read_tensors(&dir.join("reference.safetensors")),
        }
    }

    fn tensor(&self, name: &str) -> &trainer::checkpoint::NamedTensor {
        self.tensors
            .iter()
            .find(|t| t.name == name)
            .unwrap_or_else(|| panic!("reference has no `{name}`"))
    }

    /// Inputs and targets as docs/design.md "Data windows": the first and the last B*T of B*T+1 tokens.
    fn batch<B: burn::tensor::backend::Backend>(
        &self,
        device: &B::Device,
    ) -> (Tensor<B, 2, Int>, Tensor<B, 2, Int>) {
        let n = self.batch * self.seq_len;
        assert_eq!(self.tokens.len(), n + 1);
        let shape = [self.batch, self.seq_len];
        let window = |range: std::ops::Range<usize>| {
            Tensor::from_data(TensorData::new(self.tokens[range].to_vec(), shape), device)
        };
        (window(0..n), window(1..n + 1))
    }
}

fn max_abs(values: &[f32]) -> f32 {
    values.iter().fold(0.0, |m, v| m.max(v.abs()))
}

fn to_vec(data: TensorData) -> Vec<f32> {
    data.convert::<f32>().into_vec().unwrap()
}

#[test]
fn logits_loss_and_gradients_match_transformers() {
    let reference = Reference::load();
    let device = Default::default();
    let model = load_checkpoint::<Train>(&common::fixture_dir(), &ModelOptions::default(), &device)
        .unwrap();
    let (inputs, targets) = reference.batch::<Train>(&device);

    let (loss, logits) = model.forward_loss(inputs, targets);
    let logits_diff = max_abs_diff(
        &to_vec(logits.into_data()),
        &reference.tensor("logits").values,
    );
    let loss_value = to_vec(loss.clone().into_data())[0] as f64;
    let loss_ref = reference.tensor("loss").values[0] as f64;
    let loss_rel = (loss_value - loss_ref).abs() / loss_ref.abs();

    let grads = loss.backward();
    let mut worst = (String::new(), 0.0f32);
    let mut compared = 0;
    for (name, grad) in param_grads(&model, &grads) {
        let ours = to_vec(grad.unwrap_or_else(|| panic!("no gradient for `{name}`")));
        let theirs = &reference.tensor(&name).values;
        let rel = max_abs_diff(&ours, theirs) / max_abs(theirs).max(f32::MIN_POSITIVE);
        if rel > worst.1 {
            worst = (name, rel);
        }
        compared += 1;
    }
    let grads_in_reference = reference.tensors.len() - 2; // minus logits and loss
    println!(
        "parity vs transformers: logits max|diff| {logits_diff:.3e} (tol {LOGITS_ABS_TOL:e}); loss {loss_value:.7} vs \
         {loss_ref:.7}, rel {loss_rel:.3e} (tol {LOSS_REL_TOL:e}); {compared} gradients, worst `{}` rel {:.3e} (tol {GRAD_REL_TOL:e})",
        worst.0, worst.1
    );
    assert_eq!(
        compared, grads_in_reference,
        "every reference gradient must have a parameter"
    );
    assert!(
        logits_diff <= LOGITS_ABS_TOL,
        "logits differ by {logits_diff:e}"
    );
    assert!(
        loss_rel <= LOSS_REL_TOL,
        "loss {loss_value} vs reference {loss_ref}"
    );
    assert!(
        worst.1 <= GRAD_REL_TOL,
        "gradient of `{}` differs by {:e} relative",
        worst.0,
        worst.1
    );
}

/// A projection without an FP8 site computes `x @ W + b` itself; in f32 that must be exactly
/// what a projection with a site computes when its policy is off (Burn's default `linear`), or
/// excluding layers from FP8 would change the f32 ones' results.
#[test]
fn excluded_layers_compute_the_same_bits_as_linear() {
    let reference = Reference::load();
    let device = Default::default();
    let logits = |layers: &str, fp8_on_then_off: bool| {
        let fp8 = Fp8Policy {
            layers: LayerFilter::parse(layers).unwrap(),
            ..Fp8Policy::amax()
        };
        let options = ModelOptions {
            fp8,
            ..ModelOptions::default()
        };
        let model = load_checkpoint::<Cpu>(&common::fixture_dir(), &options, &device).unwrap();
        let sites = model.fp8_layers().len();
        if fp8_on_then_off {
            // The sites stay; their policy turns FP8 off.
            model.fp8().set_policy(Fp8Policy::off());
        }
        let out = to_vec(model.forward(reference.batch::<Cpu>(&device).0).into_data());
        (out, sites)
    };
    let (plain, _) = {
        let model =
            load_checkpoint::<Cpu>(&common::fixture_dir(), &ModelOptions::default(), &device)
                .unwrap();
        assert!(
            model.fp8_layers().is_empty(),
            "FP8 off: no projection has a site"
        );
        (
            to_vec(model.forward(reference.batch::<Cpu>(&device).0).into_data()),
            (),
        )
    };
    let (all_off, sites) = logits("*", true);
    assert_eq!(sites, 8);
    let (mlp_off, mlp_sites) = logits("h.*.mlp.*", true);
    assert_eq!(mlp_sites, 4);
    let same = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits());
    assert!(same(&plain, &all_off));
    assert!(same(&plain, &mlp_off));
    // ... and with the policy on, the sites do change the logits.
    let (fp8, _) = logits("*", false);
    assert!(!same(&plain, &fp8));
}
