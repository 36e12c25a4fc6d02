//! The fused ops on device backends: the same single passes as the host ones, as cubecl
//! kernels, for every backend Burn runs on cubecl (wgpu; CUDA and ROCm run the same code).
//!
//! Each method returns `None` where the backend has no kernel for the tensor (a CPU backend, a
//! dtype other than f32), and the fused op then composes itself from Burn's ops as before. The
//! backward methods are only called on tensors whose forward the same backend computed.
//! Reductions are f32 in a workgroup's shared memory (the host passes sum in f64): the results
//! differ from the host's in rounding only, measured by the tests in `cube`.

use burn::backend::flex::Flex;
use burn::backend::ndarray::NdArray;
use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
use fp8_backend::{Fp8, Fp8Kernels};

use crate::model::ops::rotary_attention::RotaryTables;
use crate::train::optimizer::Coefficients;

#[cfg(any(feature = "wgpu", feature = "cuda"))]
pub mod cube;

/// A loss's targets on the device: each row's token, its weight, and the divisor of the sum.
pub struct DeviceTargets<'a> {
    pub tokens: &'a [u32],
    pub weights: Option<&'a [f32]>,
    pub divisor: f32,
}

/// How an attention's operands lie and attend: a head's elements are at
/// `x[(b T + t) stride + offset + head * head_dim + d]` of its tensor (`q`, `k`, `v`: stride and
/// offset), query head `h` reads key/value head `h / (heads / kv_heads)`, scores are
/// `scale q . k`, and query `i` sees the keys from its example's first token (by `positions`,
/// `[B, T]`, counting from 0 in each example) and, with a `window`, no earlier than
/// `i + 1 - window`, up to itself.
#[derive(Clone, Copy, Debug)]
pub struct AttentionLayout {
    pub batch: usize,
    pub t: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub scale: f32,
    pub window: Option<usize>,
    pub q: (usize, usize),
    pub k: (usize, usize),
    pub v: (usize, usize),
}

/// Device kernels of the fused ops; every method's default is "no kernel here".
#[allow(unused_variables)]
pub trait DeviceOps: Backend {
    /// GELU, tanh form: `x / (1 + e^(-2u))`, `u = sqrt(2/pi) (x + 0.044715 x^3)`.
    fn device_gelu_tanh(x: &FloatTensor<Self>) -> Option<FloatTensor<Self>> {
        None
    }

    /// `dy * gelu_tanh'(x)`.
    fn device_gelu_tanh_backward(
        x: &FloatTensor<Self>,
        dy: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        unreachable!("no device kernels on this backend")
    }

    /// `silu(gate) * up`.
    fn device_swiglu(
        gate: &FloatTensor<Self>,
        up: &FloatTensor<Self>,
    ) -> Option<FloatTensor<Self>> {
        None
    }

    /// The gate's and the up input's gradients from `dh`.
    fn device_swiglu_backward(
        gate: &FloatTensor<Self>,
        up: &FloatTensor<Self>,
        dh: FloatTensor<Self>,
    ) -> [FloatTensor<Self>; 2] {
        unreachable!("no device kernels on this backend")
    }

    /// Layer norm over the last dimension: the output, each row's mean and `1 / sqrt(var + eps)`.
    fn device_layer_norm(
        x: &FloatTensor<Self>,
        weight: &FloatTensor<Self>,
        bias: &FloatTensor<Self>,
        eps: f64,
    ) -> Option<[FloatTensor<Self>; 3]> {
        None
    }

    /// The input's, the weight's and the bias's gradients.
    fn device_layer_norm_backward(
        x: &FloatTensor<Self>,
        weight: &FloatTensor<Self>,
        mean: &FloatTensor<Self>,
        rstd: &FloatTensor<Self>,
        dy: FloatTensor<Self>,
    ) -> [FloatTensor<Self>; 3] {
        unreachable!("no device kernels on this backend")
    }

    /// RMSNorm over the last dimension: the output and each row's `1 / sqrt(mean(x^2) + eps)`.
    fn device_rms_norm(
        x: &FloatTensor<Self>,
        weight: &FloatTensor<Self>,
        eps: f64,
    ) -> Option<[FloatTensor<Self>; 2]> {
        None
    }

    /// The input's and the weight's gradients.
    fn device_rms_norm_backward(
        x: &FloatTensor<Self>,
        weight: &FloatTensor<Self>,
        rstd: &FloatTensor<Self>,
        dy: FloatTensor<Self>,
    ) -> [FloatTensor<Self>; 2] {
        unreachable!("no device kernels on this backend")
    }

    /// `softmax(scores / divisor)` over the last dimension of `[.., T, T]` scores, 0 above the
    /// diagonal.
    fn device_causal_softmax(
        scores: &FloatTensor<Self>,
        divisor: f32,
    ) -> Option<FloatTensor<Self>> {
        None
    }

    /// The scores' gradient from the probabilities and theirs.
    fn device_causal_softmax_backward(
        p: &FloatTensor<Self>,
        dp: FloatTensor<Self>,
        divisor: f32,
    ) -> FloatTensor<Self> {
        unreachable!("no device kernels on this backend")
    }

    /// The weighted mean cross-entropy of logits `[N, V]` (a one-element tensor) and each
    /// row's log-sum-exp.
    fn device_cross_entropy(
        logits: &FloatTensor<Self>,
        targets: &DeviceTargets<'_>,
    ) -> Option<[FloatTensor<Self>; 2]> {
        None
    }

    /// The logits' gradient for the loss's gradient `upstream` (a one-element tensor, read on
    /// the device).
    fn device_cross_entropy_backward(
        logits: FloatTensor<Self>,
        lse: &FloatTensor<Self>,
        targets: &DeviceTargets<'_>,
        upstream: &FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        unreachable!("no device kernels on this backend")
    }

    /// Causal attention: `y [B, T, heads * head_dim]` and each (batch, head, query) row's
    /// log-sum-exp (`[B, heads, T]`), keeping nothing of size `T x T`.
    fn device_attention(
        q: &FloatTensor<Self>,
        k: &FloatTensor<Self>,
        v: &FloatTensor<Self>,
        layout: &AttentionLayout,
        positions: &[u32],
    ) -> Option<[FloatTensor<Self>; 2]> {
        None
    }

    /// dQ `[B, T, heads * head_dim]`, dK and dV `[B, T, kv_heads * head_dim]` (contiguous,
    /// whatever the layout of Q, K and V), the probabilities recomputed from `lse`.
    #[allow(clippy::too_many_arguments)]
    fn device_attention_backward(
        q: &FloatTensor<Self>,
        k: &FloatTensor<Self>,
        v: &FloatTensor<Self>,
        y: &FloatTensor<Self>,
        lse: &FloatTensor<Self>,
        dy: FloatTensor<Self>,
        layout: &AttentionLayout,
        positions: &[u32],
    ) -> [FloatTensor<Self>; 3] {
        unreachable!("no device kernels on this backend")
    }

    /// Rotary embedding of `x [B, T, width]`, each `[B, T]` row by its position's angles;
    /// `inverse` rotates back (the gradient's transform).
    fn device_rope(
        x: &FloatTensor<Self>,
        rope: &RotaryTables,
        positions: &[u32],
        inverse: bool,
    ) -> Option<FloatTensor<Self>> {
        None
    }

    /// One AdamW update of a flat parameter: `[param, m, v]` after it, `Err` with the inputs
    /// where there is no kernel.
    #[allow(clippy::type_complexity)]
    fn device_adamw(
        param: FloatTensor<Self>,
        grad: &FloatTensor<Self>,
        m: FloatTensor<Self>,
        v: FloatTensor<Self>,
        c: &Coefficients,
    ) -> Result<[FloatTensor<Self>; 3], [FloatTensor<Self>; 3]> {
        Err([param, m, v])
    }
}

impl DeviceOps for Flex {}
impl DeviceOps for NdArray<f32> {}

/// The decorator shares its inner backend's tensors, and so its kernels.
impl<B: DeviceOps + Fp8Kernels> DeviceOps for Fp8<B> {
    fn device_gelu_tanh(x: &FloatTensor<Self>) -> Option<FloatTensor<Self>> {
        B::device_gelu_tanh(x)
    }

    fn device_gelu_tanh_backward(
        x: &FloatTensor<Self>,
        dy: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        B::device_gelu_tanh_backward(x, dy)
    }

    fn device_swiglu(
        gate: &FloatTensor<Self>,
        up: &FloatTensor<Self>,
    ) -> Option<FloatTensor<Self>> {
        B::device_swiglu(gate, up)
    }

    fn device_swiglu_backward(
        gate: &FloatTensor<Self>,
        up: &FloatTensor<Self>,
        dh: FloatTensor<Self>,
    ) -> [FloatTensor<Self>; 2] {
        B::device_swiglu_backward(gate, up, dh)
    }

    fn device_layer_norm(
        x: &FloatTensor<Self>,
        weight: &FloatTensor<Self>,
        bias: &FloatTensor<Self>,
        eps: f64,
    ) -> Option<[FloatTensor<Self>; 3]> {
        B::device_layer_norm(x, weight, bias, eps)
    }

    fn device_layer_norm_backward(
        x: &FloatTensor<Self>,
        weight: &FloatTensor<Self>,
        mean: &FloatTensor<Self>,
        rstd: &FloatTensor<Self>,
        dy: FloatTensor<Self>,
    ) -> [FloatTensor<Self>; 3] {
        B::device_layer_norm_backward(x, weight, mean, rstd, dy)
    }

    fn device_rms_norm(
        x: &FloatTensor<Self>,
        weight: &FloatTensor<Self>,
        eps: f64,
    ) -> Option<[FloatTensor<Self>; 2]> {
        B::device_rms_norm(x, weight, eps)
    }

    fn device_rms_norm_backward(
        x: &FloatTensor<Self>,
        weight: &FloatTensor<Self>,
        rstd: &FloatTensor<Self>,
        dy: FloatTensor<Self>,
    ) -> [FloatTensor<Self>; 2] {
        B::device_rms_norm_backward(x, weight, rstd, dy)
    }

    fn device_causal_softmax(
        scores: &FloatTensor<Self>,
        divisor: f32,
    ) -> Option<FloatTensor<Self>> {
        B::device_causal_softmax(scores, divisor)
    }

    fn device_causal_softmax_backward(
        p: &FloatTensor<Self>,
        dp: FloatTensor<Self>,
        divisor: f32,
    ) -> FloatTensor<Self> {
        B::device_causal_softmax_backward(p, dp, divisor)
    }

    fn device_cross_entropy(
        logits: &FloatTensor<Self>,
        targets: &DeviceTargets<'_>,
    ) -> Option<[FloatTensor<Self>; 2]> {
        B::device_cross_entropy(logits, targets)
    }

    fn device_cross_entropy_backward(
        logits: FloatTensor<Self>,
        lse: &FloatTensor<Self>,
        targets: &DeviceTargets<'_>,
        upstream: &FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        B::device_cross_entropy_backward(logits, lse, targets, upstream)
    }

    fn device_adamw(
        param: FloatTensor<Self>,
        grad: &FloatTensor<Self>,
        m: FloatTensor<Self>,
        v: FloatTensor<Self>,
        c: &Coefficients,
    ) -> Result<[FloatTensor<Self>; 3], [FloatTensor<Self>; 3]> {
        B::device_adamw(param, grad, m, v, c)
    }

    fn device_attention(
        q: &FloatTensor<Self>,
        k: &FloatTensor<Self>,
        v: &FloatTensor<Self>,
        layout: &AttentionLayout,
        positions: &[u32],
    ) -> Option<[FloatTensor<Self>; 2]> {
        B::device_attention(q, k, v, layout, positions)
    }

    fn device_attention_backward(
        q: &FloatTensor<Self>,
        k: &FloatTensor<Self>,
        v: &FloatTensor<Self>,
        y: &FloatTensor<Self>,
        lse: &FloatTensor<Self>,
        dy: FloatTensor<Self>,
        layout: &AttentionLayout,
        positions: &[u32],
    ) -> [FloatTensor<Self>; 3] {
        B::device_attention_backward(q, k, v, y, lse, dy, layout, positions)
    }

    fn device_rope(
        x: &FloatTensor<Self>,
        rope: &RotaryTables,
        positions: &[u32],
        inverse: bool,
    ) -> Option<FloatTensor<Self>> {
        B::device_rope(x, rope, positions, inverse)
    }
}

/// Each fused op on wgpu and CUDA (their device kernels) against the same op on the CPU (the host
/// passes), forward and backward, within the fused ops' tolerance
/// ([`super::test_util::FUSED_REL_TOL`]). Every call `expect`s the fused path, so a kernel
/// that declined would fail the test rather than fall back to the composed op.
#[cfg(all(test, any(feature = "wgpu", feature = "cuda")))]
mod tests {
    use burn::backend::Flex;
    use fp8_backend::Fp8Kernels;

    use super::super::test_util::*;
    use super::super::*;
    use crate::host::HostTensors;
    use crate::model::segments::Segments;

    use std::sync::Arc;

    use burn::tensor::Tensor;

    type Out = Vec<Vec<f32>>;

    /// Runs `case` on wgpu and on the CPU and compares every output.
    fn compare(what: &str, case: fn(bool) -> Out, on_wgpu: fn(bool) -> Out, flag: bool) {
        let got = on_wgpu(flag);
        let want = case(flag);
        assert_eq!(got.len(), want.len());
        for (k, (g, w)) in got.iter().zip(&want).enumerate() {
            check(&format!("{what} [{k}]"), g, w);
        }
    }

    fn input<B: HostTensors + Fp8Kernels, const D: usize>(
        shape: [usize; D],
        seed: usize,
    ) -> Tensor<Ad<B>, D> {
        param::<Ad<B>, D>(values(shape.iter().product(), seed), shape).require_grad()
    }

    fn gelu<B: HostTensors + Fp8Kernels>(_: bool) -> Out {
        let x = input::<B, 3>([3, 7, 97], 1);
        let y = float::<Ad<B>, 3>(
            Ad::<B>::fused_gelu_tanh(x.clone().into_primitive().tensor()).expect("fused"),
        );
        let g = x.grad(&weighted_sum(y.clone(), 2).backward()).unwrap();
        vec![host(y), host(g)]
    }

    fn swiglu<B: HostTensors + Fp8Kernels>(_: bool) -> Out {
        let (g, u) = (input::<B, 3>([3, 7, 97], 3), input::<B, 3>([3, 7, 97], 4));
        let h = float::<Ad<B>, 3>(
            Ad::<B>::fused_swiglu(
                g.clone().into_primitive().tensor(),
                u.clone().into_primitive().tensor(),
            )
            .expect("fused"),
        );
        let grads = weighted_sum(h.clone(), 5).backward();
        vec![
            host(h),
            host(g.grad(&grads).unwrap()),
            host(u.grad(&grads).unwrap()),
        ]
    }

    /// `wide`: rows wider than a workgroup (300 > 256) and more than one block of rows for the
    /// weight gradient; else more rows than one launch has workgroups (70,000 > 65,535).
    fn layer_norm<B: HostTensors + Fp8Kernels>(wide: bool) -> Out {
        let (rows, c) = if wide { (45, 300) } else { (70_000, 8) };
        let x = input::<B, 2>([rows, c], 6);
        let (w, b) = (input::<B, 1>([c], 7), input::<B, 1>([c], 8));
        let y = float::<Ad<B>, 2>(
            Ad::<B>::fused_layer_norm(
                x.clone().into_primitive().tensor(),
                w.clone().into_primitive().tensor(),
                b.clone().into_primitive().tensor(),
                1e-5,
            )
            .unwrap_or_else(|_| panic!("fused")),
        );
        let grads = weighted_sum(y.clone(), 9).backward();
        vec![
            host(y),
            host(x.grad(&grads).unwrap()),
            host(w.grad(&grads).unwrap()),
            host(b.grad(&grads).unwrap()),
        ]
    }

    fn rms_norm<B: HostTensors + Fp8Kernels>(wide: bool) -> Out {
        let (rows, c) = if wide { (45, 300) } else { (70_000, 8) };
        let x = input::<B, 2>([rows, c], 10);
        let w = input::<B, 1>([c], 11);
        let y = float::<Ad<B>, 2>(
            Ad::<B>::fused_rms_norm(
                x.clone().into_primitive().tensor(),
                w.clone().into_primitive().tensor(),
                1e-6,
            )
            .unwrap_or_else(|_| panic!("fused")),
        );
        let grads = weighted_sum(y.clone(), 12).backward();
        vec![
            host(y),
            host(x.grad(&grads).unwrap()),
            host(w.grad(&grads).unwrap()),
        ]
    }

    /// `wide`: T = 300, rows wider than a workgroup.
    fn causal_softmax<B: HostTensors + Fp8Kernels>(wide: bool) -> Out {
        let (b, h, t) = if wide { (1, 2, 300) } else { (2, 3, 9) };
        let x = input::<B, 4>([b, h, t, t], 13);
        let p = float::<Ad<B>, 4>(
            Ad::<B>::fused_causal_softmax(x.clone().into_primitive().tensor(), 2.5).expect("fused"),
        );
        let g = x.grad(&weighted_sum(p.clone(), 14).backward()).unwrap();
        vec![host(p), host(g)]
    }

    /// `weighted`: a loss mask with zero and fractional weights, divided by its sum.
    fn cross_entropy<B: HostTensors + Fp8Kernels>(weighted: bool) -> Out {
        let (n, v) = (37, 1000);
        let logits = input::<B, 2>([n, v], 15);
        let tokens: Vec<u32> = (0..n as u32).map(|i| (i * 271 + 5) % v as u32).collect();
        let weights: Option<Vec<f32>> =
            weighted.then(|| (0..n).map(|i| [0.0, 1.0, 0.5][i % 3]).collect());
        let divisor = weights.as_ref().map_or(n as f32, |w| w.iter().sum());
        let targets = Arc::new(cross_entropy::Targets {
            tokens,
            weights,
            divisor,
        });
        let loss = float::<Ad<B>, 1>(
            Ad::<B>::fused_cross_entropy(logits.clone().into_primitive().tensor(), &targets)
                .expect("fused"),
        );
        let g = logits.grad(&(loss.clone() * 1.7).sum().backward()).unwrap();
        vec![host(loss), host(g)]
    }

    /// Attention inputs: values in [-2, 2) (the fused attentions' own tests' range: scores of a
    /// few units, the softmax neither flat nor one-hot).
    fn qkv_input<B: HostTensors + Fp8Kernels>(shape: [usize; 3], seed: usize) -> Tensor<Ad<B>, 3> {
        let n = shape.iter().product();
        let v: Vec<f32> = (0..n)
            .map(|i| ((i * 7919 + seed * 104_729) % 1000) as f32 / 250.0 - 2.0)
            .collect();
        param::<Ad<B>, 3>(v, shape).require_grad()
    }

    /// Packed rows of `t` tokens: examples of 4, 1 and 3 tokens, then the rest of the row as
    /// one, in each of two rows.
    fn packed(t: usize) -> Segments {
        let row: Vec<u32> = [0, 1, 2, 3, 0, 0, 1, 2]
            .into_iter()
            .chain(0..(t - 8) as u32)
            .collect();
        Segments::new([row.clone(), row].concat(), 2, t)
    }

    /// GPT-2's attention: `long` rows of 300 tokens (more keys and queries than a workgroup
    /// has units), else 9; `pack`ed or not.
    fn gpt2_attention<B: HostTensors + Fp8Kernels>((long, pack): (bool, bool)) -> Out {
        let (t, nh, hd, divisor) = if long {
            (300, 2, 8, 2.2)
        } else {
            (9, 3, 5, 2.2)
        };
        let qkv = qkv_input::<B>([2, t, 3 * nh * hd], 16);
        let segments = pack.then(|| packed(t));
        let y = float::<Ad<B>, 3>(
            Ad::<B>::fused_causal_attention(
                qkv.clone().into_primitive().tensor(),
                nh,
                divisor,
                segments.as_ref(),
            )
            .expect("fused"),
        );
        let g = qkv.grad(&weighted_sum(y.clone(), 17).backward()).unwrap();
        vec![host(y), host(g)]
    }

    /// The Llama family's rotary attention, grouped-query (6 query heads on 2 key/value heads),
    /// multi-query with Mistral's sliding window, or `long` rows; `pack`ed or not.
    fn rotary_attention<B: HostTensors + Fp8Kernels>((case, pack): (usize, bool)) -> Out {
        let (t, heads, kv_heads, hd, window) = match case {
            0 => (9, 6, 2, 4, None),
            1 => (11, 4, 1, 6, Some(5)),
            _ => (300, 2, 1, 8, None),
        };
        let inv_freq: Vec<f32> = (0..hd / 2)
            .map(|i| 10_000f32.powf(-2.0 * i as f32 / hd as f32))
            .collect();
        let rope = Arc::new(rotary_attention::RotaryTables::new(&inv_freq, t));
        let a = rotary_attention::RotaryAttention {
            heads,
            kv_heads,
            head_dim: hd,
            scale: (hd as f32).powf(-0.5),
            window,
        };
        let q = qkv_input::<B>([2, t, heads * hd], 18);
        let k = qkv_input::<B>([2, t, kv_heads * hd], 19);
        let v = qkv_input::<B>([2, t, kv_heads * hd], 20);
        let segments = pack.then(|| packed(t));
        let y = float::<Ad<B>, 3>(
            Ad::<B>::fused_rotary_attention(
                q.clone().into_primitive().tensor(),
                k.clone().into_primitive().tensor(),
                v.clone().into_primitive().tensor(),
                &rope,
                a,
                segments.as_ref(),
            )
            .unwrap_or_else(|_| panic!("fused")),
        );
        let grads = weighted_sum(y.clone(), 21).backward();
        vec![
            host(y),
            host(q.grad(&grads).unwrap()),
            host(k.grad(&grads).unwrap()),
            host(v.grad(&grads).unwrap()),
        ]
    }

    /// Runs `case` with `arg` on wgpu and on the CPU and compares every output.
    fn compare_with<A: Copy + std::fmt::Debug>(
        what: &str,
        host_case: fn(A) -> Out,
        device_case: fn(A) -> Out,
        arg: A,
    ) {
        let (got, want) = (device_case(arg), host_case(arg));
        for (k, (g, w)) in got.iter().zip(&want).enumerate() {
            check(&format!("{what} {arg:?} [{k}]"), g, w);
        }
    }

    /// The comparisons on one device backend.
    macro_rules! on_device {
        ($module:ident, $backend:ty) => {
            mod $module {
                use super::*;

                #[test]
                fn gpt2_attention_on_the_device_equals_the_host_pass() {
                    for arg in [(false, false), (false, true), (true, false), (true, true)] {
                        let (host, device) = (gpt2_attention::<Flex>, gpt2_attention::<$backend>);
                        compare_with("attention", host, device, arg);
                    }
                }

                #[test]
                fn rotary_attention_on_the_device_equals_the_host_pass() {
                    for arg in [(0, false), (0, true), (1, false), (1, true), (2, true)] {
                        let host = rotary_attention::<Flex>;
                        let device = rotary_attention::<$backend>;
                        compare_with("rotary attention", host, device, arg);
                    }
                }

                #[test]
                fn gelu_and_swiglu_on_the_device_equal_the_host_passes() {
                    compare("gelu", gelu::<Flex>, gelu::<$backend>, false);
                    compare("swiglu", swiglu::<Flex>, swiglu::<$backend>, false);
                }

                #[test]
                fn norms_on_the_device_equal_the_host_passes() {
                    for wide in [true, false] {
                        compare(
                            "layer norm",
                            layer_norm::<Flex>,
                            layer_norm::<$backend>,
                            wide,
                        );
                        compare("rms norm", rms_norm::<Flex>, rms_norm::<$backend>, wide);
                    }
                }

                #[test]
                fn causal_softmax_on_the_device_equals_the_host_pass() {
                    for wide in [true, false] {
                        let (host, device) = (causal_softmax::<Flex>, causal_softmax::<$backend>);
                        compare("causal softmax", host, device, wide);
                    }
                }

                #[test]
                fn cross_entropy_on_the_device_equals_the_host_pass() {
                    for weighted in [false, true] {
                        let (host, device) = (cross_entropy::<Flex>, cross_entropy::<$backend>);
                        compare("cross-entropy", host, device, weighted);
                    }
                }
            }
        };
    }

    #[cfg(feature = "wgpu")]
    on_device!(wgpu, burn::backend::Wgpu);
    #[cfg(feature = "cuda")]
    on_device!(cuda, burn::backend::Cuda);
}
