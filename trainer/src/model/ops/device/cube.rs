//! The fused ops' kernels on Burn's cubecl backends (tested on wgpu: Mesa's lavapipe in CI).
//!
//! Three shapes of kernel:
//! - element-wise (GELU, SwiGLU, AdamW, the cross-entropy's backward): every unit strides over
//!   the tensor;
//! - row-wise (layer norm, RMSNorm, causal softmax, the cross-entropy's forward): one workgroup
//!   a row, its units striding over the row, sums and maxima reduced in shared memory;
//! - column sums (the norms' weight and bias gradients): partial sums over blocks of
//!   [`ROW_BLOCK`] rows, one unit a (block, column), then one unit a column adds the blocks; no
//!   float atomics, so the order, and the result, is the same at every run.
//!
//! Infinities are kept out of the arithmetic (WGSL lets a compiler assume there are none): the
//! exponentials' arguments are clamped, and maxima start from -3e38 (below every finite score) rather than -infinity.

use burn::tensor::ops::FloatTensor;
use burn::tensor::{DType, Shape, TensorMetadata};
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::{BoolElement, CubeBackend, CubeRuntime, FloatElement, IntElement};
use cubecl::prelude::*;

use super::{AttentionLayout, DeviceOps, DeviceTargets};
use crate::model::ops::rotary_attention::RotaryTables;
use crate::model::ops::vmath::{GELU_CUBIC, SQRT_2_OVER_PI};
use crate::train::optimizer::Coefficients;

/// Units per workgroup: a power of two (the shared-memory reductions halve it) and within
/// WebGPU's default limit of 256 invocations.
const WORKGROUP: u32 = 256;
/// At most this many workgroups for an element-wise kernel (units then stride further).
const MAX_WORKGROUPS: usize = 4096;
/// At most this many workgroups for a row-wise kernel (WebGPU's per-dimension limit; each
/// workgroup then takes every 65535th row).
const MAX_ROW_WORKGROUPS: usize = 65_535;
/// Rows per partial sum of a column-sum kernel.
const ROW_BLOCK: u32 = 32;
/// Exponentials' arguments are clamped to this: e^80 is finite in f32, and beyond it the
/// results no longer change (1 + e^-80 is 1; x / (1 + e^80) is below 1e-34 |x|).
const EXP_CLAMP: f32 = 80.0;

// ---------------------------------------------------------------------------------------------
// Shared pieces.

/// The sum of `value` over the workgroup (every unit gets it).
#[cube]
fn workgroup_sum(value: f32, shared: &mut SharedMemory<f32>) -> f32 {
    sync_cube();
    shared[UNIT_POS as usize] = value;
    sync_cube();
    let mut active = CUBE_DIM / 2;
    while active > 0 {
        if UNIT_POS < active {
            let other = shared[(UNIT_POS + active) as usize];
            shared[UNIT_POS as usize] += other;
        }
        sync_cube();
        active /= 2;
    }
    shared[0]
}

/// The maximum of `value` over the workgroup (every unit gets it).
#[cube]
fn workgroup_max(value: f32, shared: &mut SharedMemory<f32>) -> f32 {
    sync_cube();
    shared[UNIT_POS as usize] = value;
    sync_cube();
    let mut active = CUBE_DIM / 2;
    while active > 0 {
        if UNIT_POS < active {
            let other = shared[(UNIT_POS + active) as usize];
            shared[UNIT_POS as usize] = max(shared[UNIT_POS as usize], other);
        }
        sync_cube();
        active /= 2;
    }
    shared[0]
}

/// `1 / (1 + e^-z)`, with the exponent clamped.
#[cube]
fn sigmoid(z: f32) -> f32 {
    1.0 / (1.0 + f32::exp(max(min(-z, EXP_CLAMP), -EXP_CLAMP)))
}

/// Adds the `blocks` partial rows of `partial` (`[blocks, c]`) into `out[c]`.
#[cube(launch_unchecked)]
fn sum_blocks_kernel(partial: &Array<f32>, out: &mut Array<f32>, blocks: u32, c: u32) {
    let blocks = blocks as usize;
    let c = c as usize;
    let stride = CUBE_COUNT * CUBE_DIM as usize;
    let mut j = ABSOLUTE_POS;
    while j < c {
        let mut s = 0.0f32;
        for b in 0..blocks {
            s += partial[b * c + j];
        }
        out[j] = s;
        j += stride;
    }
}

// ---------------------------------------------------------------------------------------------
// Element-wise.

#[cube(launch_unchecked)]
fn gelu_kernel(x: &Array<f32>, y: &mut Array<f32>, n: u32) {
    let n = n as usize;
    let stride = CUBE_COUNT * CUBE_DIM as usize;
    let mut i = ABSOLUTE_POS;
    while i < n {
        let v = x[i];
        let u = SQRT_2_OVER_PI * (v + GELU_CUBIC * (v * v * v));
        y[i] = v * sigmoid(2.0 * u);
        i += stride;
    }
}

/// `dy *= gelu'(x)` in place: `s + 2 x s (1 - s) u'`, `s = sigmoid(2u)`.
#[cube(launch_unchecked)]
fn gelu_backward_kernel(x: &Array<f32>, dy: &mut Array<f32>, n: u32) {
    let n = n as usize;
    let stride = CUBE_COUNT * CUBE_DIM as usize;
    let mut i = ABSOLUTE_POS;
    while i < n {
        let v = x[i];
        let v2 = v * v;
        let u = SQRT_2_OVER_PI * (v + GELU_CUBIC * (v2 * v));
        let du = SQRT_2_OVER_PI * (1.0 + 3.0 * GELU_CUBIC * v2);
        let s = sigmoid(2.0 * u);
        dy[i] *= s + 2.0 * v * (s * (1.0 - s)) * du;
        i += stride;
    }
}

#[cube(launch_unchecked)]
fn swiglu_kernel(g: &Array<f32>, u: &Array<f32>, h: &mut Array<f32>, n: u32) {
    let n = n as usize;
    let stride = CUBE_COUNT * CUBE_DIM as usize;
    let mut i = ABSOLUTE_POS;
    while i < n {
        let x = g[i];
        h[i] = x * sigmoid(x) * u[i];
        i += stride;
    }
}

/// From `dh` (in `dg`): `dg = dh u silu'(g)` in place, `du = dh silu(g)`.
#[cube(launch_unchecked)]
fn swiglu_backward_kernel(
    g: &Array<f32>,
    u: &Array<f32>,
    dg: &mut Array<f32>,
    du: &mut Array<f32>,
    n: u32,
) {
    let n = n as usize;
    let stride = CUBE_COUNT * CUBE_DIM as usize;
    let mut i = ABSOLUTE_POS;
    while i < n {
        let x = g[i];
        let s = sigmoid(x);
        let dh = dg[i];
        du[i] = dh * (x * s);
        dg[i] = dh * u[i] * (s * (1.0 + x * (1.0 - s)));
        i += stride;
    }
}

/// PyTorch's AdamW update in place (`Coefficients::apply`, operation for operation).
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn adamw_kernel(
    value: &mut Array<f32>,
    m: &mut Array<f32>,
    v: &mut Array<f32>,
    grad: &Array<f32>,
    n: u32,
    beta1: f32,
    beta2: f32,
    eps: f32,
    step_size: f32,
    bc2_sqrt: f32,
    decay: f32,
    grad_scale: f32,
) {
    let n = n as usize;
    let stride = CUBE_COUNT * CUBE_DIM as usize;
    let mut i = ABSOLUTE_POS;
    while i < n {
        let g = grad[i] * grad_scale;
        let m1 = beta1 * m[i] + (1.0 - beta1) * g;
        let v1 = beta2 * v[i] + (1.0 - beta2) * g * g;
        let denom = f32::sqrt(v1) / bc2_sqrt + eps;
        value[i] = value[i] * decay - step_size * m1 / denom;
        m[i] = m1;
        v[i] = v1;
        i += stride;
    }
}

/// The logits' gradient in place: `(e^(x - lse_i) - onehot(t_i)) w_i g / divisor`.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn cross_entropy_backward_kernel(
    x: &mut Array<f32>,
    lse: &Array<f32>,
    tokens: &Array<u32>,
    weights: &Array<f32>,
    upstream: &Array<f32>,
    n: u32,
    vocab: u32,
    inv_divisor: f32,
) {
    let n = n as usize;
    let vocab = vocab as usize;
    let stride = CUBE_COUNT * CUBE_DIM as usize;
    let g = upstream[0] * inv_divisor;
    let mut i = ABSOLUTE_POS;
    while i < n {
        let row = i / vocab;
        let col = i - row * vocab;
        let s = weights[row] * g;
        let p = f32::exp(min(x[i] - lse[row], EXP_CLAMP)) * s;
        x[i] = p - select(col == tokens[row] as usize, s, 0.0f32);
        i += stride;
    }
}

// ---------------------------------------------------------------------------------------------
// Row-wise.

#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn layer_norm_kernel(
    x: &Array<f32>,
    w: &Array<f32>,
    b: &Array<f32>,
    y: &mut Array<f32>,
    mean: &mut Array<f32>,
    rstd: &mut Array<f32>,
    rows: u32,
    c: u32,
    inv_c: f32,
    eps: f32,
) {
    let rows = rows as usize;
    let c = c as usize;
    let mut shared = SharedMemory::<f32>::new(WORKGROUP as usize);
    let mut row = CUBE_POS;
    while row < rows {
        let base = row * c;
        let mut s = 0.0f32;
        let mut j = UNIT_POS as usize;
        while j < c {
            s += x[base + j];
            j += CUBE_DIM as usize;
        }
        let m = workgroup_sum(s, &mut shared) * inv_c;
        let mut q = 0.0f32;
        j = UNIT_POS as usize;
        while j < c {
            let d = x[base + j] - m;
            q += d * d;
            j += CUBE_DIM as usize;
        }
        let var = workgroup_sum(q, &mut shared) * inv_c;
        let r = 1.0 / f32::sqrt(var + eps);
        j = UNIT_POS as usize;
        while j < c {
            y[base + j] = (x[base + j] - m) * r * w[j] + b[j];
            j += CUBE_DIM as usize;
        }
        if UNIT_POS == 0 {
            mean[row] = m;
            rstd[row] = r;
        }
        row += CUBE_COUNT;
    }
}

/// `dx = rstd (g - mean(g) - xhat mean(g xhat))`, `g = dy w`, `xhat = (x - mean) rstd`.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn layer_norm_dx_kernel(
    x: &Array<f32>,
    w: &Array<f32>,
    mean: &Array<f32>,
    rstd: &Array<f32>,
    dy: &Array<f32>,
    dx: &mut Array<f32>,
    rows: u32,
    c: u32,
    inv_c: f32,
) {
    let rows = rows as usize;
    let c = c as usize;
    let mut shared = SharedMemory::<f32>::new(WORKGROUP as usize);
    let mut row = CUBE_POS;
    while row < rows {
        let base = row * c;
        let m = mean[row];
        let r = rstd[row];
        let mut sg = 0.0f32;
        let mut sgx = 0.0f32;
        let mut j = UNIT_POS as usize;
        while j < c {
            let g = dy[base + j] * w[j];
            sg += g;
            sgx += g * ((x[base + j] - m) * r);
            j += CUBE_DIM as usize;
        }
        let mean_g = workgroup_sum(sg, &mut shared) * inv_c;
        let mean_gx = workgroup_sum(sgx, &mut shared) * inv_c;
        j = UNIT_POS as usize;
        while j < c {
            let xhat = (x[base + j] - m) * r;
            dx[base + j] = r * (dy[base + j] * w[j] - mean_g - xhat * mean_gx);
            j += CUBE_DIM as usize;
        }
        row += CUBE_COUNT;
    }
}

/// Per block of rows and column: `sum(dy xhat)` and `sum(dy)`.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn layer_norm_dwdb_kernel(
    x: &Array<f32>,
    mean: &Array<f32>,
    rstd: &Array<f32>,
    dy: &Array<f32>,
    dw: &mut Array<f32>,
    db: &mut Array<f32>,
    rows: u32,
    c: u32,
) {
    let rows = rows as usize;
    let c = c as usize;
    // Written out: the kernel language has no `div_ceil`.
    #[allow(clippy::manual_div_ceil)]
    let blocks = (rows + ROW_BLOCK as usize - 1) / ROW_BLOCK as usize;
    let stride = CUBE_COUNT * CUBE_DIM as usize;
    let mut i = ABSOLUTE_POS;
    while i < blocks * c {
        let block = i / c;
        let j = i - block * c;
        let first = block * ROW_BLOCK as usize;
        let end = min(first + ROW_BLOCK as usize, rows);
        let mut sw = 0.0f32;
        let mut sb = 0.0f32;
        for r in first..end {
            let g = dy[r * c + j];
            sw += g * ((x[r * c + j] - mean[r]) * rstd[r]);
            sb += g;
        }
        dw[i] = sw;
        db[i] = sb;
        i += stride;
    }
}

#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn rms_norm_kernel(
    x: &Array<f32>,
    w: &Array<f32>,
    y: &mut Array<f32>,
    rstd: &mut Array<f32>,
    rows: u32,
    c: u32,
    inv_c: f32,
    eps: f32,
) {
    let rows = rows as usize;
    let c = c as usize;
    let mut shared = SharedMemory::<f32>::new(WORKGROUP as usize);
    let mut row = CUBE_POS;
    while row < rows {
        let base = row * c;
        let mut q = 0.0f32;
        let mut j = UNIT_POS as usize;
        while j < c {
            let v = x[base + j];
            q += v * v;
            j += CUBE_DIM as usize;
        }
        let r = 1.0 / f32::sqrt(workgroup_sum(q, &mut shared) * inv_c + eps);
        j = UNIT_POS as usize;
        while j < c {
            // `transformers`' order: the normalised value, then the weight.
            y[base + j] = (x[base + j] * r) * w[j];
            j += CUBE_DIM as usize;
        }
        if UNIT_POS == 0 {
            rstd[row] = r;
        }
        row += CUBE_COUNT;
    }
}

/// `dx = r (g - xhat mean(g xhat))`, `g = dy w`, `xhat = x r`.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn rms_norm_dx_kernel(
    x: &Array<f32>,
    w: &Array<f32>,
    rstd: &Array<f32>,
    dy: &Array<f32>,
    dx: &mut Array<f32>,
    rows: u32,
    c: u32,
    inv_c: f32,
) {
    let rows = rows as usize;
    let c = c as usize;
    let mut shared = SharedMemory::<f32>::new(WORKGROUP as usize);
    let mut row = CUBE_POS;
    while row < rows {
        let base = row * c;
        let r = rstd[row];
        let mut sgx = 0.0f32;
        let mut j = UNIT_POS as usize;
        while j < c {
            sgx += dy[base + j] * w[j] * (x[base + j] * r);
            j += CUBE_DIM as usize;
        }
        let mean_gx = workgroup_sum(sgx, &mut shared) * inv_c;
        j = UNIT_POS as usize;
        while j < c {
            let xhat = x[base + j] * r;
            dx[base + j] = r * (dy[base + j] * w[j] - xhat * mean_gx);
            j += CUBE_DIM as usize;
        }
        row += CUBE_COUNT;
    }
}

/// Per block of rows and column: `sum(dy x rstd)`.
#[cube(launch_unchecked)]
fn rms_norm_dw_kernel(
    x: &Array<f32>,
    rstd: &Array<f32>,
    dy: &Array<f32>,
    dw: &mut Array<f32>,
    rows: u32,
    c: u32,
) {
    let rows = rows as usize;
    let c = c as usize;
    // Written out: the kernel language has no `div_ceil`.
    #[allow(clippy::manual_div_ceil)]
    let blocks = (rows + ROW_BLOCK as usize - 1) / ROW_BLOCK as usize;
    let stride = CUBE_COUNT * CUBE_DIM as usize;
    let mut i = ABSOLUTE_POS;
    while i < blocks * c {
        let block = i / c;
        let j = i - block * c;
        let first = block * ROW_BLOCK as usize;
        let end = min(first + ROW_BLOCK as usize, rows);
        let mut s = 0.0f32;
        for r in first..end {
            s += dy[r * c + j] * (x[r * c + j] * rstd[r]);
        }
        dw[i] = s;
        i += stride;
    }
}

/// Row `r` of `t` scores is query position `r % t`: `softmax(x / divisor)` over its first
/// `r % t + 1` entries, 0 after them.
#[cube(launch_unchecked)]
fn causal_softmax_kernel(x: &Array<f32>, p: &mut Array<f32>, rows: u32, t: u32, divisor: f32) {
    let rows = rows as usize;
    let t = t as usize;
    let mut shared = SharedMemory::<f32>::new(WORKGROUP as usize);
    let mut row = CUBE_POS;
    while row < rows {
        let base = row * t;
        let visible = row % t + 1;
        let mut mx = f32::new(-3.0e38);
        let mut j = UNIT_POS as usize;
        while j < visible {
            mx = max(mx, x[base + j] / divisor);
            j += CUBE_DIM as usize;
        }
        let mx = workgroup_max(mx, &mut shared);
        let mut s = 0.0f32;
        j = UNIT_POS as usize;
        while j < visible {
            s += f32::exp(x[base + j] / divisor - mx);
            j += CUBE_DIM as usize;
        }
        let inv = 1.0 / workgroup_sum(s, &mut shared);
        j = UNIT_POS as usize;
        while j < t {
            let e = f32::exp(min(x[base + j] / divisor - mx, 0.0f32)) * inv;
            p[base + j] = select(j < visible, e, 0.0f32);
            j += CUBE_DIM as usize;
        }
        row += CUBE_COUNT;
    }
}

/// `p (dp - sum(p dp)) / divisor`, 0 above the diagonal.
#[cube(launch_unchecked)]
fn causal_softmax_backward_kernel(
    p: &Array<f32>,
    dp: &Array<f32>,
    dx: &mut Array<f32>,
    rows: u32,
    t: u32,
    divisor: f32,
) {
    let rows = rows as usize;
    let t = t as usize;
    let mut shared = SharedMemory::<f32>::new(WORKGROUP as usize);
    let mut row = CUBE_POS;
    while row < rows {
        let base = row * t;
        let visible = row % t + 1;
        let mut dot = 0.0f32;
        let mut j = UNIT_POS as usize;
        while j < visible {
            dot += dp[base + j] * p[base + j];
            j += CUBE_DIM as usize;
        }
        let dot = workgroup_sum(dot, &mut shared);
        j = UNIT_POS as usize;
        while j < t {
            let d = p[base + j] * (dp[base + j] - dot) / divisor;
            dx[base + j] = select(j < visible, d, 0.0f32);
            j += CUBE_DIM as usize;
        }
        row += CUBE_COUNT;
    }
}

/// Each row's log-sum-exp and weighted loss `w_i (lse_i - x_i[t_i])`.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn cross_entropy_rows_kernel(
    x: &Array<f32>,
    tokens: &Array<u32>,
    weights: &Array<f32>,
    lse: &mut Array<f32>,
    loss: &mut Array<f32>,
    rows: u32,
    vocab: u32,
) {
    let rows = rows as usize;
    let vocab = vocab as usize;
    let mut shared = SharedMemory::<f32>::new(WORKGROUP as usize);
    let mut row = CUBE_POS;
    while row < rows {
        let base = row * vocab;
        let mut mx = f32::new(-3.0e38);
        let mut j = UNIT_POS as usize;
        while j < vocab {
            mx = max(mx, x[base + j]);
            j += CUBE_DIM as usize;
        }
        let mx = workgroup_max(mx, &mut shared);
        let mut s = 0.0f32;
        j = UNIT_POS as usize;
        while j < vocab {
            s += f32::exp(x[base + j] - mx);
            j += CUBE_DIM as usize;
        }
        let l = mx + f32::ln(workgroup_sum(s, &mut shared));
        if UNIT_POS == 0 {
            lse[row] = l;
            loss[row] = weights[row] * (l - x[base + tokens[row] as usize]);
        }
        row += CUBE_COUNT;
    }
}

/// `out[0] = sum(values) * scale`, one workgroup.
#[cube(launch_unchecked)]
fn scaled_sum_kernel(values: &Array<f32>, out: &mut Array<f32>, n: u32, scale: f32) {
    let n = n as usize;
    let mut shared = SharedMemory::<f32>::new(WORKGROUP as usize);
    let mut s = 0.0f32;
    let mut i = UNIT_POS as usize;
    while i < n {
        s += values[i];
        i += CUBE_DIM as usize;
    }
    let total = workgroup_sum(s, &mut shared);
    if UNIT_POS == 0 {
        out[0] = total * scale;
    }
}

// ---------------------------------------------------------------------------------------------
// Attention: one workgroup a query row (forward, dQ) or a key row (dK, dV), keys or queries in
// chunks of a workgroup; no `[T, T]` tensor anywhere (the backward recomputes the probabilities
// from each row's log-sum-exp, as flash attention does). A head's elements are at
// `x[(b T + t) stride + offset + head D + d]`, so Q, K and V may be one `[B, T, 3C]` tensor
// (GPT-2) or three (Llama); query head `h` reads key/value head `h / group`.

/// The first key that query `i` of batch row `b` sees: its example's first token (`positions`
/// count from 0 in each example), and with a sliding window of `window` (0: none) no earlier
/// than `i + 1 - window`.
#[cube]
fn first_key(positions: &Array<u32>, b: usize, t: usize, i: usize, window: usize) -> usize {
    let start = i - positions[b * t + i] as usize;
    let mut lo = start;
    if window > 0 && i + 1 > window {
        lo = max(start, i + 1 - window);
    }
    lo
}

/// `sum_d a[d] x[base + d]` over `n` elements, `a` in shared memory.
#[cube]
fn dot_shared(a: &SharedMemory<f32>, x: &Array<f32>, base: usize, n: usize) -> f32 {
    let mut s = 0.0f32;
    for d in 0..n {
        s += a[d] * x[base + d];
    }
    s
}

/// `y = softmax(scale Q K^T, masked) V` for one (batch, head, query) per workgroup, and each
/// row's log-sum-exp.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn attention_kernel(
    q: &Array<f32>,
    k: &Array<f32>,
    v: &Array<f32>,
    positions: &Array<u32>,
    y: &mut Array<f32>,
    lse: &mut Array<f32>,
    rows: u32,
    t: u32,
    heads: u32,
    group: u32,
    head_dim: u32,
    q_stride: u32,
    q_off: u32,
    k_stride: u32,
    k_off: u32,
    v_stride: u32,
    v_off: u32,
    scale: f32,
    window: u32,
) {
    let rows = rows as usize;
    let t = t as usize;
    let heads = heads as usize;
    let group = group as usize;
    let dh = head_dim as usize;
    let window = window as usize;
    let q_stride = q_stride as usize;
    let q_off = q_off as usize;
    let k_stride = k_stride as usize;
    let k_off = k_off as usize;
    let v_stride = v_stride as usize;
    let v_off = v_off as usize;
    let u = UNIT_POS as usize;
    let wg = CUBE_DIM as usize;
    let mut qs = SharedMemory::<f32>::new(WORKGROUP as usize);
    let mut ps = SharedMemory::<f32>::new(WORKGROUP as usize);
    let mut red = SharedMemory::<f32>::new(WORKGROUP as usize);
    let mut row = CUBE_POS;
    while row < rows {
        let i = row % t;
        let bh = row / t;
        let h = bh % heads;
        let b = bh / heads;
        let g = h / group;
        let lo = first_key(positions, b, t, i, window);
        sync_cube();
        if u < dh {
            qs[u] = q[(b * t + i) * q_stride + q_off + h * dh + u];
        }
        sync_cube();
        // Running maximum and sum of exponentials of this unit's keys, then the workgroup's.
        let mut m = f32::new(-3.0e38);
        let mut l = 0.0f32;
        let mut j = lo + u;
        while j <= i {
            let s = dot_shared(&qs, k, (b * t + j) * k_stride + k_off + g * dh, dh) * scale;
            let m_new = max(m, s);
            l = l * f32::exp(m - m_new) + f32::exp(s - m_new);
            m = m_new;
            j += wg;
        }
        let m_all = workgroup_max(m, &mut red);
        let l_all = workgroup_sum(l * f32::exp(max(m - m_all, -EXP_CLAMP)), &mut red);
        let inv_l = 1.0 / l_all;
        // The probabilities of one chunk of keys at a time, then their weighted sum of V.
        let mut acc = 0.0f32;
        let mut c0 = lo;
        while c0 <= i {
            let j = c0 + u;
            let jj = min(j, i);
            let s = dot_shared(&qs, k, (b * t + jj) * k_stride + k_off + g * dh, dh) * scale;
            let p = f32::exp(min(s - m_all, 0.0f32)) * inv_l;
            sync_cube();
            ps[u] = select(j <= i, p, 0.0f32);
            sync_cube();
            if u < dh {
                let n = min(wg, i + 1 - c0);
                for x in 0..n {
                    acc += ps[x] * v[(b * t + c0 + x) * v_stride + v_off + g * dh + u];
                }
            }
            c0 += wg;
        }
        if u < dh {
            y[(b * t + i) * heads * dh + h * dh + u] = acc;
        }
        if u == 0 {
            lse[row] = m_all + f32::ln(l_all);
        }
        row += CUBE_COUNT;
    }
}

/// dQ for one (batch, head, query) per workgroup, and the row's `delta = dy . y`:
/// `dQ_i = scale sum_j p_ij (dy_i . v_j - delta_i) k_j`.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn attention_dq_kernel(
    q: &Array<f32>,
    k: &Array<f32>,
    v: &Array<f32>,
    positions: &Array<u32>,
    y: &Array<f32>,
    dy: &Array<f32>,
    lse: &Array<f32>,
    dq: &mut Array<f32>,
    delta: &mut Array<f32>,
    rows: u32,
    t: u32,
    heads: u32,
    group: u32,
    head_dim: u32,
    q_stride: u32,
    q_off: u32,
    k_stride: u32,
    k_off: u32,
    v_stride: u32,
    v_off: u32,
    scale: f32,
    window: u32,
) {
    let rows = rows as usize;
    let t = t as usize;
    let heads = heads as usize;
    let group = group as usize;
    let dh = head_dim as usize;
    let window = window as usize;
    let q_stride = q_stride as usize;
    let q_off = q_off as usize;
    let k_stride = k_stride as usize;
    let k_off = k_off as usize;
    let v_stride = v_stride as usize;
    let v_off = v_off as usize;
    let u = UNIT_POS as usize;
    let wg = CUBE_DIM as usize;
    let mut qs = SharedMemory::<f32>::new(WORKGROUP as usize);
    let mut dys = SharedMemory::<f32>::new(WORKGROUP as usize);
    let mut ds = SharedMemory::<f32>::new(WORKGROUP as usize);
    let mut red = SharedMemory::<f32>::new(WORKGROUP as usize);
    let mut row = CUBE_POS;
    while row < rows {
        let i = row % t;
        let bh = row / t;
        let h = bh % heads;
        let b = bh / heads;
        let g = h / group;
        let lo = first_key(positions, b, t, i, window);
        let y_at = (b * t + i) * heads * dh + h * dh;
        let mut part = 0.0f32;
        sync_cube();
        if u < dh {
            qs[u] = q[(b * t + i) * q_stride + q_off + h * dh + u];
            dys[u] = dy[y_at + u];
            part = dy[y_at + u] * y[y_at + u];
        }
        let d_i = workgroup_sum(part, &mut red);
        let l_i = lse[row];
        let mut acc = 0.0f32;
        let mut c0 = lo;
        while c0 <= i {
            let j = c0 + u;
            let jj = min(j, i);
            let s = dot_shared(&qs, k, (b * t + jj) * k_stride + k_off + g * dh, dh) * scale;
            let p = f32::exp(min(s - l_i, 0.0f32));
            let dp = dot_shared(&dys, v, (b * t + jj) * v_stride + v_off + g * dh, dh);
            sync_cube();
            ds[u] = select(j <= i, p * (dp - d_i), 0.0f32);
            sync_cube();
            if u < dh {
                let n = min(wg, i + 1 - c0);
                for x in 0..n {
                    acc += ds[x] * k[(b * t + c0 + x) * k_stride + k_off + g * dh + u];
                }
            }
            c0 += wg;
        }
        if u < dh {
            dq[y_at + u] = acc * scale;
        }
        if u == 0 {
            delta[row] = d_i;
        }
        row += CUBE_COUNT;
    }
}

/// dK and dV for one (batch, key/value head, key) per workgroup, summed over the group's query
/// heads and every query that sees the key: `dV_j = sum p_ij dy_i`,
/// `dK_j = scale sum p_ij (dy_i . v_j - delta_i) q_i`.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn attention_dkv_kernel(
    q: &Array<f32>,
    k: &Array<f32>,
    v: &Array<f32>,
    positions: &Array<u32>,
    dy: &Array<f32>,
    lse: &Array<f32>,
    delta: &Array<f32>,
    dk: &mut Array<f32>,
    dv: &mut Array<f32>,
    rows: u32,
    t: u32,
    heads: u32,
    group: u32,
    head_dim: u32,
    q_stride: u32,
    q_off: u32,
    k_stride: u32,
    k_off: u32,
    v_stride: u32,
    v_off: u32,
    scale: f32,
    window: u32,
) {
    let rows = rows as usize;
    let t = t as usize;
    let heads = heads as usize;
    let group = group as usize;
    let kv_heads = heads / group;
    let dh = head_dim as usize;
    let window = window as usize;
    let q_stride = q_stride as usize;
    let q_off = q_off as usize;
    let k_stride = k_stride as usize;
    let k_off = k_off as usize;
    let v_stride = v_stride as usize;
    let v_off = v_off as usize;
    let u = UNIT_POS as usize;
    let wg = CUBE_DIM as usize;
    let mut ks = SharedMemory::<f32>::new(WORKGROUP as usize);
    let mut vs = SharedMemory::<f32>::new(WORKGROUP as usize);
    let mut ps = SharedMemory::<f32>::new(WORKGROUP as usize);
    let mut ds = SharedMemory::<f32>::new(WORKGROUP as usize);
    let mut row = CUBE_POS;
    while row < rows {
        let j = row % t;
        let bg = row / t;
        let g = bg % kv_heads;
        let b = bg / kv_heads;
        sync_cube();
        if u < dh {
            ks[u] = k[(b * t + j) * k_stride + k_off + g * dh + u];
            vs[u] = v[(b * t + j) * v_stride + v_off + g * dh + u];
        }
        sync_cube();
        let mut acc_k = 0.0f32;
        let mut acc_v = 0.0f32;
        for hh in 0..group {
            let h = g * group + hh;
            let mut c0 = j;
            while c0 < t {
                let i = c0 + u;
                let ii = min(i, t - 1);
                let sees = i < t && first_key(positions, b, t, ii, window) <= j;
                let at = (b * heads + h) * t + ii;
                let s = dot_shared(&ks, q, (b * t + ii) * q_stride + q_off + h * dh, dh) * scale;
                let p = f32::exp(min(s - lse[at], 0.0f32));
                let dp = dot_shared(&vs, dy, (b * t + ii) * heads * dh + h * dh, dh);
                sync_cube();
                ps[u] = select(sees, p, 0.0f32);
                ds[u] = select(sees, p * (dp - delta[at]), 0.0f32);
                sync_cube();
                if u < dh {
                    let n = min(wg, t - c0);
                    for x in 0..n {
                        let at_x = (b * t + c0 + x) * heads * dh + h * dh + u;
                        acc_v += ps[x] * dy[at_x];
                        acc_k += ds[x] * q[(b * t + c0 + x) * q_stride + q_off + h * dh + u];
                    }
                }
                c0 += wg;
            }
        }
        if u < dh {
            let at = (b * t + j) * kv_heads * dh + g * dh + u;
            dk[at] = acc_k * scale;
            dv[at] = acc_v;
        }
        row += CUBE_COUNT;
    }
}

/// Rotary embedding of `[rows, width]` (heads of `2 half` side by side), row `r` by the angles
/// of position `positions[r]`: the halves `x1`, `x2` of a head become `x1 cos - x2 sin` and
/// `x2 cos + x1 sin` (`transformers`' `rotate_half` form); `inverse` rotates back.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn rope_kernel(
    x: &Array<f32>,
    out: &mut Array<f32>,
    positions: &Array<u32>,
    cos: &Array<f32>,
    sin: &Array<f32>,
    n: u32,
    width: u32,
    half: u32,
    #[comptime] inverse: bool,
) {
    let n = n as usize;
    let width = width as usize;
    let half = half as usize;
    let stride = CUBE_COUNT * CUBE_DIM as usize;
    let mut idx = ABSOLUTE_POS;
    while idx < n {
        let r = idx / width;
        let d = (idx - r * width) % (2 * half);
        let head = idx - d;
        let i = select(d < half, d, d - half);
        let at = positions[r] as usize * half + i;
        let c = cos[at];
        let mut s = sin[at];
        if inverse {
            s = -s;
        }
        let x1 = x[head + i];
        let x2 = x[head + i + half];
        out[idx] = select(d < half, x1 * c - x2 * s, x2 * c + x1 * s);
        idx += stride;
    }
}

// ---------------------------------------------------------------------------------------------
// Launching.

/// An f32 tensor's elements as one row-major buffer (a copy only when it is a strided view).
fn dense<R: CubeRuntime>(t: &CubeTensor<R>) -> Option<CubeTensor<R>> {
    let n = t.shape().num_elements();
    (t.dtype() == DType::F32 && n > 0 && n <= u32::MAX as usize).then(|| into_contiguous(t.clone()))
}

/// [`dense`], and safe to write in place (copied when shared).
fn exclusive<R: CubeRuntime>(t: CubeTensor<R>) -> CubeTensor<R> {
    let t = into_contiguous(t);
    match t.can_mut() {
        true => t,
        false => t.copy(),
    }
}

fn empty_like<R: CubeRuntime>(t: &CubeTensor<R>, shape: Shape) -> CubeTensor<R> {
    empty_device_contiguous_dtype(t.client.clone(), t.device.clone(), shape, DType::F32)
}

/// `values` in a new device buffer, as a kernel's array argument.
fn upload<R: CubeRuntime, T: Pod>(like: &CubeTensor<R>, values: &[T]) -> ArrayArg<R> {
    // SAFETY: `T` is u32 or f32: no padding, every byte initialised.
    let bytes = unsafe {
        std::slice::from_raw_parts(values.as_ptr().cast::<u8>(), std::mem::size_of_val(values))
    };
    let handle = like.client.create_from_slice(bytes);
    // SAFETY: the handle holds exactly `values.len()` elements of the kernel's element type.
    unsafe { ArrayArg::from_raw_parts(handle, values.len()) }
}

/// Element types uploaded as they are in memory.
trait Pod: Copy {}
impl Pod for u32 {}
impl Pod for f32 {}

fn elementwise(n: usize) -> (CubeCount, CubeDim) {
    let groups = n.div_ceil(WORKGROUP as usize).clamp(1, MAX_WORKGROUPS);
    (CubeCount::new_1d(groups as u32), CubeDim::new_1d(WORKGROUP))
}

fn rowwise(rows: usize) -> (CubeCount, CubeDim) {
    (
        CubeCount::new_1d(rows.clamp(1, MAX_ROW_WORKGROUPS) as u32),
        CubeDim::new_1d(WORKGROUP),
    )
}

/// Rows and width of a tensor normalised over its last dimension.
fn rows_of<R: CubeRuntime>(x: &CubeTensor<R>, width: usize) -> usize {
    let shape = x.shape();
    assert_eq!(shape[shape.num_dims() - 1], width, "normalised width");
    shape.num_elements() / width
}

/// `[blocks, c]` partial column sums of a norm's backward, added up into `[c]`.
fn sum_blocks<R: CubeRuntime>(partial: CubeTensor<R>, blocks: usize, c: usize) -> CubeTensor<R> {
    let out = empty_like(&partial, Shape::from(vec![c]));
    let (count, dim) = elementwise(c);
    // SAFETY: `partial` holds blocks * c elements, `out` c; the kernel reads and writes only
    // below those.
    unsafe {
        sum_blocks_kernel::launch_unchecked::<R>(
            &partial.client,
            count,
            dim,
            partial.clone().into_array_arg(),
            out.clone().into_array_arg(),
            blocks as u32,
            c as u32,
        );
    }
    out
}

impl<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement> DeviceOps
    for CubeBackend<R, F, I, BT>
{
    fn device_gelu_tanh(x: &FloatTensor<Self>) -> Option<FloatTensor<Self>> {
        let x = dense(x)?;
        let n = x.shape().num_elements();
        let y = empty_like(&x, x.shape());
        let (count, dim) = elementwise(n);
        // SAFETY (every launch below): the kernels index their arrays only below the element
        // counts passed with them, which are the arrays' lengths.
        unsafe {
            gelu_kernel::launch_unchecked::<R>(
                &x.client,
                count,
                dim,
                x.clone().into_array_arg(),
                y.clone().into_array_arg(),
                n as u32,
            );
        }
        Some(y)
    }

    fn device_gelu_tanh_backward(
        x: &FloatTensor<Self>,
        dy: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        let x = into_contiguous(x.clone());
        let dy = exclusive(dy);
        let n = x.shape().num_elements();
        let (count, dim) = elementwise(n);
        unsafe {
            gelu_backward_kernel::launch_unchecked::<R>(
                &x.client.clone(),
                count,
                dim,
                x.into_array_arg(),
                dy.clone().into_array_arg(),
                n as u32,
            );
        }
        dy
    }

    fn device_swiglu(
        gate: &FloatTensor<Self>,
        up: &FloatTensor<Self>,
    ) -> Option<FloatTensor<Self>> {
        let (g, u) = (dense(gate)?, dense(up)?);
        let n = g.shape().num_elements();
        assert_eq!(n, u.shape().num_elements(), "SwiGLU inputs of one shape");
        let h = empty_like(&g, g.shape());
        let (count, dim) = elementwise(n);
        unsafe {
            swiglu_kernel::launch_unchecked::<R>(
                &g.client,
                count,
                dim,
                g.clone().into_array_arg(),
                u.into_array_arg(),
                h.clone().into_array_arg(),
                n as u32,
            );
        }
        Some(h)
    }

    fn device_swiglu_backward(
        gate: &FloatTensor<Self>,
        up: &FloatTensor<Self>,
        dh: FloatTensor<Self>,
    ) -> [FloatTensor<Self>; 2] {
        let (g, u) = (into_contiguous(gate.clone()), into_contiguous(up.clone()));
        let dg = exclusive(dh);
        let n = g.shape().num_elements();
        let du = empty_like(&g, g.shape());
        let (count, dim) = elementwise(n);
        unsafe {
            swiglu_backward_kernel::launch_unchecked::<R>(
                &g.client,
                count,
                dim,
                g.clone().into_array_arg(),
                u.into_array_arg(),
                dg.clone().into_array_arg(),
                du.clone().into_array_arg(),
                n as u32,
            );
        }
        [dg, du]
    }

    fn device_layer_norm(
        x: &FloatTensor<Self>,
        weight: &FloatTensor<Self>,
        bias: &FloatTensor<Self>,
        eps: f64,
    ) -> Option<[FloatTensor<Self>; 3]> {
        let (x, w, b) = (dense(x)?, dense(weight)?, dense(bias)?);
        let c = w.shape().num_elements();
        let rows = rows_of(&x, c);
        let y = empty_like(&x, x.shape());
        let mean = empty_like(&x, Shape::from(vec![rows]));
        let rstd = empty_like(&x, Shape::from(vec![rows]));
        let (count, dim) = rowwise(rows);
        unsafe {
            layer_norm_kernel::launch_unchecked::<R>(
                &x.client,
                count,
                dim,
                x.clone().into_array_arg(),
                w.into_array_arg(),
                b.into_array_arg(),
                y.clone().into_array_arg(),
                mean.clone().into_array_arg(),
                rstd.clone().into_array_arg(),
                rows as u32,
                c as u32,
                1.0 / c as f32,
                eps as f32,
            );
        }
        Some([y, mean, rstd])
    }

    fn device_layer_norm_backward(
        x: &FloatTensor<Self>,
        weight: &FloatTensor<Self>,
        mean: &FloatTensor<Self>,
        rstd: &FloatTensor<Self>,
        dy: FloatTensor<Self>,
    ) -> [FloatTensor<Self>; 3] {
        let (x, w, dy) = (
            into_contiguous(x.clone()),
            into_contiguous(weight.clone()),
            into_contiguous(dy),
        );
        let c = w.shape().num_elements();
        let rows = rows_of(&x, c);
        let blocks = rows.div_ceil(ROW_BLOCK as usize);
        let dx = empty_like(&x, x.shape());
        let pdw = empty_like(&x, Shape::from(vec![blocks, c]));
        let pdb = empty_like(&x, Shape::from(vec![blocks, c]));
        let (count, dim) = rowwise(rows);
        unsafe {
            layer_norm_dx_kernel::launch_unchecked::<R>(
                &x.client,
                count,
                dim,
                x.clone().into_array_arg(),
                w.into_array_arg(),
                mean.clone().into_array_arg(),
                rstd.clone().into_array_arg(),
                dy.clone().into_array_arg(),
                dx.clone().into_array_arg(),
                rows as u32,
                c as u32,
                1.0 / c as f32,
            );
        }
        let (count, dim) = elementwise(blocks * c);
        unsafe {
            layer_norm_dwdb_kernel::launch_unchecked::<R>(
                &x.client,
                count,
                dim,
                x.clone().into_array_arg(),
                mean.clone().into_array_arg(),
                rstd.clone().into_array_arg(),
                dy.into_array_arg(),
                pdw.clone().into_array_arg(),
                pdb.clone().into_array_arg(),
                rows as u32,
                c as u32,
            );
        }
        [dx, sum_blocks(pdw, blocks, c), sum_blocks(pdb, blocks, c)]
    }

    fn device_rms_norm(
        x: &FloatTensor<Self>,
        weight: &FloatTensor<Self>,
        eps: f64,
    ) -> Option<[FloatTensor<Self>; 2]> {
        let (x, w) = (dense(x)?, dense(weight)?);
        let c = w.shape().num_elements();
        let rows = rows_of(&x, c);
        let y = empty_like(&x, x.shape());
        let rstd = empty_like(&x, Shape::from(vec![rows]));
        let (count, dim) = rowwise(rows);
        unsafe {
            rms_norm_kernel::launch_unchecked::<R>(
                &x.client,
                count,
                dim,
                x.clone().into_array_arg(),
                w.into_array_arg(),
                y.clone().into_array_arg(),
                rstd.clone().into_array_arg(),
                rows as u32,
                c as u32,
                1.0 / c as f32,
                eps as f32,
            );
        }
        Some([y, rstd])
    }

    fn device_rms_norm_backward(
        x: &FloatTensor<Self>,
        weight: &FloatTensor<Self>,
        rstd: &FloatTensor<Self>,
        dy: FloatTensor<Self>,
    ) -> [FloatTensor<Self>; 2] {
        let (x, w, dy) = (
            into_contiguous(x.clone()),
            into_contiguous(weight.clone()),
            into_contiguous(dy),
        );
        let c = w.shape().num_elements();
        let rows = rows_of(&x, c);
        let blocks = rows.div_ceil(ROW_BLOCK as usize);
        let dx = empty_like(&x, x.shape());
        let pdw = empty_like(&x, Shape::from(vec![blocks, c]));
        let (count, dim) = rowwise(rows);
        unsafe {
            rms_norm_dx_kernel::launch_unchecked::<R>(
                &x.client,
                count,
                dim,
                x.clone().into_array_arg(),
                w.into_array_arg(),
                rstd.clone().into_array_arg(),
                dy.clone().into_array_arg(),
                dx.clone().into_array_arg(),
                rows as u32,
                c as u32,
                1.0 / c as f32,
            );
        }
        let (count, dim) = elementwise(blocks * c);
        unsafe {
            rms_norm_dw_kernel::launch_unchecked::<R>(
                &x.client,
                count,
                dim,
                x.clone().into_array_arg(),
                rstd.clone().into_array_arg(),
                dy.into_array_arg(),
                pdw.clone().into_array_arg(),
                rows as u32,
                c as u32,
            );
        }
        [dx, sum_blocks(pdw, blocks, c)]
    }

    fn device_causal_softmax(
        scores: &FloatTensor<Self>,
        divisor: f32,
    ) -> Option<FloatTensor<Self>> {
        let x = dense(scores)?;
        let shape = x.shape();
        let t = shape[shape.num_dims() - 1];
        let rows = shape.num_elements() / t;
        let p = empty_like(&x, shape);
        let (count, dim) = rowwise(rows);
        unsafe {
            causal_softmax_kernel::launch_unchecked::<R>(
                &x.client,
                count,
                dim,
                x.clone().into_array_arg(),
                p.clone().into_array_arg(),
                rows as u32,
                t as u32,
                divisor,
            );
        }
        Some(p)
    }

    fn device_causal_softmax_backward(
        p: &FloatTensor<Self>,
        dp: FloatTensor<Self>,
        divisor: f32,
    ) -> FloatTensor<Self> {
        let (p, dp) = (into_contiguous(p.clone()), into_contiguous(dp));
        let shape = p.shape();
        let t = shape[shape.num_dims() - 1];
        let rows = shape.num_elements() / t;
        let dx = empty_like(&p, shape);
        let (count, dim) = rowwise(rows);
        unsafe {
            causal_softmax_backward_kernel::launch_unchecked::<R>(
                &p.client,
                count,
                dim,
                p.clone().into_array_arg(),
                dp.into_array_arg(),
                dx.clone().into_array_arg(),
                rows as u32,
                t as u32,
                divisor,
            );
        }
        dx
    }

    fn device_cross_entropy(
        logits: &FloatTensor<Self>,
        targets: &DeviceTargets<'_>,
    ) -> Option<[FloatTensor<Self>; 2]> {
        let x = dense(logits)?;
        let shape = x.shape();
        let (rows, vocab) = (shape[0], shape[1]);
        assert_eq!(targets.tokens.len(), rows, "one target per row");
        assert!(
            targets.tokens.iter().all(|&t| (t as usize) < vocab),
            "target tokens within the vocabulary"
        );
        let lse = empty_like(&x, Shape::from(vec![rows]));
        let row_loss = empty_like(&x, Shape::from(vec![rows]));
        let loss = empty_like(&x, Shape::from(vec![1]));
        let ones;
        let weights = match targets.weights {
            Some(w) => w,
            None => {
                ones = vec![1f32; rows];
                &ones
            }
        };
        let (count, dim) = rowwise(rows);
        unsafe {
            cross_entropy_rows_kernel::launch_unchecked::<R>(
                &x.client,
                count,
                dim,
                x.clone().into_array_arg(),
                upload(&x, targets.tokens),
                upload(&x, weights),
                lse.clone().into_array_arg(),
                row_loss.clone().into_array_arg(),
                rows as u32,
                vocab as u32,
            );
            scaled_sum_kernel::launch_unchecked::<R>(
                &x.client,
                CubeCount::new_1d(1),
                CubeDim::new_1d(WORKGROUP),
                row_loss.into_array_arg(),
                loss.clone().into_array_arg(),
                rows as u32,
                1.0 / targets.divisor,
            );
        }
        Some([loss, lse])
    }

    fn device_cross_entropy_backward(
        logits: FloatTensor<Self>,
        lse: &FloatTensor<Self>,
        targets: &DeviceTargets<'_>,
        upstream: &FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        let x = exclusive(logits);
        let shape = x.shape();
        let (rows, vocab) = (shape[0], shape[1]);
        let n = rows * vocab;
        let ones;
        let weights = match targets.weights {
            Some(w) => w,
            None => {
                ones = vec![1f32; rows];
                &ones
            }
        };
        let (count, dim) = elementwise(n);
        unsafe {
            cross_entropy_backward_kernel::launch_unchecked::<R>(
                &x.client,
                count,
                dim,
                x.clone().into_array_arg(),
                into_contiguous(lse.clone()).into_array_arg(),
                upload(&x, targets.tokens),
                upload(&x, weights),
                into_contiguous(upstream.clone()).into_array_arg(),
                n as u32,
                vocab as u32,
                1.0 / targets.divisor,
            );
        }
        x
    }

    fn device_adamw(
        param: FloatTensor<Self>,
        grad: &FloatTensor<Self>,
        m: FloatTensor<Self>,
        v: FloatTensor<Self>,
        c: &Coefficients,
    ) -> Result<[FloatTensor<Self>; 3], [FloatTensor<Self>; 3]> {
        let Some(grad) = dense(grad) else {
            return Err([param, m, v]);
        };
        if [&param, &m, &v].iter().any(|t| t.dtype() != DType::F32) {
            return Err([param, m, v]);
        }
        let (param, m, v) = (exclusive(param), exclusive(m), exclusive(v));
        let n = grad.shape().num_elements();
        assert!(
            [&param, &m, &v]
                .iter()
                .all(|t| t.shape().num_elements() == n),
            "AdamW: parameter, gradient and moments of one length"
        );
        let (count, dim) = elementwise(n);
        unsafe {
            adamw_kernel::launch_unchecked::<R>(
                &grad.client.clone(),
                count,
                dim,
                param.clone().into_array_arg(),
                m.clone().into_array_arg(),
                v.clone().into_array_arg(),
                grad.into_array_arg(),
                n as u32,
                c.beta1,
                c.beta2,
                c.eps,
                c.step_size,
                c.bc2_sqrt,
                c.decay,
                c.grad_scale,
            );
        }
        Ok([param, m, v])
    }

    fn device_attention(
        q: &FloatTensor<Self>,
        k: &FloatTensor<Self>,
        v: &FloatTensor<Self>,
        l: &AttentionLayout,
        positions: &[u32],
    ) -> Option<[FloatTensor<Self>; 2]> {
        if l.head_dim == 0 || l.head_dim > WORKGROUP as usize {
            return None;
        }
        let (q, k, v) = (dense(q)?, dense(k)?, dense(v)?);
        assert_eq!(positions.len(), l.batch * l.t, "one position per token");
        let rows = l.batch * l.heads * l.t;
        let y = empty_like(&q, Shape::from(vec![l.batch, l.t, l.heads * l.head_dim]));
        let lse = empty_like(&q, Shape::from(vec![l.batch, l.heads, l.t]));
        let (count, dim) = rowwise(rows);
        unsafe {
            attention_kernel::launch_unchecked::<R>(
                &q.client.clone(),
                count,
                dim,
                q.into_array_arg(),
                k.into_array_arg(),
                v.into_array_arg(),
                upload(&y, positions),
                y.clone().into_array_arg(),
                lse.clone().into_array_arg(),
                rows as u32,
                l.t as u32,
                l.heads as u32,
                (l.heads / l.kv_heads) as u32,
                l.head_dim as u32,
                l.q.0 as u32,
                l.q.1 as u32,
                l.k.0 as u32,
                l.k.1 as u32,
                l.v.0 as u32,
                l.v.1 as u32,
                l.scale,
                l.window.unwrap_or(0) as u32,
            );
        }
        Some([y, lse])
    }

    fn device_attention_backward(
        q: &FloatTensor<Self>,
        k: &FloatTensor<Self>,
        v: &FloatTensor<Self>,
        y: &FloatTensor<Self>,
        lse: &FloatTensor<Self>,
        dy: FloatTensor<Self>,
        l: &AttentionLayout,
        positions: &[u32],
    ) -> [FloatTensor<Self>; 3] {
        let [q, k, v, y, lse, dy] =
            [q.clone(), k.clone(), v.clone(), y.clone(), lse.clone(), dy].map(into_contiguous);
        let rows = l.batch * l.heads * l.t;
        let dq = empty_like(&q, Shape::from(vec![l.batch, l.t, l.heads * l.head_dim]));
        let kv_shape = Shape::from(vec![l.batch, l.t, l.kv_heads * l.head_dim]);
        let (dk, dv) = (empty_like(&q, kv_shape.clone()), empty_like(&q, kv_shape));
        let delta = empty_like(&q, Shape::from(vec![rows]));
        let client = q.client.clone();
        let scalars = [l.q.0, l.q.1, l.k.0, l.k.1, l.v.0, l.v.1].map(|x| x as u32);
        let (count, dim) = rowwise(rows);
        unsafe {
            attention_dq_kernel::launch_unchecked::<R>(
                &client,
                count,
                dim,
                q.clone().into_array_arg(),
                k.clone().into_array_arg(),
                v.clone().into_array_arg(),
                upload(&q, positions),
                y.into_array_arg(),
                dy.clone().into_array_arg(),
                lse.clone().into_array_arg(),
                dq.clone().into_array_arg(),
                delta.clone().into_array_arg(),
                rows as u32,
                l.t as u32,
                l.heads as u32,
                (l.heads / l.kv_heads) as u32,
                l.head_dim as u32,
                scalars[0],
                scalars[1],
                scalars[2],
                scalars[3],
                scalars[4],
                scalars[5],
                l.scale,
                l.window.unwrap_or(0) as u32,
            );
        }
        let kv_rows = l.batch * l.kv_heads * l.t;
        let (count, dim) = rowwise(kv_rows);
        unsafe {
            attention_dkv_kernel::launch_unchecked::<R>(
                &client,
                count,
                dim,
                q.clone().into_array_arg(),
                k.into_array_arg(),
                v.into_array_arg(),
                upload(&q, positions),
                dy.into_array_arg(),
                lse.into_array_arg(),
                delta.into_array_arg(),
                dk.clone().into_array_arg(),
                dv.clone().into_array_arg(),
                kv_rows as u32,
                l.t as u32,
                l.heads as u32,
                (l.heads / l.kv_heads) as u32,
                l.head_dim as u32,
                scalars[0],
                scalars[1],
                scalars[2],
                scalars[3],
                scalars[4],
                scalars[5],
                l.scale,
                l.window.unwrap_or(0) as u32,
            );
        }
        [dq, dk, dv]
    }

    fn device_rope(
        x: &FloatTensor<Self>,
        rope: &RotaryTables,
        positions: &[u32],
        inverse: bool,
    ) -> Option<FloatTensor<Self>> {
        let x = dense(x)?;
        let shape = x.shape();
        let width = shape[shape.num_dims() - 1];
        let n = shape.num_elements();
        assert_eq!(positions.len(), n / width, "one position per row");
        assert!(width % (2 * rope.half) == 0, "rows of whole heads");
        // The tables' rows up to the largest position used.
        let used = positions.iter().max().map_or(0, |&p| p as usize + 1);
        let (cos, sin) = (&rope.cos[..used * rope.half], &rope.sin[..used * rope.half]);
        let out = empty_like(&x, shape);
        let (count, dim) = elementwise(n);
        unsafe {
            rope_kernel::launch_unchecked::<R>(
                &x.client.clone(),
                count,
                dim,
                x.into_array_arg(),
                out.clone().into_array_arg(),
                upload(&out, positions),
                upload(&out, cos),
                upload(&out, sin),
                n as u32,
                width as u32,
                rope.half as u32,
                inverse,
            );
        }
        Some(out)
    }
}
