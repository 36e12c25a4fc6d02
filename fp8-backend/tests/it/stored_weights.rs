//! FP8-stored weights (`Fp8Weight`, `fp8_linear_stored`): a frozen layer computing from the
//! codes gives the bits it gives from the f32 weight the codes were made from (output, input
//! gradient, bias gradient and the statistics it reports), on flex (the bf16 GEMM over the
//! codes, on this CPU) and ndarray (the default: decoded weight), in both checkpoint layouts,
//! under every policy that casts the weight to FP8, over steps of `fp8-delayed`. Under a policy
//! that casts otherwise (`bf16`), the layer computes with the decoded values.

use burn::backend::{Autodiff, Flex, NdArray};
use burn::tensor::{Tensor, TensorData};
use fp8_backend::{
    fp8_linear, fp8_linear_stored, AmaxCompute, BiasRule, Fp8Context, Fp8Family, Fp8Kernels,
    Fp8LinearOps, Fp8Policy, Fp8Weight, Precision, Role,
};

use crate::common::{bits, values};

/// Rows (batch x positions), odd, past one register tile (12) and not a multiple of it.
const BATCH: usize = 3;
const ROWS: usize = 13;
/// Odd K (a padded pair) and N past one 32-column panel.
const IN: usize = 71;
const OUT: usize = 45;

fn tensor<B: burn::tensor::backend::Backend, const D: usize>(
    v: &[f32],
    shape: [usize; D],
) -> Tensor<B, D> {
    Tensor::from_data(TensorData::new(v.to_vec(), shape), &Default::default())
}

/// The layer's weight `[IN, OUT]` as the model holds it: stored `[IN, OUT]` (GPT-2's `Conv1D`)
/// or `[OUT, IN]` and viewed transposed (`nn.Linear`).
fn weight<B: burn::tensor::backend::Backend>(w: &[f32], transposed: bool) -> Tensor<B, 2> {
    if transposed {
        tensor::<B, 2>(w, [OUT, IN]).transpose()
    } else {
        tensor::<B, 2>(w, [IN, OUT])
    }
}

/// (y, dx, db) as bits, and the report, over `steps` steps of one layer under `policy`, the
/// weight f32 (frozen) or FP8-stored.
fn run<B: Fp8Kernels>(
    policy: &Fp8Policy,
    transposed: bool,
    stored: bool,
    steps: usize,
) -> Vec<(Vec<Vec<u32>>, fp8_backend::Fp8Report)>
where
    Autodiff<Fp8Backend<B>>: Fp8LinearOps,
{
    type Ad<B> = Autodiff<Fp8Backend<B>>;
    let context = Fp8Context::new(policy.clone());
    context.set_stats(true);
    let site = context.site("h.0.mlp.c_fc");
    let w = values(IN * OUT, 11, 0.2);
    let b = values(OUT, 12, 0.5);
    let (format, rule) = policy
        .rule_for(Role::Weight)
        .unwrap_or((Fp8Family::Graphcore.e4(), BiasRule::Amax { margin: 0 }));
    let codes = Fp8Weight::encode(&w, [IN, OUT], transposed, format, rule).unwrap();
    (0..steps)
        .map(|step| {
            // Inputs and gradients change from step to step (histories move on).
            let x = tensor::<Ad<B>, 3>(
                &values(BATCH * ROWS * IN, 20 + step as u32, 1.0 + step as f32),
                [BATCH, ROWS, IN],
            )
            .require_grad();
            let g = tensor::<Ad<B>, 3>(
                &values(BATCH * ROWS * OUT, 40 + step as u32, 1e-3),
                [BATCH, ROWS, OUT],
            );
            let bias = tensor::<Ad<B>, 1>(&b, [OUT]).require_grad();
            let y = if stored {
                fp8_linear_stored(x.clone(), &codes, Some(bias.clone()), &site)
            } else {
                fp8_linear(
                    x.clone(),
                    weight::<Ad<B>>(&w, transposed),
                    Some(bias.clone()),
                    &site,
                )
            };
            let grads = (y.clone() * g).sum().backward();
            let out = vec![
                bits(y.inner()),
                bits(x.grad(&grads).unwrap()),
                bits(bias.grad(&grads).unwrap()),
            ];
            (out, context.take_report())
        })
        .collect()
}

type Fp8Backend<B> = fp8_backend::Fp8<B>;

fn policies() -> Vec<(&'static str, Fp8Policy)> {
    let delayed = |algo| Fp8Policy {
        amax_history_len: 3,
        amax_compute_algo: algo,
        ..Fp8Policy::with_mode(Precision::Fp8Delayed)
    };
    vec![
        ("fp8-amax", Fp8Policy::amax()),
        (
            "fp8-amax ocp",
            Fp8Policy::amax().with_family(Fp8Family::Ocp),
        ),
        (
            "fp8-amax weight margin 2, not caching weights",
            Fp8Policy {
                weight_margin: 2,
                cache_weights: false,
                ..Fp8Policy::amax()
            },
        ),
        ("fp8-cscale -2", Fp8Policy::cscale(-2)),
        ("fp8-delayed max", delayed(AmaxCompute::Max)),
        ("fp8-delayed most_recent", delayed(AmaxCompute::MostRecent)),
    ]
}

fn same_as_f32_weight<B: Fp8Kernels>(backend: &str)
where
    Autodiff<Fp8Backend<B>>: Fp8LinearOps,
{
    for (name, policy) in policies() {
        for transposed in [false, true] {
            let f32_weight = run::<B>(&policy, transposed, false, 3);
            let stored = run::<B>(&policy, transposed, true, 3);
            for (step, ((want, want_report), (got, got_report))) in
                f32_weight.iter().zip(&stored).enumerate()
            {
                let what = format!("{backend}, {name}, transposed {transposed}, step {step}");
                for (i, tensor) in ["y", "dx", "db"].iter().enumerate() {
                    assert!(got[i] == want[i], "{what}: {tensor} differs");
                }
                assert!(
                    !want_report.records.is_empty(),
                    "{what}: statistics recorded"
                );
                assert_eq!(got_report, want_report, "{what}: reports differ");
            }
        }
    }
}

#[test]
fn flex_computes_from_the_codes_what_it_computes_from_the_f32_weight() {
    same_as_f32_weight::<Flex>("flex");
}

#[test]
fn ndarray_computes_from_the_codes_what_it_computes_from_the_f32_weight() {
    same_as_f32_weight::<NdArray>("ndarray");
}

/// Under `bf16` (no FP8 cast of the weight) the stored layer multiplies the decoded values: the
/// f32 path fed the decoded weight.
#[test]
fn a_policy_without_the_fp8_cast_computes_with_the_decoded_values() {
    type Ad = Autodiff<Fp8Backend<Flex>>;
    let policy = Fp8Policy::with_mode(Precision::Bf16);
    let w = values(IN * OUT, 11, 0.2);
    let codes = Fp8Weight::encode(
        &w,
        [IN, OUT],
        true,
        Fp8Family::Graphcore.e4(),
        BiasRule::Amax { margin: 0 },
    )
    .unwrap();
    let decoded = codes.decode();
    let x = tensor::<Ad, 2>(&values(ROWS * IN, 3, 1.0), [ROWS, IN]);
    let (a, b) = (Fp8Context::new(policy.clone()), Fp8Context::new(policy));
    let got = fp8_linear_stored(x.clone(), &codes, None, &a.site("q_proj"));
    let want = fp8_linear(x, weight::<Ad>(&decoded, true), None, &b.site("q_proj"));
    assert!(bits(got.inner()) == bits(want.inner()));
    assert_ne!(
        decoded, w,
        "the decoded weight is the FP8 cast, not the f32 weight"
    );
}
