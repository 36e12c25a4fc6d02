//! Layer norm over the last dimension (`torch.nn.LayerNorm`: biased variance, weight and
//! bias), as one pass with its own autodiff node.
//!
//! Composed from Burn's ops it is a `var_mean` plus five broadcasts, each allocating, with every
//! intermediate kept for the backward. Here the forward is one pass that keeps its input and two
//! numbers a row (mean and `1 / sqrt(var + eps)`), and the backward one pass in place over the
//! incoming gradient. Row statistics and the weight and bias gradients' sums over rows are
//! accumulated in f64: the result differs from the composed op only in rounding (measured in
//! the test below).

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

/// Layer-norm rows per rayon task in the backward (each task sums its own weight and bias
/// gradients).
const LN_ROWS: usize = 32;

/// A layer norm's inputs, returned by a backend that cannot fuse it.
pub type LayerNormInputs<B> = (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>);

/// Backends that run a layer norm as one pass; `Err` hands the inputs back to a caller that
/// must compose it from Burn's ops.
pub trait FusedLayerNorm: Backend {
    /// Layer norm of `x` over its last dimension (of `weight`'s length), biased variance.
    fn fused_layer_norm(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        eps: f64,
    ) -> Result<FloatTensor<Self>, LayerNormInputs<Self>>;
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

fn checked_width<B: Backend>(x: &FloatTensor<B>, weight: &FloatTensor<B>) -> usize {
    let (shape, c) = (x.shape(), weight.shape().num_elements());
    assert_eq!(shape[shape.num_dims() - 1], c, "layer norm width");
    c
}

impl<B: HostTensors + Fp8Kernels> FusedLayerNorm for Fp8<B> {
    fn fused_layer_norm(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        eps: f64,
    ) -> Result<FloatTensor<Self>, LayerNormInputs<Self>> {
        checked_width::<B>(&x, &weight);
        if let (Some(xs), Some(w), Some(b)) = (
            B::host_slice(&x),
            B::host_slice(&weight),
            B::host_slice(&bias),
        ) {
            let (y, _, _) = layer_norm(xs, w, b, eps);
            return Ok(host_result::<B>(y, &x));
        }
        match B::device_layer_norm(&x, &weight, &bias, eps) {
            Some([y, _, _]) => Ok(y),
            None => Err((x, weight, bias)),
        }
    }
}

#[derive(Debug)]
struct LayerNormBackward;

/// Each row's mean and `1 / sqrt(var + eps)`, kept for the backward: in host memory for the
/// host pass, as tensors for the device kernels.
#[derive(Debug, Clone)]
enum RowStats<B: Backend> {
    Host(Vec<f32>, Vec<f32>),
    Device(FloatTensor<B>, FloatTensor<B>),
}

impl<B: HostTensors + Fp8Kernels> Backward<Fp8<B>, 3> for LayerNormBackward {
    /// The input, the weight, and each row's mean and `1 / sqrt(var + eps)`.
    type State = (FloatTensor<B>, FloatTensor<B>, RowStats<B>);

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [x_node, w_node, b_node] = ops.parents;
        let upstream = grads.consume::<Fp8<B>>(&ops.node);
        let (x, weight, stats) = ops.state;
        let [dx, dw, db] = match stats {
            RowStats::Host(mean, rstd) => {
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
                [
                    grad,
                    from_host::<B>(dw, vec![c], &device),
                    from_host::<B>(db, vec![c], &device),
                ]
            }
            RowStats::Device(mean, rstd) => {
                B::device_layer_norm_backward(&x, &weight, &mean, &rstd, upstream)
            }
        };
        if let Some(node) = x_node {
            grads.register::<Fp8<B>>(node.id, dx);
        }
        if let Some(node) = w_node {
            grads.register::<Fp8<B>>(node.id, dw);
        }
        if let Some(node) = b_node {
            grads.register::<Fp8<B>>(node.id, db);
        }
    }
}

impl<B: HostTensors + Fp8Kernels, C: CheckpointStrategy> FusedLayerNorm for Autodiff<Fp8<B>, C> {
    fn fused_layer_norm(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        eps: f64,
    ) -> Result<FloatTensor<Self>, LayerNormInputs<Self>> {
        checked_width::<B>(&x.primitive, &weight.primitive);
        let (y, stats) = if let (Some(xs), Some(w), Some(b)) = (
            B::host_slice(&x.primitive),
            B::host_slice(&weight.primitive),
            B::host_slice(&bias.primitive),
        ) {
            let (y, mean, rstd) = layer_norm(xs, w, b, eps);
            (
                host_result::<B>(y, &x.primitive),
                RowStats::Host(mean, rstd),
            )
        } else {
            match B::device_layer_norm(&x.primitive, &weight.primitive, &bias.primitive, eps) {
                Some([y, mean, rstd]) => (y, RowStats::Device(mean, rstd)),
                None => return Err((x, weight, bias)),
            }
        };
        Ok(
            match LayerNormBackward
                .prepare::<C>([x.node.clone(), weight.node.clone(), bias.node.clone()])
                .compute_bound()
                .stateful()
            {
                OpsKind::Tracked(prep) => prep.finish((x.primitive, weight.primitive, stats), y),
                OpsKind::UnTracked(prep) => prep.finish(y),
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use burn::backend::{Flex, NdArray};
    use burn::tensor::Tensor;

    use super::*;
    use crate::model::ops::test_util::*;

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
}
