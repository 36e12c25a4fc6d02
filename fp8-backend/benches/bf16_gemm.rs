//! The CPU FP8 GEMM (bf16 products, f32 accumulation) against the f32 GEMM of FP8 operands
//! (the `gemm` crate, as burn-flex calls it), side by side on the FP8 linear's shapes.
//!
//! ```text
//! cargo bench -p fp8-backend --bench bf16_gemm
//! ```
//!
//! Each shape runs in the three layouts of the linear layer's GEMMs: forward `X W`
//! (both row-major), dX `dY W^T` (B transposed), dW `X^T dY` (A transposed).

mod common;

use std::hint::black_box;

use common::median_time;
use fp8_backend::kernel::bf16_gemm::{self, MatRef};

/// Deterministic values on the E4M3 grid (small integers times powers of two), as f32 and bf16.
fn operand(len: usize, seed: u64) -> (Vec<f32>, Vec<u16>) {
    let mut s = seed;
    let f: Vec<f32> = (0..len)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let mant = ((s >> 33) % 16) as f32 - 8.0;
            let exp = ((s >> 40) % 8) as i32 - 6;
            mant * 2f32.powi(exp)
        })
        .collect();
    let b = f.iter().map(|x| (x.to_bits() >> 16) as u16).collect();
    (f, b)
}

fn f32_gemm(
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    a_t: bool,
    b: &[f32],
    b_t: bool,
    c: &mut [f32],
) {
    // (row stride, column stride) of A [m, k] and B [k, n] as stored.
    let (a_rs, a_cs) = if a_t {
        (1, m as isize)
    } else {
        (k as isize, 1)
    };
    let (b_rs, b_cs) = if b_t {
        (1, k as isize)
    } else {
        (n as isize, 1)
    };
    // SAFETY: the strides describe the buffers' m x k and k x n matrices; c holds m x n.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            n as isize,
            false,
            a.as_ptr(),
            a_cs,
            a_rs,
            b.as_ptr(),
            b_cs,
            b_rs,
            0.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::Rayon(0),
        );
    }
}

fn main() {
    if !bf16_gemm::supported() {
        println!("this CPU has no AVX512_BF16: nothing to compare");
        return;
    }
    println!("threads: {}", rayon::current_num_threads());
    println!(
        "{:<28} {:>9} {:>9} {:>9} {:>7}",
        "m x k x n (layout)", "f32 ms", "bf16 ms", "bf16 GF/s", "ratio"
    );
    let shapes = [
        (1024, 768, 3072),
        (1024, 3072, 768),
        (1024, 768, 768),
        (1024, 768, 2304),
        (1024, 768, 50257),
        (2048, 2048, 2048),
        (1024, 576, 1536),
        (1024, 1536, 576),
    ];
    for &(m, k, n) in &shapes {
        let (af, ab) = operand(m * k, 1);
        let (bf, bb) = operand(k * n, 2);
        let mut c = vec![0.0f32; m * n];
        for (name, a_t, b_t) in [
            ("X W", false, false),
            ("dY W^T", false, true),
            ("X^T dY", true, false),
        ] {
            let reps = if m * n * k > 1 << 31 { 5 } else { 15 };
            let tf = median_time(reps, || {
                f32_gemm(m, n, k, &af, a_t, &bf, b_t, black_box(&mut c))
            });
            let a = if a_t {
                MatRef::row_major(&ab, k, m).t()
            } else {
                MatRef::row_major(&ab, m, k)
            };
            let b = if b_t {
                MatRef::row_major(&bb, n, k).t()
            } else {
                MatRef::row_major(&bb, k, n)
            };
            let tb = median_time(reps, || bf16_gemm::gemm(a, b, black_box(&mut c)));
            let gf = 2.0 * (m * n * k) as f64 / tb.as_secs_f64() / 1e9;
            println!(
                "{:<28} {:>9.2} {:>9.2} {:>9.0} {:>7.2}",
                format!("{m}x{k}x{n} ({name})"),
                tf.as_secs_f64() * 1e3,
                tb.as_secs_f64() * 1e3,
                gf,
                tf.as_secs_f64() / tb.as_secs_f64()
            );
        }
    }
}
