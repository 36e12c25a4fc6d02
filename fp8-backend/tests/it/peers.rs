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
use fp8_backend::{
    fp8_linear, CollectiveAmax, Fp8, Fp8Context, Fp8Policy, LayerId, Precision, Role,
};

use crate::common::values;

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

/// The layer's name (its amax histories are kept under it).
const LAYER: &str = "h.0.mlp.c_fc";

/// (y rows, dx rows, dw) of `rows` of the batch through one named FP8 layer, after `steps`
/// steps (step k's input is the batch's scaled by 4^-k: under fp8-delayed the second step's
/// bias comes from the first step's amax in the history, not from its own).
fn run(b: &Batch, rows: std::ops::Range<usize>, context: &Fp8Context, steps: u32) -> [Vec<f32>; 3] {
    let mut out = None;
    for step in 0..steps {
        out = Some(step_of(b, rows.clone(), context, 0.25f32.powi(step as i32)));
    }
    out.expect("at least one step")
}

fn step_of(
    b: &Batch,
    rows: std::ops::Range<usize>,
    context: &Fp8Context,
    scale: f32,
) -> [Vec<f32>; 3] {
    let device = FlexDevice;
    let n = rows.len();
    let x: Vec<f32> = b.x[rows.start * IN..rows.end * IN]
        .iter()
        .map(|v| v * scale)
        .collect();
    let x = Tensor::<Ad, 2>::from_data(TensorData::new(x, [n, IN]), &device).require_grad();
    let w =
        Tensor::<Ad, 2>::from_data(TensorData::new(b.w.clone(), [IN, OUT]), &device).require_grad();
    let g = Tensor::<Ad, 2>::from_data(
        TensorData::new(b.g[rows.start * OUT..rows.end * OUT].to_vec(), [n, OUT]),
        &device,
    );
    let y = fp8_linear(x.clone(), w.clone(), None, &context.site(LAYER));
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

/// What a run leaves: the last step's (y, dx, dw) and the layer's activation and gradient amax
/// histories.
type Outcome = ([Vec<f32>; 3], [Vec<f32>; 2]);

fn outcome(b: &Batch, rows: std::ops::Range<usize>, context: &Fp8Context, steps: u32) -> Outcome {
    let results = run(b, rows, context, steps);
    let layer = LayerId::Named(LAYER.into());
    let history = |role| context.amax_history(&layer, role);
    (
        results,
        [history(Role::Activation), history(Role::Gradient)],
    )
}

/// Each peer's outcome, run on threads registered with burn-collective; `reduce`: whether the
/// peers' contexts carry the amax reducer.
fn peers(b: &Arc<Batch>, policy: &Fp8Policy, steps: u32, reduce: bool) -> Vec<Outcome> {
    reset_collective::<Flex>();
    let handles: Vec<_> = (0..PEERS)
        .map(|peer| {
            let (b, policy) = (b.clone(), policy.clone());
            thread::spawn(move || {
                let config = CollectiveConfig::default().with_num_devices(PEERS);
                register::<Flex>(PeerId::from(peer as u32), FlexDevice, config)
                    .expect("registered");
                let context = Fp8Context::new(policy);
                if reduce {
                    let reducer = CollectiveAmax::<Flex>::new(peer, PEERS, FlexDevice);
                    context.set_amax_reducer(Some(Arc::new(reducer)));
                }
                let share = ROWS / PEERS;
                outcome(&b, peer * share..(peer + 1) * share, &context, steps)
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

/// Compares the peers' results with one device's: each peer's y and dx rows against the same
/// rows of the whole batch's, relative to those rows' own largest value (the first peer's rows
/// are the small ones), and dw summed over the peers against the whole batch's.
fn relative_differences(one: &[Vec<f32>; 3], parts: &[Outcome]) -> [f32; 5] {
    let [y, dx, dw] = one;
    let half = ROWS / PEERS;
    let dw_peers: Vec<f32> = (0..dw.len())
        .map(|i| parts.iter().map(|p| p.0[2][i]).sum())
        .collect();
    let rel = |full: &[f32], peer: usize, k: usize, of: usize| {
        let rows = &full[peer * half * k..(peer + 1) * half * k];
        max_diff(rows, &parts[peer].0[of]) / max_abs(rows)
    };
    [
        rel(y, 0, OUT, 0),
        rel(dx, 0, IN, 1),
        rel(y, 1, OUT, 0),
        rel(dx, 1, IN, 1),
        max_diff(dw, &dw_peers) / max_abs(dw),
    ]
}

fn delayed() -> Fp8Policy {
    Fp8Policy::with_mode(Precision::Fp8Delayed)
}

// One test, the runs in sequence: burn-collective's local server is one per process.
#[test]
fn two_peers_with_reduced_amaxes_cast_what_one_device_casts() {
    let b = Arc::new(batch());
    for (policy, steps) in [(Fp8Policy::amax(), 1), (delayed(), 2)] {
        let (one, histories) = outcome(&b, 0..ROWS, &Fp8Context::new(policy.clone()), steps);
        let parts = peers(&b, &policy, steps, true);
        let rel = relative_differences(&one, &parts);
        assert!(
            rel.iter().all(|r| *r <= F32_TOLERANCE),
            "{:?}: y and dx of each peer's rows, dw: relative differences {rel:?}",
            policy.mode
        );
        for (peer, part) in parts.iter().enumerate() {
            // The whole batch's amaxes, on every peer.
            assert_eq!(part.1, histories, "{:?}, peer {peer}", policy.mode);
        }
        if policy.mode == Precision::Fp8Delayed {
            assert_eq!(histories[0].len(), 2, "a history of two steps");
        }
    }

    // Without the reduction, the first peer's small rows get a finer scale of their own and stay
    // normal: large differences in its outputs and input gradients; the second peer's rows set
    // the whole batch's scale and agree either way.
    let (one, _) = outcome(&b, 0..ROWS, &Fp8Context::new(Fp8Policy::amax()), 1);
    let rel = relative_differences(&one, &peers(&b, &Fp8Policy::amax(), 1, false));
    assert!(rel[0] > 1e-2 && rel[1] > 1e-2, "{rel:?}");
    assert!(
        rel[2] <= F32_TOLERANCE && rel[3] <= F32_TOLERANCE,
        "{rel:?}"
    );
}
