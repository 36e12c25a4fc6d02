//! Side-by-side throughput of FP8 fake quantization and of an FP8 linear layer.
//!
//! ```text
//! cargo bench -p fp8-backend --bench quantize
//! ```
//!
//! Prints, in one run on the same machine:
//! 1. fake quantization (amax pass + cast pass) of a 16M-element f32 tensor against a plain
//!    parallel copy of the same tensor, the memory-bound limit; throughput is tensor bytes per
//!    second (4 bytes per element), so the ratio is the fraction of copy speed reached;
//! 2. forward + backward of a 768 -> 3072 `burn::nn::Linear` on [8*256, 768] inputs on
//!    `Autodiff<Fp8<NdArray>>` with FP8-AMAX against FP8 off (the targets: at least 50 % of copy
//!    bandwidth, at most 1.25x the f32 step).

mod common;

use std::hint::black_box;
use std::time::Duration;

use burn::backend::{Autodiff, NdArray};
use burn::nn::{Linear, LinearConfig};
use burn::tensor::ops::FloatTensorOps;
use burn::tensor::{Distribution, Tensor, TensorData};
use common::median_time;
use fp8_backend::kernel::cpu;
use fp8_backend::{BiasRule, Fp8, Fp8Format, Fp8Kernels, Fp8Policy};
use rayon::prelude::*;

fn gbps(bytes: usize, t: Duration) -> f64 {
    bytes as f64 / t.as_secs_f64() / 1e9
}

fn quantize_throughput() {
    const N: usize = 16 << 20;
    let src: Vec<f32> = (0..N).map(|i| ((i as f32) * 0.618).sin() * 3.0).collect();
    let mut dst = vec![0.0f32; N];
    let bytes = N * 4;

    let copy = median_time(9, || {
        dst.par_chunks_mut(1 << 16)
            .zip(src.par_chunks(1 << 16))
            .for_each(|(d, s)| d.copy_from_slice(s));
        black_box(&dst);
    });
    let rule = BiasRule::Amax { margin: 0 };
    let slice = median_time(9, || {
        black_box(cpu::quantize_slice(
            &src,
            &mut dst,
            Fp8Format::E4M3Fnuz,
            rule,
            false,
        ));
    });
    let slice_stats = median_time(9, || {
        black_box(cpu::quantize_slice(
            &src,
            &mut dst,
            Fp8Format::E4M3Fnuz,
            rule,
            true,
        ));
    });
    let amax_only = median_time(9, || {
        black_box(cpu::amax_bits(&src));
    });
    let cast_only = median_time(9, || {
        cpu::cast_into(&src, &mut dst, Fp8Format::E4M3Fnuz, 3);
        black_box(&dst);
    });
    let device = Default::default();
    let tensor = Nd::float_from_data(TensorData::new(src.clone(), [N]), &device);
    // The same allocation a Burn op pays: an elementwise op producing a new tensor.
    let backend_op = median_time(9, || {
        black_box(Nd::float_mul_scalar(tensor.clone(), 1.0.into()));
    });
    let backend = median_time(9, || {
        black_box(Nd::fp8_quantize(
            tensor.clone(),
            Fp8Format::E4M3Fnuz,
            rule,
            false,
        ));
    });

    println!(
        "fake quantization of {N} f32 ({} MB), {} rayon threads",
        bytes >> 20,
        rayon::current_num_threads()
    );
    println!(
        "  {:<44} {:>8.2} GB/s  {:>6.1} ms  ratio",
        "plain f32 copy (memory-bound limit)",
        gbps(bytes, copy),
        copy.as_secs_f64() * 1e3
    );
    for (name, t) in [
        ("  amax pass alone", amax_only),
        ("  cast pass alone", cast_only),
        ("amax + cast, slice kernel", slice),
        ("amax + cast + statistics, slice kernel", slice_stats),
        ("NdArray x * 1.0 (allocating, for reference)", backend_op),
        ("amax + cast, NdArray tensor (allocating)", backend),
    ] {
        println!(
            "  {:<44} {:>8.2} GB/s  {:>6.1} ms  {:.2} of copy",
            name,
            gbps(bytes, t),
            t.as_secs_f64() * 1e3,
            copy.as_secs_f64() / t.as_secs_f64()
        );
    }
}

type Nd = NdArray<f32>;
type B = Autodiff<Fp8<Nd>>;

fn linear_step(layer: &Linear<B>, x: &Tensor<B, 2>) {
    let y = layer.forward(x.clone());
    let grads = y.sum().backward();
    black_box(layer.weight.grad(&grads));
}

fn linear_layer_step() {
    let device = Default::default();
    let layer: Linear<B> = LinearConfig::new(768, 3072).init(&device);
    // x requires a gradient so that all three GEMMs run, as inside a network.
    let x = Tensor::<B, 2>::random([8 * 256, 768], Distribution::Normal(0.0, 1.0), &device)
        .require_grad();

    let off = median_time(5, || {
        fp8_backend::with_policy(Fp8Policy::off(), || linear_step(&layer, &x))
    });
    let amax = median_time(5, || {
        fp8_backend::with_policy(Fp8Policy::amax(), || linear_step(&layer, &x))
    });
    println!("forward + backward, Linear 768 -> 3072 on [2048, 768] (Autodiff<Fp8<NdArray>>)");
    println!(
        "  {:<44} {:>8.1} ms",
        "FP8 off (f32)",
        off.as_secs_f64() * 1e3
    );
    println!(
        "  {:<44} {:>8.1} ms  {:.2}x the f32 step",
        "FP8-AMAX (E4 x, W; E5 dY)",
        amax.as_secs_f64() * 1e3,
        amax.as_secs_f64() / off.as_secs_f64()
    );
}

fn main() {
    quantize_throughput();
    linear_layer_step();
}
