//! Named FP8 layers (`fp8_linear` with an `Fp8Site`): the same three GEMMs as docs/design.md's
//! table, each operand cast once, every record under the name of the layer it belongs to.
//!
//! Expected values come from the scalar reference (`amax_bias` + `quantize_scaled` on the host)
//! and plain ndarray matmuls, as in `anonymous_layers.rs`.

use burn::backend::{Autodiff, NdArray};
use burn::tensor::{Tensor, TensorData};
use fp8_backend::{
    amax_bias, fp8_linear, Fp8, Fp8Context, Fp8Family, Fp8Format, Fp8Policy, LayerId, LinearOp,
    Role, DEFAULT_GRADIENT_MARGIN,
};

use crate::common::{amax, bits, q, values};

type Ad = Autodiff<Fp8<NdArray>>;
type Inf = Fp8<NdArray>;
type Plain = NdArray;

const IN: usize = 6;
const OUT: usize = 4;
/// The input is [BATCH, ROWS, IN]: the weight gradient sums over both leading dimensions.
const BATCH: usize = 2;
const ROWS: usize = 3;

fn tensor<B: burn::tensor::backend::Backend, const D: usize>(
    v: &[f32],
    shape: [usize; D],
) -> Tensor<B, D> {
    Tensor::from_data(TensorData::new(v.to_vec(), shape), &Default::default())
}

struct Layer {
    x: Vec<f32>,
    w: Vec<f32>,
    b: Vec<f32>,
    /// dL/dY: the loss is sum(Y * G), so dY = G exactly.
    g: Vec<f32>,
}

fn layer(seed: u32, grad_scale: f32) -> Layer {
    Layer {
        x: values(BATCH * ROWS * IN, seed, 1.0),
        w: values(IN * OUT, seed + 1, 0.1),
        b: values(OUT, seed + 2, 0.5),
        g: values(BATCH * ROWS * OUT, seed + 3, grad_scale),
    }
}

/// Forward and backward of one named layer: (y, dx, dw, db) as bits.
fn run(l: &Layer, context: &Fp8Context, name: &str) -> [Vec<u32>; 4] {
    let x = tensor::<Ad, 3>(&l.x, [BATCH, ROWS, IN]).require_grad();
    let w = tensor::<Ad, 2>(&l.w, [IN, OUT]).require_grad();
    let b = tensor::<Ad, 1>(&l.b, [OUT]).require_grad();
    let g = tensor::<Ad, 3>(&l.g, [BATCH, ROWS, OUT]);
    let y = fp8_linear(x.clone(), w.clone(), Some(b.clone()), &context.site(name));
    let grads = (y.clone() * g).sum().backward();
    [
        bits(y.inner()),
        bits(x.grad(&grads).unwrap()),
        bits(w.grad(&grads).unwrap()),
        bits(b.grad(&grads).unwrap()),
    ]
}

/// The same GEMMs computed on the host reference: (y, dx, dw, db) as bits.
fn reference(l: &Layer, family: Fp8Family) -> [Vec<u32>; 4] {
    let (e4, e5) = (family.e4(), family.e5());
    let n = BATCH * ROWS;
    let qx = tensor::<Plain, 2>(&q(&l.x, e4, 0), [n, IN]);
    let qw = tensor::<Plain, 2>(&q(&l.w, e4, 0), [IN, OUT]);
    let qg = tensor::<Plain, 2>(&q(&l.g, e5, DEFAULT_GRADIENT_MARGIN), [n, OUT]);
    let b = tensor::<Plain, 1>(&l.b, [OUT]);
    let y = qx.clone().matmul(qw.clone()) + b.unsqueeze();
    let dx = qg.clone().matmul(qw.transpose());
    let dw = qx.transpose().matmul(qg);
    // The bias gradient is the inner backend's own sum of dY (batch dimension first, as Burn's
    // default `linear_bias_backward` sums).
    let db = tensor::<Plain, 3>(&l.g, [BATCH, ROWS, OUT])
        .sum_dim(0)
        .sum_dim(1)
        .reshape([OUT]);
    [bits(y), bits(dx), bits(dw), bits(db)]
}

#[test]
fn a_named_layer_computes_the_three_fp8_gemms_exactly() {
    let l = layer(1, 1e-3);
    for family in [Fp8Family::Graphcore, Fp8Family::Ocp] {
        for cache_weights in [true, false] {
            let policy = Fp8Policy {
                cache_weights,
                ..Fp8Policy::amax().with_family(family)
            };
            let got = run(&l, &Fp8Context::new(policy), "layer");
            let want = reference(&l, family);
            for (i, what) in ["y", "dX", "dW", "db"].iter().enumerate() {
                assert_eq!(
                    got[i], want[i],
                    "{family} cache_weights {cache_weights}: {what}"
                );
            }
        }
    }
    // The data tells FP8 from f32 apart. (It cannot tell the families apart: with power-of-two
    // AMAX scaling they differ only where values underflow, docs/design.md.)
    let off = run(&l, &Fp8Context::new(Fp8Policy::off()), "layer");
    assert_ne!(off[0], reference(&l, Fp8Family::Graphcore)[0]);
}

/// The `bf16` precision: every operand of the three GEMMs rounded to bfloat16 (round to nearest
/// even, by the `half` crate here), no scale; the bias gradient the plain f32 sum.
#[test]
fn a_named_layer_in_bf16_rounds_every_gemm_operand() {
    let l = layer(3, 1e-3);
    let bf = |v: &[f32]| -> Vec<f32> {
        v.iter()
            .map(|&x| burn::tensor::bf16::from_f32(x).to_f32())
            .collect()
    };
    let n = BATCH * ROWS;
    let bx = tensor::<Plain, 2>(&bf(&l.x), [n, IN]);
    let bw = tensor::<Plain, 2>(&bf(&l.w), [IN, OUT]);
    let bg = tensor::<Plain, 2>(&bf(&l.g), [n, OUT]);
    let y = bx.clone().matmul(bw.clone()) + tensor::<Plain, 1>(&l.b, [OUT]).unsqueeze();
    let want = [
        bits(y),
        bits(bg.clone().matmul(bw.transpose())),
        bits(bx.transpose().matmul(bg)),
    ];
    for cache_weights in [true, false] {
        let policy = Fp8Policy {
            cache_weights,
            ..Fp8Policy::with_mode(fp8_backend::Precision::Bf16)
        };
        let context = Fp8Context::new(policy);
        let got = run(&l, &context, "layer");
        for (i, what) in ["y", "dX", "dW"].iter().enumerate() {
            assert_eq!(
                got[i], want[i],
                "bf16 cache_weights {cache_weights}: {what}"
            );
        }
        assert!(
            context.take_report().records.is_empty(),
            "bf16 casts record no FP8 statistics"
        );
    }
    // The data tells bf16 from f32.
    let off = run(&l, &Fp8Context::new(Fp8Policy::off()), "layer");
    assert_ne!(off[0], want[0]);
    assert_ne!(off[2], want[2]);
}

#[test]
fn fp8_off_is_plain_f32_linear() {
    let l = layer(5, 1e-3);
    let got = run(&l, &Fp8Context::new(Fp8Policy::off()), "layer");
    let n = BATCH * ROWS;
    let x = tensor::<Plain, 2>(&l.x, [n, IN]);
    let w = tensor::<Plain, 2>(&l.w, [IN, OUT]);
    let g = tensor::<Plain, 2>(&l.g, [n, OUT]);
    let y = x.clone().matmul(w.clone()) + tensor::<Plain, 1>(&l.b, [OUT]).unsqueeze();
    assert_eq!(got[0], bits(y));
    assert_eq!(got[1], bits(g.clone().matmul(w.transpose())));
    assert_eq!(got[2], bits(x.transpose().matmul(g)));
}

#[test]
fn inference_and_training_forwards_agree() {
    let l = layer(9, 1e-3);
    let context = Fp8Context::new(Fp8Policy::amax());
    let y = fp8_linear(
        tensor::<Inf, 3>(&l.x, [BATCH, ROWS, IN]),
        tensor::<Inf, 2>(&l.w, [IN, OUT]),
        Some(tensor::<Inf, 1>(&l.b, [OUT])),
        &context.site("layer"),
    );
    assert_eq!(bits(y), run(&l, &context, "layer")[0]);
}

/// Two layers side by side with gradients of very different sizes: each record's figures must
/// be those of its own layer's tensors, so a swapped or order-inferred naming fails.
#[test]
fn records_carry_the_name_of_their_layer() {
    let (a, b) = (layer(20, 1e-3), layer(40, 30.0));
    let context = Fp8Context::new(Fp8Policy::amax());
    context.set_stats(true);
    let forward = |l: &Layer, name: &str| {
        let x = tensor::<Ad, 3>(&l.x, [BATCH, ROWS, IN]).require_grad();
        let w = tensor::<Ad, 2>(&l.w, [IN, OUT]).require_grad();
        let y = fp8_linear(x, w, None, &context.site(name));
        (y * tensor::<Ad, 3>(&l.g, [BATCH, ROWS, OUT])).sum()
    };
    let loss = forward(&a, "h.0.mlp.c_fc") + forward(&b, "h.1.mlp.c_fc");
    loss.backward();
    let report = context.take_report();
    let named = |name: &str| LayerId::Named(name.into());
    for (l, name) in [(&a, "h.0.mlp.c_fc"), (&b, "h.1.mlp.c_fc")] {
        let of = |role: Role| {
            let found: Vec<_> = report
                .records
                .iter()
                .filter(|r| r.layer == named(name) && r.role == role)
                .collect();
            assert_eq!(found.len(), 1, "one {role} record for {name}: {found:?}");
            found[0].clone()
        };
        assert_eq!(of(Role::Activation).stats.amax, amax(&l.x), "{name}");
        assert_eq!(of(Role::Activation).op, LinearOp::Forward);
        assert_eq!(of(Role::Weight).stats.amax, amax(&l.w), "{name}");
        let grad = of(Role::Gradient);
        assert_eq!(
            grad.stats.amax,
            amax(&l.g),
            "{name}: max |dY| of its own output"
        );
        assert_eq!(
            grad.stats.bias,
            amax_bias(amax(&l.g), Fp8Format::E5M2Fnuz, DEFAULT_GRADIENT_MARGIN).unwrap()
        );
        assert_eq!(grad.op, LinearOp::BackwardX);
        assert_eq!(grad.stats.numel, BATCH * ROWS * OUT);
    }
    assert_eq!(
        report.records.len(),
        6,
        "each operand cast once: {report:?}"
    );
    assert!(
        context.take_report().records.is_empty(),
        "the report was handed over"
    );
}

#[test]
fn the_backward_uses_the_policy_its_forward_ran_under() {
    let l = layer(60, 1e-3);
    let context = Fp8Context::new(Fp8Policy::amax());
    let x = tensor::<Ad, 3>(&l.x, [BATCH, ROWS, IN]).require_grad();
    let w = tensor::<Ad, 2>(&l.w, [IN, OUT]).require_grad();
    let y = fp8_linear(x.clone(), w.clone(), None, &context.site("layer"));
    context.set_policy(Fp8Policy::off());
    let grads = (y * tensor::<Ad, 3>(&l.g, [BATCH, ROWS, OUT]))
        .sum()
        .backward();
    let want = reference(&l, Fp8Family::Graphcore);
    assert_eq!(bits(x.grad(&grads).unwrap()), want[1]);
    assert_eq!(bits(w.grad(&grads).unwrap()), want[2]);
}

#[test]
fn a_non_finite_operand_is_reported_under_its_layer_and_passed_on() {
    let mut l = layer(80, 1e-3);
    l.x[7] = f32::INFINITY;
    let context = Fp8Context::new(Fp8Policy::amax());
    let y = run(&l, &context, "h.3.attn.c_proj")[0].clone();
    assert!(y.iter().any(|b| !f32::from_bits(*b).is_finite()));
    let report = context.take_report();
    let event = report
        .non_finite
        .first()
        .expect("an event, statistics off or not");
    assert_eq!(event.layer, LayerId::Named("h.3.attn.c_proj".into()));
    assert_eq!(
        (event.op, event.role),
        (LinearOp::Forward, Role::Activation)
    );
    assert!(event.amax.is_infinite());
}
