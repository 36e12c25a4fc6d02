//! Causal self-attention with rotary position embeddings and grouped-query heads, as one op
//! with its own backward: `q [B, T, H*D]`, `k`, `v` `[B, T, KV*D]` to `y [B, T, H*D]`, where
//! query head `h` attends with key/value head `h / (H / KV)` (`LlamaAttention`'s eager path:
//! `repeat_kv`, `q k^T * scale`, the causal mask (and Mistral's sliding window), a softmax, `@ v`).
//!
//! Composed from Burn's ops, attention rotates Q and K through `narrow`, `cat`, negations and
//! broadcast multiplies, copies each key/value head once per query head it serves
//! (`repeat_kv`), runs two batched matmuls around the mask and a softmax over `[B, heads, T, T]`,
//! and its backward undoes each step with a tensor of its own. Here the forward rotates Q and K
//! in one pass, then every (batch, query head) pair is one task that reads its rotated Q and the
//! rotated K and V of its group in place (strided GEMMs, no copy per query head), keeps its
//! `T x T` probabilities in a scratch buffer and writes its slice of `y`. The backward is one
//! task per (batch, key/value head), so a group's key and value gradients are summed by the one
//! task that owns them; it recomputes the probabilities from the saved row log-sum-exps (as
//! flash attention does: no `T x T` tensor is kept between forward and backward), and rotates
//! the Q and K gradients back in a last pass.
//!
//! The arithmetic is `transformers`' in f32 (`rotate_half` form: the halves `x1`, `x2` of a
//! head become `x1 cos - x2 sin` and `x2 cos + x1 sin`); `exp` is [`vmath`]'s. GEMMs are
//! `gemm`'s (the crate burn-flex uses), one thread per task, the tasks spread over rayon's
//! threads.

use std::sync::Arc;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::Autodiff;
use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{Tensor, TensorData, TensorMetadata};
use fp8_backend::{Fp8, Fp8Kernels};
use rayon::prelude::*;

use super::attention::{gemm, token_positions, Shared};
use super::device::AttentionLayout;
use super::vmath::{self, Isa};
use crate::host::{from_host, HostTensors};
use crate::model::segments::{row_blocks, Segments};

/// The cosines and sines of every position's rotation: `[positions, head_dim / 2]` each, row
/// `p` the angles `p * inv_freq[i]` (`transformers` builds `cat(freqs, freqs)`; both halves of
/// a head use the same row).
#[derive(Debug)]
pub struct RotaryTables {
    pub cos: Vec<f32>,
    pub sin: Vec<f32>,
    /// `head_dim / 2`.
    pub half: usize,
}

impl RotaryTables {
    /// The tables of positions `0..positions` for inverse frequencies `inv_freq`, computed as
    /// `transformers` does in f32 (angle `p * inv_freq[i]` rounded to f32, then its cosine and
    /// sine).
    pub fn new(inv_freq: &[f32], positions: usize) -> Self {
        let half = inv_freq.len();
        let mut cos = Vec::with_capacity(positions * half);
        let mut sin = Vec::with_capacity(positions * half);
        for p in 0..positions {
            for &f in inv_freq {
                let angle = f64::from(p as f32 * f);
                cos.push(angle.cos() as f32);
                sin.push(angle.sin() as f32);
            }
        }
        Self { cos, sin, half }
    }

    /// Positions covered.
    pub fn positions(&self) -> usize {
        self.cos.len() / self.half.max(1)
    }
}

/// The shape and settings of one call.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RotaryAttention {
    /// Query heads.
    pub heads: usize,
    /// Key/value heads (each serves `heads / kv_heads` query heads).
    pub kv_heads: usize,
    pub head_dim: usize,
    /// Scores are multiplied by this (`head_dim^-0.5`).
    pub scale: f32,
    /// Mistral's sliding window: a query sees itself and the `window - 1` keys before it.
    pub window: Option<usize>,
}

impl RotaryAttention {
    /// The first key a query at position `i` sees.
    fn first_key(&self, i: usize) -> usize {
        self.window.map_or(0, |w| (i + 1).saturating_sub(w))
    }
}

/// One call's dimensions.
#[derive(Clone, Copy, Debug)]
struct Dims {
    batch: usize,
    t: usize,
    a: RotaryAttention,
}

impl Dims {
    fn of<B: Backend>(
        q: &FloatTensor<B>,
        k: &FloatTensor<B>,
        v: &FloatTensor<B>,
        a: RotaryAttention,
        rope: &RotaryTables,
    ) -> Self {
        let (qs, ks, vs) = (q.shape(), k.shape(), v.shape());
        assert!(
            qs.num_dims() == 3 && ks.num_dims() == 3 && vs.num_dims() == 3,
            "attention takes q, k, v [B, T, heads * head_dim]"
        );
        assert!(
            a.kv_heads > 0 && a.heads.is_multiple_of(a.kv_heads) && a.head_dim == 2 * rope.half,
            "attention heads {} / key-value heads {} / head_dim {} (rotary half {})",
            a.heads,
            a.kv_heads,
            a.head_dim,
            rope.half
        );
        assert_eq!(qs[2], a.heads * a.head_dim, "q width");
        assert_eq!(ks[2], a.kv_heads * a.head_dim, "k width");
        assert_eq!(vs[2], a.kv_heads * a.head_dim, "v width");
        assert!(
            qs[..2] == ks[..2] && ks[..2] == vs[..2],
            "q, k, v of different batch or length"
        );
        assert!(
            qs[1] <= rope.positions(),
            "{} positions, rotary tables for {}",
            qs[1],
            rope.positions()
        );
        Self {
            batch: qs[0],
            t: qs[1],
            a,
        }
    }

    /// Width of q and y rows.
    fn q_width(&self) -> usize {
        self.a.heads * self.a.head_dim
    }

    /// Width of k and v rows.
    fn kv_width(&self) -> usize {
        self.a.kv_heads * self.a.head_dim
    }

    /// Query heads per key/value head.
    fn group(&self) -> usize {
        self.a.heads / self.a.kv_heads
    }

    /// Q, K and V as three tensors, for the device kernels.
    fn layout(&self) -> AttentionLayout {
        AttentionLayout {
            batch: self.batch,
            t: self.t,
            heads: self.a.heads,
            kv_heads: self.a.kv_heads,
            head_dim: self.a.head_dim,
            scale: self.a.scale,
            window: self.a.window,
            q: (self.q_width(), 0),
            k: (self.kv_width(), 0),
            v: (self.kv_width(), 0),
        }
    }

    /// Segments must be of the call's `[B, T]`.
    fn check(&self, segments: Option<&Segments>) {
        if let Some(s) = segments {
            assert_eq!(
                s.shape(),
                [self.batch, self.t],
                "segments of another shape than q"
            );
        }
    }
}

/// Rotates every head of `x` (`[B, T, width]`, heads of `2 * half` side by side) by its
/// position's angles (`t mod T`, or the segments' positions); `inverse` rotates back (the
/// transpose, for gradients).
fn rotate(
    x: &[f32],
    (t, width): (usize, usize),
    rope: &RotaryTables,
    inverse: bool,
    segments: Option<&Segments>,
) -> Vec<f32> {
    let half = rope.half;
    let mut out = vec![0f32; x.len()];
    out.par_chunks_mut(width)
        .zip(x.par_chunks(width))
        .enumerate()
        .for_each(|(row, (out, x))| {
            let p = segments.map_or(row % t, |s| s.positions()[row] as usize);
            let (cos, sin) = (
                &rope.cos[p * half..(p + 1) * half],
                &rope.sin[p * half..(p + 1) * half],
            );
            for (out, x) in out.chunks_mut(2 * half).zip(x.chunks(2 * half)) {
                let (x1, x2) = x.split_at(half);
                let (o1, o2) = out.split_at_mut(half);
                for i in 0..half {
                    let (c, s) = (cos[i], if inverse { -sin[i] } else { sin[i] });
                    o1[i] = x1[i] * c - x2[i] * s;
                    o2[i] = x2[i] * c + x1[i] * s;
                }
            }
        });
    out
}

/// `S = Q_h K_g^T` for query head `h` (key head `g`) of batch row `b`, the block of queries
/// and keys `start..start + n` (one example of a packed row; the whole row unpacked), into `s`
/// as an `n x n` matrix (the scratch buffers hold the longest block, not `T x T`).
fn scores(
    (q, k): (&[f32], &[f32]),
    d: &Dims,
    (b, h): (usize, usize),
    (start, n): (usize, usize),
    s: &mut [f32],
) {
    let (t, hd) = (d.t, d.a.head_dim);
    let g = h / d.group();
    let (qw, kw) = (d.q_width(), d.kv_width());
    let q = &q[(b * t + start) * qw + h * hd..];
    let k = &k[(b * t + start) * kw + g * hd..];
    assert!(n >= 1 && start + n <= t && s.len() >= n * n);
    assert!(q.len() >= (n - 1) * qw + hd && k.len() >= (n - 1) * kw + hd);
    // SAFETY: Q and K rows are `n` rows of their widths inside the buffers (checked above);
    // the block of `s` is its first n x n values.
    unsafe {
        gemm(
            (n, n, hd),
            s.as_mut_ptr(),
            (n, 1),
            q.as_ptr(),
            (qw, 1),
            k.as_ptr(),
            (1, kw),
            false,
        )
    };
}

/// Forward from rotated `q` and `k`: `y [B, T, H*D]` and each (batch, head, query) row's
/// log-sum-exp of its scaled scores. With segments, a query sees the keys of its own example
/// only; the scores of other examples' keys are never computed.
fn forward(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    d: &Dims,
    segments: Option<&Segments>,
) -> (Vec<f32>, Vec<f32>) {
    let isa = Isa::best();
    let (t, hd, qw, kw) = (d.t, d.a.head_dim, d.q_width(), d.kv_width());
    let mut y = vec![0f32; d.batch * t * qw];
    let mut lse = vec![0f32; d.batch * d.a.heads * t];
    let out = Shared(y.as_mut_ptr());
    let m = super::attention::longest_block(segments, t);
    lse.par_chunks_mut(t).enumerate().for_each_init(
        || vec![0f32; m * m],
        |p, (task, lse)| {
            let (b, h) = (task / d.a.heads, task % d.a.heads);
            for (start, n) in row_blocks(segments, b, t) {
                scores((q, k), d, (b, h), (start, n), p);
                for i in start..start + n {
                    let row = &mut p[(i - start) * n..(i - start + 1) * n];
                    let lo = d.a.first_key(i).max(start);
                    let visible = &mut row[lo - start..=i - start];
                    let mut max = f32::NEG_INFINITY;
                    for s in visible.iter_mut() {
                        *s *= d.a.scale;
                        max = max.max(*s);
                    }
                    let sum = vmath::exp_shifted_sum(isa, visible, max);
                    visible.iter_mut().for_each(|s| *s /= sum);
                    row[..lo - start].fill(0.0);
                    row[i + 1 - start..].fill(0.0);
                    lse[i] = max + sum.ln();
                }
                let v = &v[(b * t + start) * kw + (h / d.group()) * hd..];
                let out = out;
                // SAFETY: this task alone writes columns h*hd..(h+1)*hd of batch row b of `y`;
                // the block of `p` is its first n x n values.
                unsafe {
                    gemm(
                        (n, hd, n),
                        out.0.add((b * t + start) * qw + h * hd),
                        (qw, 1),
                        p.as_ptr(),
                        (n, 1),
                        v.as_ptr(),
                        (kw, 1),
                        false,
                    )
                };
            }
        },
    );
    (y, lse)
}

/// Backward from rotated `q` and `k`: the gradients of rotated Q, rotated K and V (block by
/// block, as the forward).
fn backward(
    (q, k, v): (&[f32], &[f32], &[f32]),
    lse: &[f32],
    dy: &[f32],
    d: &Dims,
    segments: Option<&Segments>,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let isa = Isa::best();
    let (t, hd, qw, kw) = (d.t, d.a.head_dim, d.q_width(), d.kv_width());
    let mut dq = vec![0f32; d.batch * t * qw];
    let mut dk = vec![0f32; d.batch * t * kw];
    let mut dv = vec![0f32; d.batch * t * kw];
    let (out_q, out_k, out_v) = (
        Shared(dq.as_mut_ptr()),
        Shared(dk.as_mut_ptr()),
        Shared(dv.as_mut_ptr()),
    );
    let tasks = d.batch * d.a.kv_heads;
    let m = super::attention::longest_block(segments, t);
    (0..tasks).into_par_iter().for_each_init(
        || (vec![0f32; m * m], vec![0f32; m * m]),
        |(p, dp), task| {
            let (b, g) = (task / d.a.kv_heads, task % d.a.kv_heads);
            let (out_q, out_k, out_v) = (out_q, out_k, out_v);
            for (start, len) in row_blocks(segments, b, t) {
                let kv_base = (b * t + start) * kw + g * hd;
                let (k_g, v_g) = (&k[kv_base..], &v[kv_base..]);
                let corner = 0;
                for (n, h) in (g * d.group()..(g + 1) * d.group()).enumerate() {
                    let q_base = (b * t + start) * qw + h * hd;
                    let (q_h, dy_h) = (&q[q_base..], &dy[q_base..]);
                    let lse = &lse[(b * d.a.heads + h) * t..][..t];
                    // P, recomputed from the saved log-sum-exps.
                    scores((q, k), d, (b, h), (start, len), p);
                    for i in start..start + len {
                        let row = &mut p[(i - start) * len..(i - start + 1) * len];
                        let lo = d.a.first_key(i).max(start);
                        vmath::exp_scaled(isa, &mut row[lo - start..=i - start], d.a.scale, lse[i]);
                        row[..lo - start].fill(0.0);
                        row[i + 1 - start..].fill(0.0);
                    }
                    let sum = n > 0;
                    // SAFETY: this task alone writes the K and V columns of head g of batch
                    // row b (and the Q columns of its query heads); every read stays inside
                    // the inputs and the first len x len values of the scratch buffers.
                    unsafe {
                        // dV_g (+)= P^T dY_h
                        gemm(
                            (len, hd, len),
                            out_v.0.add(kv_base),
                            (kw, 1),
                            p.as_ptr().add(corner),
                            (1, len),
                            dy_h.as_ptr(),
                            (qw, 1),
                            sum,
                        );
                        // dP = dY_h V_g^T
                        gemm(
                            (len, len, hd),
                            dp.as_mut_ptr().add(corner),
                            (len, 1),
                            dy_h.as_ptr(),
                            (qw, 1),
                            v_g.as_ptr(),
                            (1, kw),
                            false,
                        );
                    }
                    // dS = P (dP - rowsum(P dP)) * scale, 0 where P is.
                    for i in start..start + len {
                        let r = (i - start) * len..(i - start + 1) * len;
                        let (dp, p) = (&mut dp[r.clone()], &p[r]);
                        let lo = d.a.first_key(i).max(start);
                        let w = lo - start..=i - start;
                        let dot: f32 = dp[w.clone()]
                            .iter()
                            .zip(&p[w.clone()])
                            .map(|(g, p)| g * p)
                            .sum();
                        for (g, &p) in dp[w.clone()].iter_mut().zip(&p[w]) {
                            *g = p * (*g - dot) * d.a.scale;
                        }
                        dp[..lo - start].fill(0.0);
                        dp[i + 1 - start..].fill(0.0);
                    }
                    // SAFETY: as above.
                    unsafe {
                        // dQ_h = dS K_g
                        gemm(
                            (len, hd, len),
                            out_q.0.add(q_base),
                            (qw, 1),
                            dp.as_ptr().add(corner),
                            (len, 1),
                            k_g.as_ptr(),
                            (kw, 1),
                            false,
                        );
                        // dK_g (+)= dS^T Q_h
                        gemm(
                            (len, hd, len),
                            out_k.0.add(kv_base),
                            (kw, 1),
                            dp.as_ptr().add(corner),
                            (1, len),
                            q_h.as_ptr(),
                            (qw, 1),
                            sum,
                        );
                    }
                }
            }
        },
    );
    (dq, dk, dv)
}

/// Backends that run rotary grouped-query attention as one op; `Err` hands the inputs back to
/// a caller that must compose it from Burn's ops.
pub trait FusedRotaryAttention: Backend {
    /// `q [B, T, H*D]`, `k`, `v` `[B, T, KV*D]` to `y [B, T, H*D]`; with `segments`, each
    /// packed example attends to itself only, rotated by its own positions.
    #[allow(clippy::type_complexity)]
    fn fused_rotary_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        rope: &Arc<RotaryTables>,
        attention: RotaryAttention,
        segments: Option<&Segments>,
    ) -> Result<FloatTensor<Self>, (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>)>;
}

impl<B: HostTensors + Fp8Kernels> FusedRotaryAttention for Fp8<B> {
    fn fused_rotary_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        rope: &Arc<RotaryTables>,
        attention: RotaryAttention,
        segments: Option<&Segments>,
    ) -> Result<FloatTensor<Self>, (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>)> {
        let d = Dims::of::<B>(&q, &k, &v, attention, rope);
        d.check(segments);
        let (Some(qs), Some(ks), Some(vs)) =
            (B::host_slice(&q), B::host_slice(&k), B::host_slice(&v))
        else {
            return match device_forward::<B>(&q, &k, &v, rope, &d, segments) {
                Some(saved) => Ok(saved.y),
                None => Err((q, k, v)),
            };
        };
        let qr = rotate(qs, (d.t, d.q_width()), rope, false, segments);
        let kr = rotate(ks, (d.t, d.kv_width()), rope, false, segments);
        let (y, _) = forward(&qr, &kr, vs, &d, segments);
        let shape = vec![d.batch, d.t, d.q_width()];
        Ok(from_host::<B>(y, shape, &B::float_device(&q)))
    }
}

#[derive(Debug)]
struct RotaryAttentionBackward;

/// What the backward keeps.
#[derive(Debug, Clone)]
enum Saved<B: Backend> {
    /// The host pass's rotated Q and K, V, each row's log-sum-exp.
    Host {
        qr: Vec<f32>,
        kr: Vec<f32>,
        v: FloatTensor<B>,
        lse: Vec<f32>,
    },
    Device(DeviceSaved<B>),
}

/// The device kernels' forward: rotated Q and K, V, the output, each row's log-sum-exp and the
/// token positions.
#[derive(Debug, Clone)]
struct DeviceSaved<B: Backend> {
    qr: FloatTensor<B>,
    kr: FloatTensor<B>,
    v: FloatTensor<B>,
    y: FloatTensor<B>,
    lse: FloatTensor<B>,
    positions: Vec<u32>,
}

/// Rotation and attention with the device kernels; `None` where the backend has none.
fn device_forward<B: HostTensors>(
    q: &FloatTensor<B>,
    k: &FloatTensor<B>,
    v: &FloatTensor<B>,
    rope: &RotaryTables,
    d: &Dims,
    segments: Option<&Segments>,
) -> Option<DeviceSaved<B>> {
    let positions = token_positions(segments, d.batch, d.t);
    let qr = B::device_rope(q, rope, &positions, false)?;
    let kr = B::device_rope(k, rope, &positions, false)?;
    let [y, lse] = B::device_attention(&qr, &kr, v, &d.layout(), &positions)?;
    Some(DeviceSaved {
        qr,
        kr,
        v: v.clone(),
        y,
        lse,
        positions,
    })
}

impl<B: HostTensors + Fp8Kernels> Backward<Fp8<B>, 3> for RotaryAttentionBackward {
    /// Rotated Q and K, V, the row log-sum-exps (host pass) or what the device kernels keep;
    /// the tables, the shape, the segments.
    type State = (Saved<B>, Arc<RotaryTables>, Dims, Option<Segments>);

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [q_node, k_node, v_node] = ops.parents;
        let upstream = grads.consume::<Fp8<B>>(&ops.node);
        let (saved, rope, d, segments) = ops.state;
        let segments = segments.as_ref();
        let (qr, kr, v, lse) = match saved {
            Saved::Host { qr, kr, v, lse } => (qr, kr, v, lse),
            Saved::Device(saved) => {
                let l = d.layout();
                let [dqr, dkr, dv] = B::device_attention_backward(
                    &saved.qr,
                    &saved.kr,
                    &saved.v,
                    &saved.y,
                    &saved.lse,
                    upstream,
                    &l,
                    &saved.positions,
                );
                let back =
                    |x| B::device_rope(&x, &rope, &saved.positions, true).expect("a device tensor");
                if let Some(node) = q_node {
                    grads.register::<Fp8<B>>(node.id, back(dqr));
                }
                if let Some(node) = k_node {
                    grads.register::<Fp8<B>>(node.id, back(dkr));
                }
                if let Some(node) = v_node {
                    grads.register::<Fp8<B>>(node.id, dv);
                }
                return;
            }
        };
        let dy = B::host_exclusive(upstream).expect("a host tensor");
        let (dqr, dkr, dv) = backward(
            (&qr, &kr, B::host_slice(&v).expect("a host tensor")),
            &lse,
            B::host_slice(&dy).expect("an exclusive host tensor"),
            &d,
            segments,
        );
        let device = B::float_device(&v);
        if let Some(node) = q_node {
            let dq = rotate(&dqr, (d.t, d.q_width()), &rope, true, segments);
            let shape = vec![d.batch, d.t, d.q_width()];
            grads.register::<Fp8<B>>(node.id, from_host::<B>(dq, shape, &device));
        }
        if let Some(node) = k_node {
            let dk = rotate(&dkr, (d.t, d.kv_width()), &rope, true, segments);
            let shape = vec![d.batch, d.t, d.kv_width()];
            grads.register::<Fp8<B>>(node.id, from_host::<B>(dk, shape, &device));
        }
        if let Some(node) = v_node {
            let shape = vec![d.batch, d.t, d.kv_width()];
            grads.register::<Fp8<B>>(node.id, from_host::<B>(dv, shape, &device));
        }
    }
}

impl<B: HostTensors + Fp8Kernels, C: CheckpointStrategy> FusedRotaryAttention
    for Autodiff<Fp8<B>, C>
{
    fn fused_rotary_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        rope: &Arc<RotaryTables>,
        attention: RotaryAttention,
        segments: Option<&Segments>,
    ) -> Result<FloatTensor<Self>, (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>)> {
        let d = Dims::of::<B>(&q.primitive, &k.primitive, &v.primitive, attention, rope);
        d.check(segments);
        let (y, saved) = if let (Some(qs), Some(ks), Some(vs)) = (
            B::host_slice(&q.primitive),
            B::host_slice(&k.primitive),
            B::host_slice(&v.primitive),
        ) {
            let qr = rotate(qs, (d.t, d.q_width()), rope, false, segments);
            let kr = rotate(ks, (d.t, d.kv_width()), rope, false, segments);
            let (y, lse) = forward(&qr, &kr, vs, &d, segments);
            let shape = vec![d.batch, d.t, d.q_width()];
            let y = from_host::<B>(y, shape, &B::float_device(&q.primitive));
            let v = v.primitive.clone();
            (y, Saved::Host { qr, kr, v, lse })
        } else {
            match device_forward::<B>(&q.primitive, &k.primitive, &v.primitive, rope, &d, segments)
            {
                Some(saved) => (saved.y.clone(), Saved::Device(saved)),
                None => return Err((q, k, v)),
            }
        };
        Ok(
            match RotaryAttentionBackward
                .prepare::<C>([q.node.clone(), k.node.clone(), v.node.clone()])
                .compute_bound()
                .stateful()
            {
                OpsKind::Tracked(prep) => {
                    let state = (saved, rope.clone(), d, segments.cloned());
                    prep.finish(state, y)
                }
                OpsKind::UnTracked(prep) => prep.finish(y),
            },
        )
    }
}

/// Rotary grouped-query attention composed from Burn's ops, as `LlamaAttention`'s eager path
/// computes it (`apply_rotary_pos_emb`, `repeat_kv`, scores times the scale, the mask filled
/// with f32::MIN, a softmax, `@ v`): the reference of the fused op, and the path of backends
/// without it (or with dropout on the probabilities, `dropout` applied to them).
///
/// With `segments`, each packed example is rotated by its own positions and attends to itself
/// only (masked like the future).
pub fn composed<B: Backend>(
    q: Tensor<B, 3>,
    k: Tensor<B, 3>,
    v: Tensor<B, 3>,
    rope: &RotaryTables,
    a: RotaryAttention,
    segments: Option<&Segments>,
    dropout: impl Fn(Tensor<B, 4>) -> Tensor<B, 4>,
) -> Tensor<B, 3> {
    let [b, t, _] = q.dims();
    let (hd, half) = (a.head_dim, rope.half);
    let device = q.device();
    let table = |values: &[f32]| {
        // (rows, 1, T, D): one table for every row, or each row's by its positions.
        let (rows, positions): (usize, Vec<usize>) = match segments {
            None => (1, (0..t).collect()),
            Some(s) => (b, s.positions().iter().map(|&p| p as usize).collect()),
        };
        let gathered: Vec<f32> = positions
            .iter()
            .flat_map(|&p| &values[p * half..(p + 1) * half])
            .copied()
            .collect();
        let half_table =
            Tensor::<B, 2>::from_data(TensorData::new(gathered, [rows * t, half]), &device);
        Tensor::cat(vec![half_table.clone(), half_table], 1).reshape([rows, 1, t, hd])
    };
    let (cos, sin) = (table(&rope.cos), table(&rope.sin));
    let heads = |x: Tensor<B, 3>, n: usize| x.reshape([b, t, n, hd]).swap_dims(1, 2); // (B, n, T, D)
    let rotate_half = |x: Tensor<B, 4>| {
        let x1 = x.clone().narrow(3, 0, half);
        let x2 = x.narrow(3, half, half);
        Tensor::cat(vec![x2.neg(), x1], 3)
    };
    let rotary = |x: Tensor<B, 4>| x.clone() * cos.clone() + rotate_half(x) * sin.clone();
    let q = rotary(heads(q, a.heads));
    let k = rotary(heads(k, a.kv_heads));
    let v = heads(v, a.kv_heads);
    let group = a.heads / a.kv_heads;
    // repeat_kv: (B, KV, T, D) -> (B, H, T, D), head g repeated `group` times in a row.
    let repeat = |x: Tensor<B, 4>| {
        x.unsqueeze_dim::<5>(2)
            .expand([b, a.kv_heads, group, t, hd])
            .reshape([b, a.heads, t, hd])
    };
    let (k, v) = (repeat(k), repeat(v));
    let scores = q.matmul(k.swap_dims(2, 3)) * a.scale; // (B, H, T, T)
    let mask = match segments {
        Some(s) => s.hidden_keys(|i| a.first_key(i), &device),
        None => {
            let mut hidden: Vec<bool> = Vec::with_capacity(t * t);
            for i in 0..t {
                for j in 0..t {
                    hidden.push(j > i || j < a.first_key(i));
                }
            }
            Tensor::<B, 2, burn::tensor::Bool>::from_data(TensorData::new(hidden, [t, t]), &device)
                .unsqueeze::<4>()
        }
    }
    .expand([b, a.heads, t, t]);
    let probs = burn::tensor::activation::softmax(scores.mask_fill(mask, f32::MIN), 3);
    let y = dropout(probs).matmul(v); // (B, H, T, D)
    y.swap_dims(1, 2).reshape([b, t, a.heads * hd])
}

#[cfg(test)]
mod tests {
    use burn::backend::{Flex, NdArray};

    use super::*;
    use crate::model::ops::test_util::*;

    /// The inverse frequencies of `transformers`' default rope for `head_dim` and `theta`.
    fn inv_freq(head_dim: usize, theta: f32) -> Vec<f32> {
        (0..head_dim / 2)
            .map(|i| 1.0 / theta.powf((2 * i) as f32 / head_dim as f32))
            .collect()
    }

    #[test]
    fn fused_rotary_attention_equals_the_composed_one() {
        // GQA (3 query heads per key/value head), MQA, plain multi-head, and a sliding window.
        // Packed rows: examples of 5, 1, 4 and 3 tokens, then of 8, 2 and 3.
        let positions = [
            vec![0, 1, 2, 3, 4, 0, 0, 1, 2, 3, 0, 1, 2],
            vec![0, 1, 2, 3, 4, 5, 6, 7, 0, 1, 0, 1, 2],
        ];
        let packed = Segments::new(positions.concat(), 2, 13);
        for (heads, kv_heads, window) in [(6, 2, None), (4, 1, None), (2, 2, None), (4, 2, Some(5))]
        {
            for segments in [None, Some(&packed)] {
                case::<Flex>(heads, kv_heads, window, segments);
                case::<NdArray<f32>>(heads, kv_heads, window, segments);
            }
        }
    }

    fn case<B: HostTensors + Fp8Kernels>(
        heads: usize,
        kv_heads: usize,
        window: Option<usize>,
        segments: Option<&Segments>,
    ) {
        let (b, t, hd) = (2, 13, 8);
        let rope = Arc::new(RotaryTables::new(&inv_freq(hd, 100.0), 16));
        let a = RotaryAttention {
            heads,
            kv_heads,
            head_dim: hd,
            scale: (hd as f32).powf(-0.5),
            window,
        };
        let q =
            || param::<Ad<B>, 3>(values(b * t * heads * hd, 21), [b, t, heads * hd]).require_grad();
        let k = || {
            param::<Ad<B>, 3>(values(b * t * kv_heads * hd, 22), [b, t, kv_heads * hd])
                .require_grad()
        };
        let v = || {
            param::<Ad<B>, 3>(values(b * t * kv_heads * hd, 23), [b, t, kv_heads * hd])
                .require_grad()
        };
        let (qa, ka, va) = (q(), k(), v());
        let (qb, kb, vb) = (q(), k(), v());
        let fused = float::<Ad<B>, 3>(
            Ad::<B>::fused_rotary_attention(
                qa.clone().into_primitive().tensor(),
                ka.clone().into_primitive().tensor(),
                va.clone().into_primitive().tensor(),
                &rope,
                a,
                segments,
            )
            .unwrap_or_else(|_| panic!("a host backend")),
        );
        let reference = composed(
            qb.clone(),
            kb.clone(),
            vb.clone(),
            &rope,
            a,
            segments,
            |p| p,
        );
        let ga = weighted_sum(fused.clone(), 24).backward();
        let gb = weighted_sum(reference.clone(), 24).backward();
        let what = format!(
            "attention {heads}/{kv_heads} window {window:?} packed {}",
            segments.is_some()
        );
        check(&what, &host(fused), &host(reference));
        check(
            &format!("{what} dq"),
            &host(qa.grad(&ga).unwrap()),
            &host(qb.grad(&gb).unwrap()),
        );
        check(
            &format!("{what} dk"),
            &host(ka.grad(&ga).unwrap()),
            &host(kb.grad(&gb).unwrap()),
        );
        check(
            &format!("{what} dv"),
            &host(va.grad(&ga).unwrap()),
            &host(vb.grad(&gb).unwrap()),
        );
    }
}
