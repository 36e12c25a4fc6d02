//! Data-parallel peers (`fp8_backend::peers`): a named FP8 layer run by two peers on half a batch
//! each, their amaxes all-reduced through burn-collective (threads of this process, as the
//! trainer's in-process peers are), casts exactly what one device casts on the whole batch.
//!
//! The batch is built so that the halves' amaxes fall in different binades from the whole's
//! (the second half holds the large rows): without the reduction, the first peer's activations
//! and gradients get other scales, and the test shows that difference too.

use std::sync::Arc;
use std::thread;

use burn::backend::flex::{Flex, FlexDevice};
use burn::backend::Autodiff;
use burn::tensor::{Tensor, TensorData};
use burn_collective::{register, reset_collective, CollectiveConfig, PeerId};
use fp8_backend::{fp8_linear, CollectiveAmax, Fp8, Fp8Context, Fp8Policy};

mod common;
use common::values;

type Ad = Autodiff<Fp8<Flex>>;

const ROWS: usize = 8;
const IN: usize = 16;
const OUT: usize = 8;
const PEERS: usize = 2;

/// Forward and backward results compared between the two set-ups (f32 summation order differs
/// between one GEMM over 8 rows and two over 4, so equality is to f32 rounding: a few ulps of
/// the largest value; an FP8 scale that differs changes values by up to 2^-4 relative).
const F32_TOLERANCE: f32 = 1e-5;

struct Batch {
    x: Vec<f32>,
    w: Vec<f32>,
    /// dL/dY: the loss is sum(Y * G), so dY = G exactly and a peer's dY is its rows of G.
    g: Vec<f32>,
}

fn batch() -> Batch {
    let mut x = values(ROWS * IN, 1, 1.0);
    let mut g = values(ROWS * OUT, 2, 1e-3);
    // The second half's rows are far larger (10^4 for E4's activations, 10^9 for E5's wider
    // range of gradients): their amax sets the whole batch's scale, under which the first half's
    // values fall to FP8's subnormals or to zero (a power-of-two scale alone changes nothing in
    // a cast: only values that leave the normal range differ).
    for v in &mut x[ROWS / 2 * IN..] {
        *v *= 1e4;
    }
    for v in &mut g[ROWS / 2 * OUT..] {
        *v *= 1e9;
    }
    Batch {
        x,
        w: values(IN * OUT, 3, 0.2),
        g,
    }
}

/// (y rows, dx rows, dw) of `rows` of the batch through one named FP8-AMAX layer.
fn run(b: &Batch, rows: std::ops::Range<usize>, context: &Fp8Context) -> [Vec<f32>; 3] {
    let device = FlexDevice;
    let n = rows.len();
    let x = Tensor::<Ad, 2>::from_data(
        TensorData::new(b.x[rows.start * IN..rows.end * IN].to_vec(), [n, IN]),
        &device,
    )
    .require_grad();
    let w =
        Tensor::<Ad, 2>::from_data(TensorData::new(b.w.clone(), [IN, OUT]), &device).require_grad();
    let g = Tensor::<Ad, 2>::from_data(
        TensorData::new(b.g[rows.start * OUT..rows.end * OUT].to_vec(), [n, OUT]),
        &device,
    );
    let y = fp8_linear(x.clone(), w.clone(), None, &context.site("h.0.mlp.c_fc"));
    let grads = (y.clone() * g).sum().backward();
    [
        host(y.inner()),
        host(x.grad(&grads).unwrap()),
        host(w.grad(&grads).unwrap()),
    ]
}

fn host(t: Tensor<Fp8<Flex>, 2>) -> Vec<f32> {
    t.into_data().convert::<f32>().into_vec::<f32>().unwrap()
}

/// Each peer's results, run on threads registered with burn-collective; `reduce`: whether the
/// peers' contexts carry the amax reducer.
fn peers(b: &Arc<Batch>, reduce: bool) -> Vec<[Vec<f32>; 3]> {
    reset_collective::<Flex>();
    let handles: Vec<_> = (0..PEERS)
        .map(|peer| {
            let b = b.clone();
            thread::spawn(move || {
                let config = CollectiveConfig::default().with_num_devices(PEERS);
                register::<Flex>(PeerId::from(peer as u32), FlexDevice, config)
                    .expect("registered");
                let context = Fp8Context::new(Fp8Policy::amax());
                if reduce {
                    let reducer = CollectiveAmax::<Flex>::new(peer, PEERS, FlexDevice);
                    context.set_amax_reducer(Some(Arc::new(reducer)));
                }
                let share = ROWS / PEERS;
                run(&b, peer * share..(peer + 1) * share, &context)
            })
        })
        .collect();
    let out = handles.into_iter().map(|h| h.join().unwrap()).collect();
    reset_collective::<Flex>();
    out
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max)
}

fn max_abs(a: &[f32]) -> f32 {
    a.iter().fold(0.0f32, |m, v| m.max(v.abs()))
}

#[test]
fn two_peers_with_reduced_amaxes_cast_what_one_device_casts() {
    let b = Arc::new(batch());
    let [y, dx, dw] = run(&b, 0..ROWS, &Fp8Context::new(Fp8Policy::amax()));
    let half = ROWS / PEERS;

    // One test, two runs in sequence: burn-collective's local server is one per process.
    for reduce in [true, false] {
        let parts = peers(&b, reduce);
        // Each peer's y and dx rows against the same rows of the whole batch's, relative to
        // those rows' own largest value (the first peer's rows are the small ones); dw summed
        // over the peers against the whole batch's.
        let dw_peers: Vec<f32> = (0..dw.len())
            .map(|i| parts.iter().map(|p| p[2][i]).sum())
            .collect();
        let rel = |full: &[f32], peer: usize, k: usize, of: usize| {
            let rows = &full[peer * half * k..(peer + 1) * half * k];
            max_diff(rows, &parts[peer][of]) / max_abs(rows)
        };
        let rel = [
            rel(&y, 0, OUT, 0),
            rel(&dx, 0, IN, 1),
            rel(&y, 1, OUT, 0),
            rel(&dx, 1, IN, 1),
            max_diff(&dw, &dw_peers) / max_abs(&dw),
        ];
        if reduce {
            assert!(
                rel.iter().all(|r| *r <= F32_TOLERANCE),
                "y and dx of each peer's rows, dw: relative differences {rel:?}"
            );
        } else {
            // The first peer's small rows get a finer scale of their own and stay normal: large
            // differences in its outputs and input gradients (what the reduction removes, above); the second
            // peer's rows set the whole batch's scale and agree either way.
            assert!(rel[0] > 1e-2 && rel[1] > 1e-2, "{rel:?}");
            assert!(
                rel[2] <= F32_TOLERANCE && rel[3] <= F32_TOLERANCE,
                "{rel:?}"
            );
        }
    }
}
