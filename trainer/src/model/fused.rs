//! The model's element-wise and row-wise ops as single passes with their own autodiff nodes:
//! GELU (tanh form), layer norm, and the causal softmax of attention scores.
//!
//! Composed from Burn's ops, each is a chain of passes over its tensor, each pass allocating,
//! and autodiff keeps every intermediate for the backward: GELU's tanh form is eight ops
//! (`powf`, two multiplies, an add, `tanh`, ...) forward and as many backward; layer norm is a
//! `var_mean` plus five broadcasts; the attention softmax is a division, a `mask_fill` over an
//! expanded mask, and the five ops of `softmax`, each over `[B, heads, T, T]`. A profile of the
//! training step (see bench/README.md) put these passes, not the GEMMs, at the top of what
//! was left after the GEMMs. Here each forward is one pass that keeps only what its backward
//! needs (GELU: its input; layer norm: its input and two numbers a row; softmax: its output),
//! and each backward is one pass, in place over the incoming gradient.
//!
//! The arithmetic follows PyTorch's (`NewGELUActivation`, `torch.nn.LayerNorm`, `softmax`)
//! formula for formula in f32, with two exceptions that change only rounding: `exp` is
//! [`vmath::exp`] (vectorized, within 1 ulp), and GELU's `0.5 x (1 + tanh(u))` is computed as the
//! equal `x * sigmoid(2u)`. Layer norm's row statistics and the weight and bias gradients' sums
//! over rows are accumulated in f64. Results differ from the composed ops only in rounding
//! (measured in the tests below).
//!
//! On the CPU backends (host slices, see [`crate::host`]); elsewhere [`FusedOps`] declines with
//! `Err(inputs)` and the caller composes the op from Burn's.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::Autodiff;
use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::TensorMetadata;
use fp8_backend::{Fp8, Fp8Kernels};
use rayon::prelude::*;

use super::vmath::{self, Isa};
use crate::host::{from_host, HostTensors};

/// Elements per rayon task in the element-wise passes (small enough to spread over the
/// threads, large enough that a task costs more than its scheduling).
const CHUNK: usize = 16 * 1024;
/// Layer-norm rows per rayon task in the backward (each task sums its own weight and bias
/// gradients).
const LN_ROWS: usize = 32;

/// A layer norm's inputs, returned by a backend that cannot fuse it.
pub type LayerNormInputs<B> = (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>);

/// Backends that run the model's element-wise and row-wise ops as single passes; `Err` hands
/// the inputs back to a caller that must compose the op from Burn's.
pub trait FusedOps: Backend {
    /// `0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))`, element-wise (HF `gelu_new`).
    fn fused_gelu_tanh(x: FloatTensor<Self>) -> Result<FloatTensor<Self>, FloatTensor<Self>>;

    /// Layer norm of `x` over its last dimension (of `weight`'s length), biased variance.
    fn fused_layer_norm(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        eps: f64,
    ) -> Result<FloatTensor<Self>, LayerNormInputs<Self>>;

    /// `softmax(scores / divisor)` over the last dimension of `[.., T, T]` scores, with key
    /// positions after the query's (above the diagonal) at probability exactly 0.
    fn fused_causal_softmax(
        scores: FloatTensor<Self>,
        divisor: f64,
    ) -> Result<FloatTensor<Self>, FloatTensor<Self>>;
}

// ---------------------------------------------------------------------------------------------
// The passes, on slices.

fn gelu_tanh(x: &[f32]) -> Vec<f32> {
    let isa = Isa::best();
    let mut y = vec![0f32; x.len()];
    y.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK))
        .for_each(|(y, x)| vmath::gelu_forward(isa, x, y));
    y
}

/// `g *= d gelu(x) / dx`, in place.
fn gelu_tanh_backward(x: &[f32], g: &mut [f32]) {
    let isa = Isa::best();
    g.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK))
        .for_each(|(g, x)| vmath::gelu_backward(isa, x, g));
}

/// The normalised rows and each row's mean and `1 / sqrt(var + eps)`.
fn layer_norm(x: &[f32], w: &[f32], b: &[f32], eps: f64) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let c = w.len();
    let rows = x.len() / c;
    let (mut y, mut mean, mut rstd) = (vec![0f32; x.len()], vec![0f32; rows], vec![0f32; rows]);
    y.par_chunks_mut(c)
        .zip(x.par_chunks(c))
        .zip(mean.par_iter_mut().zip(rstd.par_iter_mut()))
        .for_each(|((y, x), (mean, rstd))| {
            let m = x.iter().map(|&v| f64::from(v)).sum::<f64>() / c as f64;
            let var = x.iter().map(|&v| (f64::from(v) - m).powi(2)).sum::<f64>() / c as f64;
            let (m, r) = (m as f32, (1.0 / (var + eps).sqrt()) as f32);
            for (((y, &x), &w), &b) in y.iter_mut().zip(x).zip(w).zip(b) {
                *y = (x - m) * r * w + b;
            }
            (*mean, *rstd) = (m, r);
        });
    (y, mean, rstd)
}

/// Turns `dy` into `dx` in place; returns the weight's and the bias's gradients.
fn layer_norm_backward(
    x: &[f32],
    w: &[f32],
    mean: &[f32],
    rstd: &[f32],
    dy: &mut [f32],
) -> (Vec<f32>, Vec<f32>) {
    let c = w.len();
    let zeros = || (vec![0f64; c], vec![0f64; c]);
    let (dw, db) = dy
        .par_chunks_mut(c * LN_ROWS)
        .zip(x.par_chunks(c * LN_ROWS))
        .enumerate()
        .fold(zeros, |(mut dw, mut db), (k, (dy, x))| {
            for (r, (dy, x)) in dy.chunks_mut(c).zip(x.chunks(c)).enumerate() {
                let (m, rs) = (mean[k * LN_ROWS + r], rstd[k * LN_ROWS + r]);
                // dx = rstd (g - mean(g) - xhat mean(g xhat)), g = dy w.
                let (mut sum_g, mut sum_gx) = (0f64, 0f64);
                for i in 0..c {
                    let xhat = (x[i] - m) * rs;
                    let g = dy[i] * w[i];
                    sum_g += f64::from(g);
                    sum_gx += f64::from(g * xhat);
                    dw[i] += f64::from(dy[i] * xhat);
                    db[i] += f64::from(dy[i]);
                }
                let (mean_g, mean_gx) = ((sum_g / c as f64) as f32, (sum_gx / c as f64) as f32);
                for i in 0..c {
                    let xhat = (x[i] - m) * rs;
                    dy[i] = rs * (dy[i] * w[i] - mean_g - xhat * mean_gx);
                }
            }
            (dw, db)
        })
        .reduce(zeros, |(mut dw, mut db), (dw2, db2)| {
            dw.iter_mut().zip(dw2).for_each(|(a, b)| *a += b);
            db.iter_mut().zip(db2).for_each(|(a, b)| *a += b);
            (dw, db)
        });
    let f32s = |v: Vec<f64>| v.into_iter().map(|v| v as f32).collect();
    (f32s(dw), f32s(db))
}

/// Rows of `t` scores; row `r` is query position `r % t`.
fn causal_softmax(x: &[f32], t: usize, divisor: f32) -> Vec<f32> {
    let isa = Isa::best();
    let mut p = vec![0f32; x.len()];
    p.par_chunks_mut(t)
        .zip(x.par_chunks(t))
        .enumerate()
        .for_each(|(r, (p, x))| {
            let visible = r % t + 1;
            let (p, x) = (&mut p[..visible], &x[..visible]);
            let mut max = f32::NEG_INFINITY;
            for (p, &x) in p.iter_mut().zip(x) {
                *p = x / divisor;
                max = max.max(*p);
            }
            let sum = vmath::exp_shifted_sum(isa, p, max);
            p.iter_mut().for_each(|p| *p /= sum);
        });
    p
}

/// Turns the probabilities' gradient `dp` into the scores' in place:
/// `p (dp - sum(p dp)) / divisor`, 0 above the diagonal.
fn causal_softmax_backward(p: &[f32], dp: &mut [f32], t: usize, divisor: f32) {
    dp.par_chunks_mut(t)
        .zip(p.par_chunks(t))
        .enumerate()
        .for_each(|(r, (dp, p))| {
            let visible = r % t + 1;
            let dot: f32 = dp[..visible].iter().zip(p).map(|(d, p)| d * p).sum();
            for (d, &p) in dp[..visible].iter_mut().zip(p) {
                *d = p * (*d - dot) / divisor;
            }
            dp[visible..].fill(0.0);
        });
}

fn square_rows<B: Backend>(scores: &FloatTensor<B>) -> usize {
    let shape = scores.shape();
    let d = shape.num_dims();
    assert!(
        d >= 2 && shape[d - 1] == shape[d - 2],
        "causal softmax takes [.., T, T] scores, got {shape:?}"
    );
    shape[d - 1]
}

fn checked_width<B: Backend>(x: &FloatTensor<B>, weight: &FloatTensor<B>) -> usize {
    let (shape, c) = (x.shape(), weight.shape().num_elements());
    assert_eq!(shape[shape.num_dims() - 1], c, "layer norm width");
    c
}

fn host_result<B: Backend>(values: Vec<f32>, like: &FloatTensor<B>) -> FloatTensor<B> {
    from_host::<B>(values, like.shape().to_vec(), &B::float_device(like))
}

// ---------------------------------------------------------------------------------------------
// Inference: the decorator without autodiff.

impl<B: HostTensors + Fp8Kernels> FusedOps for Fp8<B> {
    fn fused_gelu_tanh(x: FloatTensor<Self>) -> Result<FloatTensor<Self>, FloatTensor<Self>> {
        let Some(values) = B::host_slice(&x) else {
            return Err(x);
        };
        Ok(host_result::<B>(gelu_tanh(values), &x))
    }

    fn fused_layer_norm(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        eps: f64,
    ) -> Result<FloatTensor<Self>, LayerNormInputs<Self>> {
        checked_width::<B>(&x, &weight);
        let (Some(xs), Some(w), Some(b)) = (
            B::host_slice(&x),
            B::host_slice(&weight),
            B::host_slice(&bias),
        ) else {
            return Err((x, weight, bias));
        };
        let (y, _, _) = layer_norm(xs, w, b, eps);
        Ok(host_result::<B>(y, &x))
    }

    fn fused_causal_softmax(
        scores: FloatTensor<Self>,
        divisor: f64,
    ) -> Result<FloatTensor<Self>, FloatTensor<Self>> {
        let t = square_rows::<B>(&scores);
        let Some(values) = B::host_slice(&scores) else {
            return Err(scores);
        };
        Ok(host_result::<B>(
            causal_softmax(values, t, divisor as f32),
            &scores,
        ))
    }
}

// ---------------------------------------------------------------------------------------------
// Training: the backward nodes.

#[derive(Debug)]
struct GeluBackward;

impl<B: HostTensors + Fp8Kernels> Backward<Fp8<B>, 1> for GeluBackward {
    /// The input.
    type State = FloatTensor<B>;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node] = ops.parents;
        let upstream = grads.consume::<Fp8<B>>(&ops.node);
        let Some(node) = node else { return };
        let x = ops.state;
        let mut grad = B::host_exclusive(upstream).expect("a host tensor");
        gelu_tanh_backward(
            B::host_slice(&x).expect("a host tensor"),
            B::host_mut(&mut grad),
        );
        grads.register::<Fp8<B>>(node.id, grad);
    }
}

#[derive(Debug)]
struct LayerNormBackward;

impl<B: HostTensors + Fp8Kernels> Backward<Fp8<B>, 3> for LayerNormBackward {
    /// The input, the weight, and each row's mean and `1 / sqrt(var + eps)`.
    type State = (FloatTensor<B>, FloatTensor<B>, Vec<f32>, Vec<f32>);

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [x_node, w_node, b_node] = ops.parents;
        let upstream = grads.consume::<Fp8<B>>(&ops.node);
        let (x, weight, mean, rstd) = ops.state;
        let mut grad = B::host_exclusive(upstream).expect("a host tensor");
        let (dw, db) = layer_norm_backward(
            B::host_slice(&x).expect("a host tensor"),
            B::host_slice(&weight).expect("a host tensor"),
            &mean,
            &rstd,
            B::host_mut(&mut grad),
        );
        let device = B::float_device(&x);
        let c = dw.len();
        if let Some(node) = x_node {
            grads.register::<Fp8<B>>(node.id, grad);
        }
        if let Some(node) = w_node {
            grads.register::<Fp8<B>>(node.id, from_host::<B>(dw, vec![c], &device));
        }
        if let Some(node) = b_node {
            grads.register::<Fp8<B>>(node.id, from_host::<B>(db, vec![c], &device));
        }
    }
}

#[derive(Debug)]
struct CausalSoftmaxBackward;

impl<B: HostTensors + Fp8Kernels> Backward<Fp8<B>, 1> for CausalSoftmaxBackward {
    /// The probabilities, T, the divisor.
    type State = (FloatTensor<B>, usize, f32);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node] = ops.parents;
        let upstream = grads.consume::<Fp8<B>>(&ops.node);
        let Some(node) = node else { return };
        let (p, t, divisor) = ops.state;
        let mut grad = B::host_exclusive(upstream).expect("a host tensor");
        causal_softmax_backward(
            B::host_slice(&p).expect("a host tensor"),
            B::host_mut(&mut grad),
            t,
            divisor,
        );
        grads.register::<Fp8<B>>(node.id, grad);
    }
}

impl<B: HostTensors + Fp8Kernels, C: CheckpointStrategy> FusedOps for Autodiff<Fp8<B>, C> {
    fn fused_gelu_tanh(x: FloatTensor<Self>) -> Result<FloatTensor<Self>, FloatTensor<Self>> {
        let Some(values) = B::host_slice(&x.primitive) else {
            return Err(x);
        };
        let y = host_result::<B>(gelu_tanh(values), &x.primitive);
        Ok(
            match GeluBackward
                .prepare::<C>([x.node.clone()])
                .compute_bound()
                .stateful()
            {
                OpsKind::Tracked(prep) => prep.finish(x.primitive, y),
                OpsKind::UnTracked(prep) => prep.finish(y),
            },
        )
    }

    fn fused_layer_norm(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        eps: f64,
    ) -> Result<FloatTensor<Self>, LayerNormInputs<Self>> {
        checked_width::<B>(&x.primitive, &weight.primitive);
        let (Some(xs), Some(w), Some(b)) = (
            B::host_slice(&x.primitive),
            B::host_slice(&weight.primitive),
            B::host_slice(&bias.primitive),
        ) else {
            return Err((x, weight, bias));
        };
        let (y, mean, rstd) = layer_norm(xs, w, b, eps);
        let y = host_result::<B>(y, &x.primitive);
        Ok(
            match LayerNormBackward
                .prepare::<C>([x.node.clone(), weight.node.clone(), bias.node.clone()])
                .compute_bound()
                .stateful()
            {
                OpsKind::Tracked(prep) => {
                    prep.finish((x.primitive, weight.primitive, mean, rstd), y)
                }
                OpsKind::UnTracked(prep) => prep.finish(y),
            },
        )
    }

    fn fused_causal_softmax(
        scores: FloatTensor<Self>,
        divisor: f64,
    ) -> Result<FloatTensor<Self>, FloatTensor<Self>> {
        let t = square_rows::<B>(&scores.primitive);
        let Some(values) = B::host_slice(&scores.primitive) else {
            return Err(scores);
        };
        let divisor = divisor as f32;
        let p = host_result::<B>(causal_softmax(values, t, divisor), &scores.primitive);
        Ok(
            match CausalSoftmaxBackward
                .prepare::<C>([scores.node.clone()])
                .compute_bound()
                .stateful()
            {
                OpsKind::Tracked(prep) => prep.finish((p.clone(), t, divisor), p),
                OpsKind::UnTracked(prep) => prep.finish(p),
            },
        )
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use burn::backend::{Autodiff, Flex, NdArray};
    use burn::tensor::activation::{gelu_approximate, softmax};
    use burn::tensor::{Bool, Tensor, TensorData, TensorPrimitive};

    use super::*;

    /// Fused against composed, both f32 in different orders (measured in these tests: at most
    /// 5.2e-7 relative to the largest element, outputs and gradients); a wrong coefficient,
    /// a missing term of a derivative, an unmasked position or an off-by-one row moves them by
    /// 1e-3 or more.
    const FUSED_REL_TOL: f32 = 1e-5;

    pub(crate) type Ad<B> = Autodiff<Fp8<B>>;

    /// max |a - b| relative to max |b|.
    pub(crate) fn rel(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        let scale = b.iter().fold(0f32, |m, x| m.max(x.abs()));
        a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
    }

    /// Deterministic values in about [-4, 4], with a few larger ones.
    fn values(n: usize, seed: usize) -> Vec<f32> {
        (0..n)
            .map(|i| {
                let v = ((i * 7919 + seed * 104_729) % 1000) as f32 / 125.0 - 4.0;
                if i % 13 == 0 {
                    v * 2.5
                } else {
                    v
                }
            })
            .collect()
    }

    pub(crate) fn host<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
        t.into_data().to_vec::<f32>().unwrap()
    }

    fn param<B: Backend, const D: usize>(v: Vec<f32>, shape: [usize; D]) -> Tensor<B, D> {
        Tensor::from_data(TensorData::new(v, shape), &Default::default())
    }

    fn float<B: Backend, const D: usize>(t: FloatTensor<B>) -> Tensor<B, D> {
        Tensor::from_primitive(TensorPrimitive::Float(t))
    }

    /// A weighted sum of the output, so that every element gets its own upstream gradient.
    fn weighted_sum<B: Backend, const D: usize>(y: Tensor<B, D>, seed: usize) -> Tensor<B, 1> {
        let n = y.shape().num_elements();
        let shape: [usize; D] = y.dims();
        (y * param::<B, D>(values(n, seed), shape)).sum()
    }

    fn check(what: &str, fused: &[f32], composed: &[f32]) {
        let r = rel(fused, composed);
        println!("{what}: rel {r:e}");
        assert!(r < FUSED_REL_TOL, "{what} differs by {r:e}");
    }

    #[test]
    fn fused_gelu_equals_the_composed_one() {
        gelu::<Flex>();
        gelu::<NdArray<f32>>();
    }

    fn gelu<B: HostTensors + Fp8Kernels>() {
        let shape = [3, 5, 41];
        let x = || param::<Ad<B>, 3>(values(3 * 5 * 41, 1), shape).require_grad();
        let (a, b) = (x(), x());
        let fused = float::<Ad<B>, 3>(
            Ad::<B>::fused_gelu_tanh(a.clone().into_primitive().tensor()).expect("a host backend"),
        );
        let composed = gelu_approximate(b.clone());
        let grad_a = a.grad(&weighted_sum(fused.clone(), 2).backward()).unwrap();
        let grad_b = b
            .grad(&weighted_sum(composed.clone(), 2).backward())
            .unwrap();
        check("gelu", &host(fused), &host(composed));
        check("gelu grad", &host(grad_a), &host(grad_b));
        // Without autodiff (evaluation) the same values.
        let x = param::<Fp8<B>, 3>(values(3 * 5 * 41, 1), shape);
        let plain = Fp8::<B>::fused_gelu_tanh(x.clone().into_primitive().tensor()).unwrap();
        check(
            "gelu inference",
            &host(float::<Fp8<B>, 3>(plain)),
            &host(gelu_approximate(x)),
        );
    }

    #[test]
    fn fused_layer_norm_equals_the_composed_one() {
        layer_norm_case::<Flex>();
        layer_norm_case::<NdArray<f32>>();
    }

    fn layer_norm_case<B: HostTensors + Fp8Kernels>() {
        // 70 rows: more than one backward task of LN_ROWS rows, the last one partial.
        let (rows, c, eps) = (70, 24, 1e-5);
        let x = || {
            let v: Vec<f32> = values(rows * c, 3).iter().map(|v| v * 0.7 + 0.3).collect();
            param::<Ad<B>, 3>(v, [2, rows / 2, c]).require_grad()
        };
        let w = || param::<Ad<B>, 1>(values(c, 4), [c]).require_grad();
        let b = || param::<Ad<B>, 1>(values(c, 5), [c]).require_grad();
        let (xa, wa, ba) = (x(), w(), b());
        let (xb, wb, bb) = (x(), w(), b());
        let fused = float::<Ad<B>, 3>(
            Ad::<B>::fused_layer_norm(
                xa.clone().into_primitive().tensor(),
                wa.clone().into_primitive().tensor(),
                ba.clone().into_primitive().tensor(),
                eps,
            )
            .unwrap_or_else(|_| panic!("a host backend")),
        );
        let (var, mean) = xb.clone().var_mean_bias(2);
        let composed =
            (xb.clone() - mean) / (var + eps).sqrt() * wb.val_unsqueeze() + bb.val_unsqueeze();
        let ga = weighted_sum(fused.clone(), 6).backward();
        let gb = weighted_sum(composed.clone(), 6).backward();
        check("layer norm", &host(fused), &host(composed));
        check(
            "layer norm dx",
            &host(xa.grad(&ga).unwrap()),
            &host(xb.grad(&gb).unwrap()),
        );
        check(
            "layer norm dw",
            &host(wa.grad(&ga).unwrap()),
            &host(wb.grad(&gb).unwrap()),
        );
        check(
            "layer norm db",
            &host(ba.grad(&ga).unwrap()),
            &host(bb.grad(&gb).unwrap()),
        );
    }

    trait ValUnsqueeze<B: Backend> {
        fn val_unsqueeze(&self) -> Tensor<B, 3>;
    }
    impl<B: Backend> ValUnsqueeze<B> for Tensor<B, 1> {
        fn val_unsqueeze(&self) -> Tensor<B, 3> {
            self.clone().unsqueeze()
        }
    }

    #[test]
    fn fused_causal_softmax_equals_the_masked_composed_one() {
        causal_softmax_case::<Flex>();
        causal_softmax_case::<NdArray<f32>>();
    }

    fn causal_softmax_case<B: HostTensors + Fp8Kernels>() {
        let (b, h, t, divisor) = (2, 3, 9, 2.5);
        let n = b * h * t * t;
        let x = || param::<Ad<B>, 4>(values(n, 7), [b, h, t, t]).require_grad();
        let (xa, xb) = (x(), x());
        let fused = float::<Ad<B>, 4>(
            Ad::<B>::fused_causal_softmax(xa.clone().into_primitive().tensor(), divisor)
                .expect("a host backend"),
        );
        let future = Tensor::<Ad<B>, 2, Bool>::tril_mask([t, t], 0, &Default::default())
            .unsqueeze::<4>()
            .expand([b, h, t, t]);
        let composed = softmax((xb.clone() / divisor).mask_fill(future, f32::MIN), 3);
        let ga = xa.grad(&weighted_sum(fused.clone(), 8).backward()).unwrap();
        let gb = xb
            .grad(&weighted_sum(composed.clone(), 8).backward())
            .unwrap();
        let (p, q) = (host(fused), host(composed));
        check("causal softmax", &p, &q);
        check("causal softmax grad", &host(ga), &host(gb));
        // Exactly 0 above the diagonal, as the composed op's f32::MIN fill gives.
        for (i, v) in p.iter().enumerate() {
            let (row, col) = ((i / t) % t, i % t);
            if col > row {
                assert_eq!(*v, 0.0, "position {i} is in the future");
            }
        }
    }
}
