//! Anonymous FP8 layers: a `burn::nn::Linear` (Burn's `linear`) on `Autodiff<Fp8<B>>` under
//! the thread-local FP8-AMAX policy. Each of its three GEMMs sees exactly the formats of
//! docs/design.md ("The decorator"), a plain matmul passes through, statistics name the layer
//! (by forward ordinal), the GEMM and the role, a non-finite amax is reported instead of turned
//! into a bias, and policies are per thread.
//!
//! The expected values are computed independently of the decorator: operands quantized on the
//! host with the scalar reference (`amax_bias` + `quantize_scaled`), then multiplied by plain
//! ndarray matmuls (the same GEMM routine, so the comparison is bit for bit).

use burn::backend::{Autodiff, NdArray};
use burn::tensor::module::linear;
use burn::tensor::{Tensor, TensorData};
use fp8_backend::{
    amax_bias, take_report, with_policy, with_policy_and_stats, Fp8, Fp8Family, Fp8Format,
    Fp8Policy, LayerId, LinearOp, Role, DEFAULT_GRADIENT_MARGIN,
};

use crate::common::{bits, q, values};

/// The forward ordinal of an anonymous layer (every record here is from pass 0).
fn ordinal(layer: &LayerId) -> u32 {
    match layer {
        LayerId::Ordinal { pass: 0, index } => *index,
        other => panic!("expected an ordinal of pass 0, got {other:?}"),
    }
}

type Ad = Autodiff<Fp8<NdArray>>;
type Plain = NdArray;

const IN: usize = 6;
const OUT: usize = 4;
const ROWS: usize = 3;

fn plain(v: &[f32], shape: [usize; 2]) -> Tensor<Plain, 2> {
    Tensor::from_data(TensorData::new(v.to_vec(), shape), &Default::default())
}

struct Setup {
    x: Vec<f32>,
    w: Vec<f32>,
    b: Vec<f32>,
    /// The upstream gradient dL/dY: the loss is sum(Y * G), so dY = G exactly.
    g: Vec<f32>,
}

fn setup() -> Setup {
    Setup {
        x: values(ROWS * IN, 1, 1.0),
        w: values(IN * OUT, 2, 0.1),
        b: values(OUT, 3, 0.5),
        g: values(ROWS * OUT, 4, 1e-3),
    }
}

/// Runs forward and backward on the decorator: (y, dx, dw, db).
fn run_decorated(s: &Setup) -> (Vec<u32>, Vec<u32>, Vec<u32>, Vec<u32>) {
    let d = Default::default();
    let x = Tensor::<Ad, 2>::from_data(TensorData::new(s.x.clone(), [ROWS, IN]), &d).require_grad();
    let w = Tensor::<Ad, 2>::from_data(TensorData::new(s.w.clone(), [IN, OUT]), &d).require_grad();
    let b = Tensor::<Ad, 1>::from_data(TensorData::new(s.b.clone(), [OUT]), &d).require_grad();
    let g = Tensor::<Ad, 2>::from_data(TensorData::new(s.g.clone(), [ROWS, OUT]), &d);
    let y = linear(x.clone(), w.clone(), Some(b.clone()));
    let grads = (y.clone() * g).sum().backward();
    (
        bits(y.inner()),
        bits(x.grad(&grads).unwrap()),
        bits(w.grad(&grads).unwrap()),
        bits(b.grad(&grads).unwrap()),
    )
}

#[test]
fn three_gemms_see_e4_weights_and_activations_and_e5_gradients() {
    let s = setup();
    let family = Fp8Family::Graphcore;
    let (e4, e5) = (family.e4(), family.e5());
    let (y, dx, dw, db) = with_policy(Fp8Policy::amax(), || run_decorated(&s));

    let qx = plain(&q(&s.x, e4, 0), [ROWS, IN]);
    let qw = plain(&q(&s.w, e4, 0), [IN, OUT]);
    let qg = plain(&q(&s.g, e5, DEFAULT_GRADIENT_MARGIN), [ROWS, OUT]);
    let b = Tensor::<Plain, 1>::from_data(TensorData::new(s.b.clone(), [OUT]), &Default::default());

    let want_y = linear(qx.clone(), qw.clone(), Some(b));
    assert_eq!(y, bits(want_y), "forward: q_E4(x) @ q_E4(W) + b");
    let want_dx = qg.clone().matmul(qw.transpose());
    assert_eq!(dx, bits(want_dx), "dX = q_E5(dY) @ q_E4(W)^T");
    let want_dw = qx.transpose().matmul(qg);
    assert_eq!(dw, bits(want_dw), "dW = q_E4(X)^T @ q_E5(dY)");
    let want_db = plain(&s.g, [ROWS, OUT]).sum_dim(0).reshape([OUT]);
    assert_eq!(
        db,
        bits(want_db),
        "bias gradient: the unquantized f32 sum of dY"
    );

    // The check can fail: E4 for the gradient (wrong format) gives a different dX.
    let wrong_dx = plain(&q(&s.g, e4, DEFAULT_GRADIENT_MARGIN), [ROWS, OUT])
        .matmul(plain(&q(&s.w, e4, 0), [IN, OUT]).transpose());
    assert_ne!(
        dx,
        bits(wrong_dx),
        "test data does not tell E4 from E5 gradients"
    );
    // ... and FP8 off differs from FP8 on.
    let (y_off, ..) = with_policy(Fp8Policy::off(), || run_decorated(&s));
    assert_ne!(y, y_off, "test data does not tell FP8 from f32");
}

#[test]
fn plain_matmul_passes_through_untouched() {
    let s = setup();
    let d = Default::default();
    let run = |s: &Setup| {
        let x =
            Tensor::<Ad, 2>::from_data(TensorData::new(s.x.clone(), [ROWS, IN]), &d).require_grad();
        let w =
            Tensor::<Ad, 2>::from_data(TensorData::new(s.w.clone(), [IN, OUT]), &d).require_grad();
        let y = x.clone().matmul(w.clone());
        let grads = y.clone().sum().backward();
        (
            bits(y.inner()),
            bits(x.grad(&grads).unwrap()),
            bits(w.grad(&grads).unwrap()),
        )
    };
    let on = with_policy_and_stats(Fp8Policy::amax(), || {
        let r = run(&s);
        assert!(take_report().records.is_empty(), "a matmul was quantized");
        r
    });
    let off = with_policy(Fp8Policy::off(), || run(&s));
    assert_eq!(on, off);
}

#[test]
fn statistics_name_layer_gemm_and_role() {
    let s = setup();
    let report = with_policy_and_stats(Fp8Policy::amax(), || {
        run_decorated(&s);
        take_report()
    });
    let keys: Vec<(u32, LinearOp, Role)> = report
        .records
        .iter()
        .map(|r| (ordinal(&r.layer), r.op, r.role))
        .collect();
    assert_eq!(
        keys,
        vec![
            (0, LinearOp::Forward, Role::Activation),
            (0, LinearOp::Forward, Role::Weight),
            (0, LinearOp::BackwardX, Role::Gradient),
            (0, LinearOp::BackwardX, Role::Weight),
            (0, LinearOp::BackwardWeight, Role::Activation),
            (0, LinearOp::BackwardWeight, Role::Gradient),
        ]
    );
    let amax = |v: &[f32]| v.iter().fold(0f32, |m, x| m.max(x.abs()));
    let grad = report.records[2].stats;
    assert_eq!(grad.amax, amax(&s.g));
    assert_eq!(
        grad.bias,
        amax_bias(amax(&s.g), Fp8Format::E5M2Fnuz, DEFAULT_GRADIENT_MARGIN).unwrap()
    );
    assert_eq!(grad.numel, ROWS * OUT);
    // The same tensor quantized twice gives the same figures (the quantization is deterministic).
    assert_eq!(report.records[1].stats, report.records[3].stats);
    assert!(report.non_finite.is_empty());
    // The report was handed over: the next one starts empty.
    assert_eq!(with_policy(Fp8Policy::amax(), take_report).records.len(), 0);
}

#[test]
fn layers_are_numbered_in_forward_order_also_in_the_backward() {
    // Three layers of different widths: 6 -> 5 -> 7 -> 2. Each record's numel identifies its layer.
    let dims = [6usize, 5, 7, 2];
    let d = Default::default();
    let report = with_policy_and_stats(Fp8Policy::amax(), || {
        let mut h = Tensor::<Ad, 2>::from_data(
            TensorData::new(values(2 * dims[0], 9, 1.0), [2, dims[0]]),
            &d,
        );
        let mut ws = Vec::new();
        for (l, pair) in dims.windows(2).enumerate() {
            let w = Tensor::<Ad, 2>::from_data(
                TensorData::new(
                    values(pair[0] * pair[1], 10 + l as u32, 0.3),
                    [pair[0], pair[1]],
                ),
                &d,
            )
            .require_grad();
            h = linear(h, w.clone(), None).tanh();
            ws.push(w);
        }
        h.sum().backward();
        take_report()
    });
    for r in &report.records {
        if r.role == Role::Weight {
            let l = ordinal(&r.layer) as usize;
            assert_eq!(
                r.stats.numel,
                dims[l] * dims[l + 1],
                "weight record {r:?} has the wrong layer"
            );
        }
    }
    // Layer 0's input needs no gradient: it has no dX, only dW.
    assert!(!report
        .records
        .iter()
        .any(|r| ordinal(&r.layer) == 0 && r.op == LinearOp::BackwardX));
    assert!(report
        .records
        .iter()
        .any(|r| ordinal(&r.layer) == 0 && r.op == LinearOp::BackwardWeight));
    assert_eq!(report.records.len(), 3 * 2 + 2 * 4 + 2);
}

#[test]
fn non_finite_amax_is_reported_not_turned_into_a_bias() {
    let mut s = setup();
    s.x[4] = f32::NAN;
    let (y, report) = with_policy(Fp8Policy::amax(), || {
        let r = run_decorated(&s);
        (r.0, take_report())
    });
    assert!(
        y.iter().any(|b| f32::from_bits(*b).is_nan()),
        "NaN must propagate"
    );
    // Statistics are off: the event is recorded anyway, naming layer, GEMM and role.
    let ev = report.non_finite.first().expect("a non-finite event");
    assert_eq!(
        (ordinal(&ev.layer), ev.op, ev.role),
        (0, LinearOp::Forward, Role::Activation)
    );
    assert!(ev.amax.is_nan());
}

#[test]
fn policies_are_per_thread() {
    let s = setup();
    let on = with_policy(Fp8Policy::amax(), || run_decorated(&s));
    let off = with_policy(Fp8Policy::off(), || run_decorated(&s));
    let handles: Vec<_> = (0..8)
        .map(|i| {
            let s = setup();
            std::thread::spawn(move || {
                let p = if i % 2 == 0 {
                    Fp8Policy::amax()
                } else {
                    Fp8Policy::off()
                };
                (i, with_policy(p, || run_decorated(&s)))
            })
        })
        .collect();
    for h in handles {
        let (i, r) = h.join().unwrap();
        assert_eq!(
            r,
            if i % 2 == 0 { on.clone() } else { off.clone() },
            "thread {i}"
        );
    }
    // A thread with no policy installed runs with FP8 off.
    assert_eq!(run_decorated(&s), off);
}
