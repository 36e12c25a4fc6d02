//! Time spent in GEMMs, for `fp8-trainer bench`'s "GEMM share". Off by default: then each
//! GEMM pays one relaxed atomic load. On a CPU backend the GEMM calls are synchronous, so the
//! wall time around them is their cost; on a device backend they only enqueue work, and the
//! figure means nothing (the benchmark does not report it there).
//!
//! Counted: every `float_matmul` that reaches `Fp8<B>` (attention's batched matmuls, the LM
//! head, f32 projections and autodiff's matmul backward) and the three GEMMs of every FP8
//! linear layer (`crate::linear`, bias addition included).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use burn::tensor::ops::FloatTensor;

use crate::kernel::Fp8Kernels;

static ON: AtomicBool = AtomicBool::new(false);
static NANOS: AtomicU64 = AtomicU64::new(0);
static CALLS: AtomicU64 = AtomicU64::new(0);

/// Starts or stops timing GEMMs (process-wide).
pub fn set_enabled(on: bool) {
    ON.store(on, Ordering::Relaxed);
}

/// The GEMM time and call count since the last call.
pub fn take() -> (Duration, u64) {
    let nanos = NANOS.swap(0, Ordering::Relaxed);
    (
        Duration::from_nanos(nanos),
        CALLS.swap(0, Ordering::Relaxed),
    )
}

/// Runs `f`, a GEMM, timing it when profiling is on.
#[inline]
pub fn gemm<R>(f: impl FnOnce() -> R) -> R {
    if !ON.load(Ordering::Relaxed) {
        return f();
    }
    let start = Instant::now();
    let out = f();
    NANOS.fetch_add(start.elapsed().as_nanos() as u64, Ordering::Relaxed);
    CALLS.fetch_add(1, Ordering::Relaxed);
    out
}

/// `Fp8<B>`'s `float_matmul`: [`Fp8Kernels::matmul`], timed.
pub fn matmul<B: Fp8Kernels>(lhs: FloatTensor<B>, rhs: FloatTensor<B>) -> FloatTensor<B> {
    gemm(|| B::matmul(lhs, rhs))
}
