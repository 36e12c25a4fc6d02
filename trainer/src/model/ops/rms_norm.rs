//! RMSNorm over the last dimension (`LlamaRMSNorm`: `w * x / sqrt(mean(x^2) + eps)`, no mean
//! subtracted, no bias), as one pass with its own autodiff node.
//!
//! Composed from Burn's ops it is a square, a mean, an add, a square root, a division and a
//! broadcast multiply, each allocating and kept for the backward. Here the forward keeps its
//! input and one number a row (`1 / sqrt(mean(x^2) + eps)`), and the backward is one pass in
//! place over the incoming gradient. The mean of squares and the weight gradient's sums over
//! rows are accumulated in f64: the result differs from the composed op only in rounding
//! (measured in the test below).

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

use super::host_result;
use crate::host::{from_host, HostTensors};

/// Rows per rayon task in the backward (each task sums its own weight gradient).
const ROWS: usize = 32;

/// Backends that run an RMSNorm as one pass; `Err` hands the inputs back to a caller that must
/// compose it from Burn's ops.
pub trait FusedRmsNorm: Backend {
    /// RMSNorm of `x` over its last dimension (of `weight`'s length).
    #[allow(clippy::type_complexity)]
    fn fused_rms_norm(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        eps: f64,
    ) -> Result<FloatTensor<Self>, (FloatTensor<Self>, FloatTensor<Self>)>;
}

/// The normalised rows and each row's `1 / sqrt(mean(x^2) + eps)`.
fn rms_norm(x: &[f32], w: &[f32], eps: f64) -> (Vec<f32>, Vec<f32>) {
    let c = w.len();
    let rows = x.len() / c;
    let (mut y, mut rstd) = (vec![0f32; x.len()], vec![0f32; rows]);
    y.par_chunks_mut(c)
        .zip(x.par_chunks(c))
        .zip(rstd.par_iter_mut())
        .for_each(|((y, x), rstd)| {
            let ms = x.iter().map(|&v| f64::from(v) * f64::from(v)).sum::<f64>() / c as f64;
            let r = (1.0 / (ms + eps).sqrt()) as f32;
            for ((y, &x), &w) in y.iter_mut().zip(x).zip(w) {
                // `transformers`' order: the normalised value first, then the weight.
                *y = w * (x * r);
            }
            *rstd = r;
        });
    (y, rstd)
}

/// Turns `dy` into `dx` in place; returns the weight's gradient.
/// `dx = r (g - xhat mean(g xhat))` with `g = dy w`, `xhat = x r`; `dw = sum(dy xhat)`.
fn rms_norm_backward(x: &[f32], w: &[f32], rstd: &[f32], dy: &mut [f32]) -> Vec<f32> {
    let c = w.len();
    let dw = dy
        .par_chunks_mut(c * ROWS)
        .zip(x.par_chunks(c * ROWS))
        .enumerate()
        .fold(
            || vec![0f64; c],
            |mut dw, (k, (dy, x))| {
                for (r, (dy, x)) in dy.chunks_mut(c).zip(x.chunks(c)).enumerate() {
                    let rs = rstd[k * ROWS + r];
                    let mut sum_gx = 0f64;
                    for i in 0..c {
                        let xhat = x[i] * rs;
                        sum_gx += f64::from(dy[i] * w[i] * xhat);
                        dw[i] += f64::from(dy[i] * xhat);
                    }
                    let mean_gx = (sum_gx / c as f64) as f32;
                    for i in 0..c {
                        let xhat = x[i] * rs;
                        dy[i] = rs * (dy[i] * w[i] - xhat * mean_gx);
                    }
                }
                dw
            },
        )
        .reduce(
            || vec![0f64; c],
            |mut a, b| {
                a.iter_mut().zip(b).for_each(|(a, b)| *a += b);
                a
            },
        );
    dw.into_iter().map(|v| v as f32).collect()
}

fn checked_width<B: Backend>(x: &FloatTensor<B>, weight: &FloatTensor<B>) -> usize {
    let (shape, c) = (x.shape(), weight.shape().num_elements());
    assert_eq!(shape[shape.num_dims() - 1], c, "RMSNorm width");
    c
}

impl<B: HostTensors + Fp8Kernels> FusedRmsNorm for Fp8<B> {
    fn fused_rms_norm(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        eps: f64,
    ) -> Result<FloatTensor<Self>, (FloatTensor<Self>, FloatTensor<Self>)> {
        checked_width::<B>(&x, &weight);
        if let (Some(xs), Some(w)) = (B::host_slice(&x), B::host_slice(&weight)) {
            let (y, _) = rms_norm(xs, w, eps);
            return Ok(host_result::<B>(y, &x));
        }
        match B::device_rms_norm(&x, &weight, eps) {
            Some([y, _]) => Ok(y),
            None => Err((x, weight)),
        }
    }
}

#[derive(Debug)]
struct RmsNormBackward;

/// Each row's `1 / sqrt(mean(x^2) + eps)`, kept for the backward: in host memory for the host
/// pass, a tensor for the device kernels.
#[derive(Debug, Clone)]
enum Rstd<B: Backend> {
    Host(Vec<f32>),
    Device(FloatTensor<B>),
}

impl<B: HostTensors + Fp8Kernels> Backward<Fp8<B>, 2> for RmsNormBackward {
    /// The input, the weight, and each row's `1 / sqrt(mean(x^2) + eps)`.
    type State = (FloatTensor<B>, FloatTensor<B>, Rstd<B>);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [x_node, w_node] = ops.parents;
        let upstream = grads.consume::<Fp8<B>>(&ops.node);
        let (x, weight, rstd) = ops.state;
        let [dx, dw] = match rstd {
            Rstd::Host(rstd) => {
                let mut grad = B::host_exclusive(upstream).expect("a host tensor");
                let dw = rms_norm_backward(
                    B::host_slice(&x).expect("a host tensor"),
                    B::host_slice(&weight).expect("a host tensor"),
                    &rstd,
                    B::host_mut(&mut grad),
                );
                let c = dw.len();
                [grad, from_host::<B>(dw, vec![c], &B::float_device(&x))]
            }
            Rstd::Device(rstd) => B::device_rms_norm_backward(&x, &weight, &rstd, upstream),
        };
        if let Some(node) = x_node {
            grads.register::<Fp8<B>>(node.id, dx);
        }
        if let Some(node) = w_node {
            grads.register::<Fp8<B>>(node.id, dw);
        }
    }
}

impl<B: HostTensors + Fp8Kernels, C: CheckpointStrategy> FusedRmsNorm for Autodiff<Fp8<B>, C> {
    fn fused_rms_norm(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        eps: f64,
    ) -> Result<FloatTensor<Self>, (FloatTensor<Self>, FloatTensor<Self>)> {
        checked_width::<B>(&x.primitive, &weight.primitive);
        let (y, rstd) = if let (Some(xs), Some(w)) = (
            B::host_slice(&x.primitive),
            B::host_slice(&weight.primitive),
        ) {
            let (y, rstd) = rms_norm(xs, w, eps);
            (host_result::<B>(y, &x.primitive), Rstd::Host(rstd))
        } else {
            match B::device_rms_norm(&x.primitive, &weight.primitive, eps) {
                Some([y, rstd]) => (y, Rstd::Device(rstd)),
                None => return Err((x, weight)),
            }
        };
        Ok(
            match RmsNormBackward
                .prepare::<C>([x.node.clone(), weight.node.clone()])
                .compute_bound()
                .stateful()
            {
                OpsKind::Tracked(prep) => prep.finish((x.primitive, weight.primitive, rstd), y),
                OpsKind::UnTracked(prep) => prep.finish(y),
            },
        )
    }
}

/// RMSNorm composed from Burn's ops, as `LlamaRMSNorm` computes it: the reference of the fused
/// op, and the path of backends without it.
pub fn composed<B: Backend, const D: usize>(
    x: burn::Tensor<B, D>,
    weight: burn::Tensor<B, 1>,
    eps: f64,
) -> burn::Tensor<B, D> {
    let ms = x.clone().powi_scalar(2).mean_dim(D - 1);
    let x = x * (ms + eps).sqrt().recip();
    x * weight.unsqueeze()
}

#[cfg(test)]
mod tests {
    use burn::backend::{Flex, NdArray};
    use burn::tensor::Tensor;

    use super::*;
    use crate::model::ops::test_util::*;

    #[test]
    fn fused_rms_norm_equals_the_composed_one() {
        rms_norm_case::<Flex>();
        rms_norm_case::<NdArray<f32>>();
    }

    fn rms_norm_case<B: HostTensors + Fp8Kernels>() {
        // 70 rows: more than one backward task of ROWS rows, the last one partial.
        let (rows, c, eps) = (70, 24, 1e-5);
        let x = || {
            let v: Vec<f32> = values(rows * c, 3).iter().map(|v| v * 0.7 + 0.3).collect();
            param::<Ad<B>, 3>(v, [2, rows / 2, c]).require_grad()
        };
        let w = || param::<Ad<B>, 1>(values(c, 4), [c]).require_grad();
        let (xa, wa) = (x(), w());
        let (xb, wb) = (x(), w());
        let fused = float::<Ad<B>, 3>(
            Ad::<B>::fused_rms_norm(
                xa.clone().into_primitive().tensor(),
                wa.clone().into_primitive().tensor(),
                eps,
            )
            .unwrap_or_else(|_| panic!("a host backend")),
        );
        let reference: Tensor<Ad<B>, 3> = composed(xb.clone(), wb.clone(), eps);
        let ga = weighted_sum(fused.clone(), 6).backward();
        let gb = weighted_sum(reference.clone(), 6).backward();
        check("rms norm", &host(fused), &host(reference));
        check(
            "rms norm dx",
            &host(xa.grad(&ga).unwrap()),
            &host(xb.grad(&gb).unwrap()),
        );
        check(
            "rms norm dw",
            &host(wa.grad(&ga).unwrap()),
            &host(wb.grad(&gb).unwrap()),
        );
    }
}
