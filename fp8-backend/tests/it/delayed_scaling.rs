//! `fp8-delayed` through named layers: each cast takes its bias from the amax history of the
//! same tensor (layer name and role), then adds its own amax (`src/delayed.rs`).
//!
//! Expected values come from the scalar reference (`amax_bias` + `quantize_scaled`) and plain
//! ndarray matmuls, with the biases worked out here from the amaxes of the operands.

use burn::backend::{Autodiff, NdArray};
use burn::tensor::{Tensor, TensorData};
use fp8_backend::{
    amax_bias, fp8_linear, quantize_scaled, AmaxCompute, Fp8, Fp8Context, Fp8Format, Fp8Policy,
    LayerId, Precision, Role, DEFAULT_GRADIENT_MARGIN,
};

use crate::common::{amax, bits, values};

type Ad = Autodiff<Fp8<NdArray>>;
type Plain = NdArray;

const ROWS: usize = 4;
const IN: usize = 6;
const OUT: usize = 5;
const E4: Fp8Format = Fp8Format::E4M3Fnuz;
const E5: Fp8Format = Fp8Format::E5M2Fnuz;

fn tensor<B: burn::tensor::backend::Backend, const D: usize>(
    v: &[f32],
    shape: [usize; D],
) -> Tensor<B, D> {
    Tensor::from_data(TensorData::new(v.to_vec(), shape), &Default::default())
}

fn delayed(len: usize, compute: AmaxCompute) -> Fp8Policy {
    Fp8Policy {
        amax_history_len: len,
        amax_compute_algo: compute,
        ..Fp8Policy::with_mode(Precision::Fp8Delayed)
    }
}

fn scaled(xs: &[f32], bias: i32, format: Fp8Format) -> Vec<f32> {
    xs.iter()
        .map(|&x| quantize_scaled(x, format, bias))
        .collect()
}

/// One call's operands: x [ROWS, IN], w [IN, OUT], dY [ROWS, OUT].
struct Call {
    x: Vec<f32>,
    w: Vec<f32>,
    g: Vec<f32>,
}

fn call(seed: u32, x_scale: f32, w_scale: f32, g_scale: f32) -> Call {
    Call {
        x: values(ROWS * IN, seed, x_scale),
        w: values(IN * OUT, seed + 1, w_scale),
        g: values(ROWS * OUT, seed + 2, g_scale),
    }
}

/// Forward and backward of layer `name` under `context`: (y, dX, dW) as bits.
fn run(c: &Call, context: &Fp8Context, name: &str) -> [Vec<u32>; 3] {
    let x = tensor::<Ad, 2>(&c.x, [ROWS, IN]).require_grad();
    let w = tensor::<Ad, 2>(&c.w, [IN, OUT]).require_grad();
    let y = fp8_linear(x.clone(), w.clone(), None, &context.site(name));
    let grads = (y.clone() * tensor::<Ad, 2>(&c.g, [ROWS, OUT]))
        .sum()
        .backward();
    [
        bits(y.inner()),
        bits(x.grad(&grads).unwrap()),
        bits(w.grad(&grads).unwrap()),
    ]
}

/// The three GEMMs with the given biases of x, W and dY.
fn reference(c: &Call, [bx, bw, bg]: [i32; 3]) -> [Vec<u32>; 3] {
    let qx = tensor::<Plain, 2>(&scaled(&c.x, bx, E4), [ROWS, IN]);
    let qw = tensor::<Plain, 2>(&scaled(&c.w, bw, E4), [IN, OUT]);
    let qg = tensor::<Plain, 2>(&scaled(&c.g, bg, E5), [ROWS, OUT]);
    [
        bits(qx.clone().matmul(qw.clone())),
        bits(qg.clone().matmul(qw.transpose())),
        bits(qx.transpose().matmul(qg)),
    ]
}

/// The bias `fp8-delayed` gives after `history` (oldest first, `len` kept): `max` of the
/// history, or the tensor's own amax when there is none.
fn expected_bias(history: &[f32], own: f32, format: Fp8Format, margin: i32) -> i32 {
    let a = history.iter().copied().fold(0.0f32, f32::max);
    amax_bias(if a > 0.0 { a } else { own }, format, margin).unwrap()
}

/// Five calls whose operands grow and shrink by powers of two: each call's output must be
/// that of the biases of the previous two calls' amaxes (history length 2), so a recipe that
/// scales from the tensor itself, keeps more or fewer amaxes, or mixes up the roles fails.
#[test]
fn each_cast_takes_the_bias_of_the_amaxes_before_it() {
    let calls: Vec<Call> = [(1.0, 1.0, 1e-3), (8.0, 0.25, 1e-1), (1.0 / 64.0, 1.0, 1e-5)]
        .iter()
        .chain(&[(1.0, 4.0, 1e-3), (1.0, 1.0, 1e-3)])
        .enumerate()
        .map(|(i, &(x, w, g))| call(10 * i as u32, x, w, g))
        .collect();
    let context = Fp8Context::new(delayed(2, AmaxCompute::Max));
    context.set_stats(true);
    let (mut hx, mut hw, mut hg) = (Vec::new(), Vec::new(), Vec::new());
    let mut differs_from_amax = false;
    for (i, c) in calls.iter().enumerate() {
        let biases = [
            expected_bias(&hx, amax(&c.x), E4, 0),
            expected_bias(&hw, amax(&c.w), E4, 0),
            expected_bias(&hg, amax(&c.g), E5, DEFAULT_GRADIENT_MARGIN),
        ];
        let own = [
            amax_bias(amax(&c.x), E4, 0).unwrap(),
            amax_bias(amax(&c.w), E4, 0).unwrap(),
            amax_bias(amax(&c.g), E5, DEFAULT_GRADIENT_MARGIN).unwrap(),
        ];
        differs_from_amax |= biases != own;
        let got = run(c, &context, "h.0.mlp.c_fc");
        let want = reference(c, biases);
        for (k, what) in ["y", "dX", "dW"].iter().enumerate() {
            assert_eq!(got[k], want[k], "call {i}: {what} (biases {biases:?})");
        }
        let report = context.take_report();
        let bias_of = |role: Role| {
            let r = report.records.iter().find(|r| r.role == role).unwrap();
            r.stats.bias
        };
        let recorded = [Role::Activation, Role::Weight, Role::Gradient].map(bias_of);
        assert_eq!(recorded, biases, "call {i}: the recorded biases");
        if i == 1 {
            // x grew 8x past the bias of call 0's amax: its largest values saturate.
            let x = report.records.iter().find(|r| r.role == Role::Activation);
            assert!(x.unwrap().stats.saturated_frac > 0.0);
        }
        for (h, xs) in [(&mut hx, &c.x), (&mut hw, &c.w), (&mut hg, &c.g)] {
            h.push(amax(xs));
            if h.len() > 2 {
                h.remove(0);
            }
        }
    }
    assert!(differs_from_amax, "the calls exercise a history's bias");
    let layer = LayerId::Named("h.0.mlp.c_fc".into());
    assert_eq!(context.amax_history(&layer, Role::Weight), hw);
}

#[test]
fn most_recent_takes_the_newest_amax() {
    let (a, b) = (call(1, 1.0, 1.0, 1e-3), call(2, 16.0, 1.0, 1e-3));
    let context = Fp8Context::new(delayed(8, AmaxCompute::MostRecent));
    run(&a, &context, "l");
    run(&b, &context, "l");
    let c = call(3, 1.0, 1.0, 1e-3);
    let want = reference(
        &c,
        [
            amax_bias(amax(&b.x), E4, 0).unwrap(),
            amax_bias(amax(&b.w), E4, 0).unwrap(),
            amax_bias(amax(&b.g), E5, DEFAULT_GRADIENT_MARGIN).unwrap(),
        ],
    );
    assert_eq!(run(&c, &context, "l"), want);
}

/// Histories belong to a layer name and a role: layer `b`'s calls leave `a`'s alone, and a
/// history exported by name and restored into a new context (whose sites are made in another
/// order) continues bit for bit.
#[test]
fn histories_are_per_name_and_restore_by_name() {
    let calls: Vec<Call> = (0..4)
        .map(|i| call(100 + i, 1.0 + i as f32, 1.0, 1e-3))
        .collect();
    let other = call(7, 1000.0, 50.0, 10.0);
    let policy = delayed(16, AmaxCompute::Max);
    let whole = Fp8Context::new(policy.clone());
    let mut saved = None;
    let mut tail = Vec::new();
    for (i, c) in calls.iter().enumerate() {
        if i == 2 {
            saved = Some(whole.amax_histories());
        }
        let out = run(c, &whole, "a");
        run(&other, &whole, "b");
        if i >= 2 {
            tail.push(out);
        }
    }
    let saved = saved.unwrap();
    let names: Vec<(&str, Role)> = saved.iter().map(|h| (h.layer.as_str(), h.role)).collect();
    assert_eq!(
        names,
        [
            ("a", Role::Weight),
            ("a", Role::Activation),
            ("a", Role::Gradient),
            ("b", Role::Weight),
            ("b", Role::Activation),
            ("b", Role::Gradient),
        ]
    );
    let a_x = &saved[1].amaxes;
    assert_eq!(
        *a_x,
        [amax(&calls[0].x), amax(&calls[1].x)],
        "only a's own casts"
    );

    let resumed = Fp8Context::new(policy);
    resumed.restore_amax_histories(saved);
    run(&other, &resumed, "b");
    let again: Vec<_> = calls[2..]
        .iter()
        .map(|c| {
            let out = run(c, &resumed, "a");
            run(&other, &resumed, "b");
            out
        })
        .collect();
    // `b` ran one extra call after the restore: only `a`'s outputs must match.
    assert_eq!(again, tail);
}

#[test]
fn frozen_histories_are_used_and_left_unchanged() {
    let (a, b) = (call(1, 1.0, 1.0, 1e-3), call(2, 64.0, 1.0, 1e-3));
    let context = Fp8Context::new(delayed(4, AmaxCompute::Max));
    run(&a, &context, "l");
    let before = context.amax_histories();
    let frozen = {
        let _frozen = context.freeze_amax_histories();
        run(&b, &context, "l")
    };
    assert_eq!(context.amax_histories(), before);
    let want = [amax(&a.x), amax(&a.w), amax(&a.g)];
    let want_biases = [
        amax_bias(want[0], E4, 0).unwrap(),
        amax_bias(want[1], E4, 0).unwrap(),
        amax_bias(want[2], E5, DEFAULT_GRADIENT_MARGIN).unwrap(),
    ];
    assert_eq!(frozen, reference(&b, want_biases));
    // Unfrozen again: the next call adds to the history.
    run(&b, &context, "l");
    let layer = LayerId::Named("l".into());
    assert_eq!(
        context.amax_history(&layer, Role::Activation),
        [amax(&a.x), amax(&b.x)]
    );
}

/// With `cache_weights` off the weight is cast again for dX: with the bias its forward cast
/// used, not the one of the history its forward has just extended (here 4x larger).
#[test]
fn a_weight_cast_again_for_dx_takes_its_forward_bias() {
    let (a, b) = (call(1, 1.0, 1.0, 1e-3), call(2, 1.0, 4.0, 1e-3));
    let mut outputs = Vec::new();
    for cache_weights in [true, false] {
        let policy = Fp8Policy {
            cache_weights,
            ..delayed(4, AmaxCompute::Max)
        };
        let context = Fp8Context::new(policy);
        run(&a, &context, "l");
        outputs.push(run(&b, &context, "l"));
    }
    assert_eq!(outputs[0], outputs[1]);
}

#[test]
#[should_panic(expected = "fp8-delayed needs named layers")]
fn anonymous_layers_refuse_delayed_scaling() {
    let _guard = fp8_backend::install(delayed(4, AmaxCompute::Max));
}
