//! Causal self-attention from the `c_attn` output as one op with its own backward:
//! `qkv [B, T, 3C] -> y [B, T, C]`, `y_h = softmax(mask(Q_h K_h^T / divisor)) V_h` per head.
//!
//! Composed from Burn's ops, attention splits `qkv` with three `narrow`s, copies each into
//! `[B, heads, T, head_dim]`, runs two batched matmuls around a division, a `mask_fill` and a
//! softmax over `[B, heads, T, T]`, and copies the heads back side by side; its backward
//! zero-pads each head gradient to the full `[B, T, 3C]` (the `narrow` backward) and adds the
//! three. Here every (batch, head) pair is one task that reads its Q, K and V in place from
//! `qkv` (strided GEMMs), keeps its `T x T` scores in a scratch buffer, and writes its slice of
//! `y`; the backward recomputes the probabilities from the saved row log-sum-exps (as flash
//! attention does: no `T x T` tensor is kept between forward and backward) and writes each
//! head's dQ, dK, dV straight into its columns of one `[B, T, 3C]` gradient.
//!
//! The arithmetic is `GPT2Attention`'s eager path: scores divided by `divisor`, future keys at
//! probability exactly 0, f32 throughout. GEMMs are `gemm`'s (the crate burn-flex uses), one
//! thread per task, the tasks spread over rayon's threads.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::Autodiff;
use burn::tensor::ops::FloatTensor;
use burn::tensor::TensorMetadata;
use fp8_backend::{Fp8, Fp8Kernels};
use rayon::prelude::*;

use super::device::AttentionLayout;
use super::vmath::{self, Isa};
use crate::host::{from_host, HostTensors};
use crate::model::segments::{row_blocks, Segments};

/// The shape of one attention call.
#[derive(Clone, Copy, Debug)]
struct Dims {
    batch: usize,
    t: usize,
    heads: usize,
    head_dim: usize,
    divisor: f32,
}

impl Dims {
    fn of<B: burn::tensor::backend::Backend>(
        qkv: &FloatTensor<B>,
        heads: usize,
        divisor: f64,
    ) -> Self {
        let shape = qkv.shape();
        assert_eq!(shape.num_dims(), 3, "attention takes qkv [B, T, 3C]");
        let three_c = shape[2];
        assert!(
            heads > 0 && three_c % (3 * heads) == 0,
            "qkv width {three_c} is not 3 x heads ({heads}) x head_dim"
        );
        Self {
            batch: shape[0],
            t: shape[1],
            heads,
            head_dim: three_c / (3 * heads),
            divisor: divisor as f32,
        }
    }

    /// C, the model width.
    fn width(&self) -> usize {
        self.heads * self.head_dim
    }

    /// Q, K and V side by side in `qkv`, for the device kernels. Scores are multiplied by
    /// `1 / divisor` there (exact for GPT-2's power-of-two divisors, `sqrt(head_dim)`).
    fn layout(&self) -> AttentionLayout {
        let c = self.width();
        AttentionLayout {
            batch: self.batch,
            t: self.t,
            heads: self.heads,
            kv_heads: self.heads,
            head_dim: self.head_dim,
            scale: 1.0 / self.divisor,
            window: None,
            q: (3 * c, 0),
            k: (3 * c, c),
            v: (3 * c, 2 * c),
        }
    }
}

/// Each token's position in its example (`[B, T]`): the segments', or `0..T` in every row.
pub(super) fn token_positions(segments: Option<&Segments>, batch: usize, t: usize) -> Vec<u32> {
    match segments {
        Some(s) => s.positions().to_vec(),
        None => (0..batch).flat_map(|_| 0..t as u32).collect(),
    }
}

/// What the backward keeps: each row's log-sum-exp in host memory (host pass), or for the
/// device kernels the output, the log-sum-exps and the positions.
#[derive(Debug, Clone)]
enum Saved<B: burn::tensor::backend::Backend> {
    Host(Vec<f32>),
    Device {
        y: FloatTensor<B>,
        lse: FloatTensor<B>,
        positions: Vec<u32>,
    },
}

/// A pointer that tasks writing disjoint parts of one buffer may share.
#[derive(Clone, Copy)]
pub(super) struct Shared(pub(super) *mut f32);
// SAFETY: every task writes only its own (batch, head) columns; see the callers.
unsafe impl Send for Shared {}
unsafe impl Sync for Shared {}

/// `dst (m x n) = lhs (m x k) * rhs (k x n)` (`dst +=` with `accumulate`), each given by its
/// row and column strides.
///
/// # Safety
/// The pointers and strides must stay inside live buffers, and nothing else may touch `dst`'s
/// elements meanwhile.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn gemm(
    (m, n, k): (usize, usize, usize),
    dst: *mut f32,
    (dst_rs, dst_cs): (usize, usize),
    lhs: *const f32,
    (lhs_rs, lhs_cs): (usize, usize),
    rhs: *const f32,
    (rhs_rs, rhs_cs): (usize, usize),
    accumulate: bool,
) {
    // SAFETY: the caller passes pointers and strides that stay inside live buffers.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            dst_cs as isize,
            dst_rs as isize,
            accumulate,
            lhs,
            lhs_cs as isize,
            lhs_rs as isize,
            rhs,
            rhs_cs as isize,
            rhs_rs as isize,
            if accumulate { 1.0 } else { 0.0 },
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// `S = Q K^T` for head `h` of batch row `b`, the block of queries and keys `start..start + n`
/// (one example of a packed row; the whole row unpacked), into `s` as an `n x n` matrix (the
/// scratch buffers hold the longest block, not `T x T`: a padding-free packed row is long).
fn scores(
    qkv: &[f32],
    d: &Dims,
    (b, h): (usize, usize),
    (start, n): (usize, usize),
    s: &mut [f32],
) {
    let (t, hd, c3) = (d.t, d.head_dim, 3 * d.width());
    let q = &qkv[(b * t + start) * c3 + h * hd..];
    let k = &q[d.width()..];
    assert!(n >= 1 && start + n <= t && s.len() >= n * n);
    assert!(q.len() >= (n - 1) * c3 + hd && k.len() >= (n - 1) * c3 + hd);
    // SAFETY: Q and K rows are `n` rows of stride 3C inside `qkv` (checked above); the block
    // of `s` is its first n x n values.
    unsafe {
        gemm(
            (n, n, hd),
            s.as_mut_ptr(),
            (n, 1),
            q.as_ptr(),
            (c3, 1),
            k.as_ptr(),
            (1, c3),
            false,
        )
    };
}

/// The longest block of the rows (`T` unpacked): the side of the scratch buffers.
pub(super) fn longest_block(segments: Option<&Segments>, t: usize) -> usize {
    segments.map_or(t, Segments::longest).max(1)
}

/// Forward: `y [B, T, C]` and each (batch, head, query) row's log-sum-exp of its scaled scores.
/// With segments, a query sees the keys of its own example only; the scores of other
/// examples' keys are never computed.
fn forward(qkv: &[f32], d: &Dims, segments: Option<&Segments>) -> (Vec<f32>, Vec<f32>) {
    if let Some(s) = segments {
        assert_eq!(
            s.shape(),
            [d.batch, d.t],
            "segments of another shape than qkv"
        );
    }
    let isa = Isa::best();
    let (t, hd, c) = (d.t, d.head_dim, d.width());
    let mut y = vec![0f32; d.batch * t * c];
    let mut lse = vec![0f32; d.batch * d.heads * t];
    let out = Shared(y.as_mut_ptr());
    let m = longest_block(segments, t);
    lse.par_chunks_mut(t).enumerate().for_each_init(
        || vec![0f32; m * m],
        |p, (task, lse)| {
            let (b, h) = (task / d.heads, task % d.heads);
            for (start, n) in row_blocks(segments, b, t) {
                scores(qkv, d, (b, h), (start, n), p);
                for i in start..start + n {
                    let row = &mut p[(i - start) * n..(i - start + 1) * n];
                    let visible = &mut row[..=i - start];
                    let mut max = f32::NEG_INFINITY;
                    for s in visible.iter_mut() {
                        *s /= d.divisor;
                        max = max.max(*s);
                    }
                    let sum = vmath::exp_shifted_sum(isa, visible, max);
                    visible.iter_mut().for_each(|s| *s /= sum);
                    row[i + 1 - start..].fill(0.0);
                    lse[i] = max + sum.ln();
                }
                let v = &qkv[(b * t + start) * 3 * c + 2 * c + h * hd..];
                let out = out;
                // SAFETY: this task alone writes columns h*hd..(h+1)*hd of batch row b of `y`;
                // the block of `p` is its first n x n values.
                unsafe {
                    gemm(
                        (n, hd, n),
                        out.0.add((b * t + start) * c + h * hd),
                        (c, 1),
                        p.as_ptr(),
                        (n, 1),
                        v.as_ptr(),
                        (3 * c, 1),
                        false,
                    )
                };
            }
        },
    );
    (y, lse)
}

/// Backward: `d qkv [B, T, 3C]` from `dy [B, T, C]` (block by block, as the forward).
fn backward(
    qkv: &[f32],
    lse: &[f32],
    dy: &[f32],
    d: &Dims,
    segments: Option<&Segments>,
) -> Vec<f32> {
    let isa = Isa::best();
    let (t, hd, c) = (d.t, d.head_dim, d.width());
    let c3 = 3 * c;
    let mut dqkv = vec![0f32; d.batch * t * c3];
    let out = Shared(dqkv.as_mut_ptr());
    let m = longest_block(segments, t);
    lse.par_chunks(t).enumerate().for_each_init(
        || (vec![0f32; m * m], vec![0f32; m * m]),
        |(p, dp), (task, lse)| {
            let (b, h) = (task / d.heads, task % d.heads);
            for (start, n) in row_blocks(segments, b, t) {
                let base = (b * t + start) * c3 + h * hd;
                let (q, k, v) = (&qkv[base..], &qkv[base + c..], &qkv[base + 2 * c..]);
                let dy = &dy[(b * t + start) * c + h * hd..];
                // P, recomputed from the saved log-sum-exps.
                scores(qkv, d, (b, h), (start, n), p);
                for i in start..start + n {
                    let row = &mut p[(i - start) * n..(i - start + 1) * n];
                    vmath::exp_affine(isa, &mut row[..=i - start], d.divisor, lse[i], 1.0);
                    row[i + 1 - start..].fill(0.0);
                }
                let corner = 0;
                let out = out;
                // SAFETY: this task alone writes the Q, K and V columns of head h in batch row
                // b of `dqkv`; every read stays inside `qkv`, `dy` and the first n x n values
                // of the scratch buffers.
                unsafe {
                    // dV = P^T dY
                    gemm(
                        (n, hd, n),
                        out.0.add(base + 2 * c),
                        (c3, 1),
                        p.as_ptr().add(corner),
                        (1, n),
                        dy.as_ptr(),
                        (c, 1),
                        false,
                    );
                    // dP = dY V^T
                    gemm(
                        (n, n, hd),
                        dp.as_mut_ptr().add(corner),
                        (n, 1),
                        dy.as_ptr(),
                        (c, 1),
                        v.as_ptr(),
                        (1, c3),
                        false,
                    );
                }
                // dS = P (dP - rowsum(P dP)) / divisor, 0 above the diagonal.
                for i in start..start + n {
                    let r = (i - start) * n..(i - start + 1) * n;
                    let (dp, p) = (&mut dp[r.clone()], &p[r]);
                    let dot: f32 = dp[..=i - start].iter().zip(p).map(|(g, p)| g * p).sum();
                    for (g, &p) in dp[..=i - start].iter_mut().zip(p) {
                        *g = p * (*g - dot) / d.divisor;
                    }
                    dp[i + 1 - start..].fill(0.0);
                }
                // SAFETY: as above.
                unsafe {
                    // dQ = dS K
                    gemm(
                        (n, hd, n),
                        out.0.add(base),
                        (c3, 1),
                        dp.as_ptr().add(corner),
                        (n, 1),
                        k.as_ptr(),
                        (c3, 1),
                        false,
                    );
                    // dK = dS^T Q
                    gemm(
                        (n, hd, n),
                        out.0.add(base + c),
                        (c3, 1),
                        dp.as_ptr().add(corner),
                        (1, n),
                        q.as_ptr(),
                        (c3, 1),
                        false,
                    );
                }
            }
        },
    );
    dqkv
}

/// Backends that run causal self-attention as one op; `Err(qkv)` hands the input back to a
/// caller that must compose it from Burn's ops.
pub trait FusedAttention: burn::tensor::backend::Backend {
    /// `qkv [B, T, 3C]` (Q, K, V side by side, each `heads` heads wide) to `y [B, T, C]`;
    /// with `segments`, each packed example attends to itself only.
    fn fused_causal_attention(
        qkv: FloatTensor<Self>,
        heads: usize,
        divisor: f64,
        segments: Option<&Segments>,
    ) -> Result<FloatTensor<Self>, FloatTensor<Self>>;
}

impl<B: HostTensors + Fp8Kernels> FusedAttention for Fp8<B> {
    fn fused_causal_attention(
        qkv: FloatTensor<Self>,
        heads: usize,
        divisor: f64,
        segments: Option<&Segments>,
    ) -> Result<FloatTensor<Self>, FloatTensor<Self>> {
        let d = Dims::of::<B>(&qkv, heads, divisor);
        let Some(values) = B::host_slice(&qkv) else {
            let positions = token_positions(segments, d.batch, d.t);
            return match B::device_attention(&qkv, &qkv, &qkv, &d.layout(), &positions) {
                Some([y, _]) => Ok(y),
                None => Err(qkv),
            };
        };
        let (y, _) = forward(values, &d, segments);
        let shape = vec![d.batch, d.t, d.width()];
        Ok(from_host::<B>(y, shape, &B::float_device(&qkv)))
    }
}

#[derive(Debug)]
struct AttentionBackward;

impl<B: HostTensors + Fp8Kernels> Backward<Fp8<B>, 1> for AttentionBackward {
    /// `qkv`, the row log-sum-exps (and more on a device), the shape, the segments.
    type State = (FloatTensor<B>, Saved<B>, Dims, Option<Segments>);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node] = ops.parents;
        let upstream = grads.consume::<Fp8<B>>(&ops.node);
        let Some(node) = node else { return };
        let (qkv, saved, d, segments) = ops.state;
        let lse = match saved {
            Saved::Host(lse) => lse,
            Saved::Device { y, lse, positions } => {
                let l = d.layout();
                let dqkv = B::device_attention_backward(
                    &qkv, &qkv, &qkv, &y, &lse, upstream, &l, &positions,
                );
                grads.register::<Fp8<B>>(node.id, B::float_cat(dqkv.to_vec(), 2));
                return;
            }
        };
        let dy = B::host_exclusive(upstream).expect("a host tensor");
        let dqkv = backward(
            B::host_slice(&qkv).expect("a host tensor"),
            &lse,
            B::host_slice(&dy).expect("an exclusive host tensor"),
            &d,
            segments.as_ref(),
        );
        let shape = vec![d.batch, d.t, 3 * d.width()];
        let device = B::float_device(&qkv);
        grads.register::<Fp8<B>>(node.id, from_host::<B>(dqkv, shape, &device));
    }
}

impl<B: HostTensors + Fp8Kernels, C: CheckpointStrategy> FusedAttention for Autodiff<Fp8<B>, C> {
    fn fused_causal_attention(
        qkv: FloatTensor<Self>,
        heads: usize,
        divisor: f64,
        segments: Option<&Segments>,
    ) -> Result<FloatTensor<Self>, FloatTensor<Self>> {
        let d = Dims::of::<B>(&qkv.primitive, heads, divisor);
        let (y, saved) = match B::host_slice(&qkv.primitive) {
            Some(values) => {
                let (y, lse) = forward(values, &d, segments);
                let shape = vec![d.batch, d.t, d.width()];
                let y = from_host::<B>(y, shape, &B::float_device(&qkv.primitive));
                (y, Saved::Host(lse))
            }
            None => {
                let positions = token_positions(segments, d.batch, d.t);
                let p = &qkv.primitive;
                match B::device_attention(p, p, p, &d.layout(), &positions) {
                    Some([y, lse]) => {
                        let saved = Saved::Device {
                            y: y.clone(),
                            lse,
                            positions,
                        };
                        (y, saved)
                    }
                    None => return Err(qkv),
                }
            }
        };
        Ok(
            match AttentionBackward
                .prepare::<C>([qkv.node.clone()])
                .compute_bound()
                .stateful()
            {
                OpsKind::Tracked(prep) => {
                    prep.finish((qkv.primitive, saved, d, segments.cloned()), y)
                }
                OpsKind::UnTracked(prep) => prep.finish(y),
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use burn::backend::{Flex, NdArray};
    use burn::tensor::activation::softmax;
    use burn::tensor::backend::Backend;
    use burn::tensor::{Bool, Tensor, TensorData, TensorPrimitive};

    use super::*;

    /// Fused against composed, both f32 with different summation orders (measured here: at
    /// most 3e-7 relative to the largest element); a transposed operand, a wrong head offset,
    /// an unmasked future key or a missing softmax term moves them by 1e-2 or more.
    const FUSED_REL_TOL: f32 = 1e-5;

    use crate::model::ops::test_util::{host, rel, Ad};

    fn values(n: usize, seed: usize) -> Vec<f32> {
        (0..n)
            .map(|i| ((i * 7919 + seed * 104_729) % 1000) as f32 / 250.0 - 2.0)
            .collect()
    }

    /// `model::attention`'s composed path.
    fn composed<B: Backend>(
        qkv: Tensor<B, 3>,
        nh: usize,
        divisor: f64,
        segments: Option<&Segments>,
    ) -> Tensor<B, 3> {
        let [b, t, c3] = qkv.dims();
        let (c, hd) = (c3 / 3, c3 / 3 / nh);
        let heads = |i: usize| {
            qkv.clone()
                .narrow(2, i * c, c)
                .reshape([b, t, nh, hd])
                .swap_dims(1, 2)
        };
        let (q, k, v) = (heads(0), heads(1), heads(2));
        let scores = q.matmul(k.swap_dims(2, 3)) / divisor;
        let hidden = match segments {
            None => Tensor::<B, 2, Bool>::tril_mask([t, t], 0, &scores.device()).unsqueeze::<4>(),
            Some(s) => s.hidden_keys(|_| 0, &scores.device()),
        };
        let att = softmax(scores.mask_fill(hidden.expand([b, nh, t, t]), f32::MIN), 3);
        att.matmul(v).swap_dims(1, 2).reshape([b, t, c])
    }

    #[test]
    fn fused_attention_equals_the_composed_one() {
        // Packed rows: examples of 4, 1, 3 and 1 tokens, then one of 9.
        let packed = Segments::new(
            vec![0, 1, 2, 3, 0, 0, 1, 2, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8],
            2,
            9,
        );
        for segments in [None, Some(&packed)] {
            case::<Flex>(segments);
            case::<NdArray<f32>>(segments);
        }
    }

    fn case<B: HostTensors + Fp8Kernels>(segments: Option<&Segments>) {
        let (b, t, nh, hd, divisor) = (2, 9, 3, 5, 2.2);
        let c3 = 3 * nh * hd;
        let device = Default::default();
        let qkv = || {
            Tensor::<Ad<B>, 3>::from_data(
                TensorData::new(values(b * t * c3, 1), [b, t, c3]),
                &device,
            )
            .require_grad()
        };
        let weights = Tensor::<Ad<B>, 3>::from_data(
            TensorData::new(values(b * t * nh * hd, 2), [b, t, nh * hd]),
            &device,
        );
        let (x, z) = (qkv(), qkv());
        let fused = Tensor::<Ad<B>, 3>::from_primitive(TensorPrimitive::Float(
            Ad::<B>::fused_causal_attention(
                x.clone().into_primitive().tensor(),
                nh,
                divisor,
                segments,
            )
            .expect("a host backend"),
        ));
        let reference = composed(z.clone(), nh, divisor, segments);
        let gx = x
            .grad(&(fused.clone() * weights.clone()).sum().backward())
            .unwrap();
        let gz = z
            .grad(&(reference.clone() * weights).sum().backward())
            .unwrap();
        let (fy, ry) = (host(fused), host(reference));
        let (fg, rg) = (host(gx), host(gz));
        println!(
            "attention: y rel {:e}, d qkv rel {:e}",
            rel(&fy, &ry),
            rel(&fg, &rg)
        );
        assert!(
            rel(&fy, &ry) < FUSED_REL_TOL,
            "y differs by {:e}",
            rel(&fy, &ry)
        );
        assert!(
            rel(&fg, &rg) < FUSED_REL_TOL,
            "d qkv differs by {:e}",
            rel(&fg, &rg)
        );
        // Evaluation (no autodiff) gives the same output.
        let plain = Tensor::<Fp8<B>, 3>::from_data(
            TensorData::new(values(b * t * c3, 1), [b, t, c3]),
            &device,
        );
        let y = Fp8::<B>::fused_causal_attention(
            plain.into_primitive().tensor(),
            nh,
            divisor,
            segments,
        )
        .expect("a host backend");
        let y = host(Tensor::<Fp8<B>, 3>::from_primitive(TensorPrimitive::Float(
            y,
        )));
        assert!(rel(&y, &ry) < FUSED_REL_TOL, "inference differs");
    }
}
