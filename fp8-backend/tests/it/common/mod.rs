//! Helpers shared by the decorator's tests: deterministic operands, the host-side AMAX fake
//! quantization with the scalar reference that the expected values are built from, and the
//! switch to CUDA's device kernel.

use fp8_backend::{amax_bias, quantize_scaled, Fp8Format};

/// Deterministic values spread over several binades, so that formats and biases matter.
pub fn values(n: usize, seed: u32, scale: f32) -> Vec<f32> {
    (0..n)
        .map(|i| {
            let h = (i as u32)
                .wrapping_mul(2_654_435_761)
                .wrapping_add(seed.wrapping_mul(40_503));
            let m = 1.0 + (h % 1000) as f32 / 1000.0;
            let e = ((h >> 10) % 12) as i32 - 6;
            let s = if (h >> 20) & 1 == 1 { -1.0 } else { 1.0 };
            s * m * 2f32.powi(e) * scale
        })
        .collect()
}

/// max |x|.
pub fn amax(xs: &[f32]) -> f32 {
    xs.iter().fold(0f32, |m, x| m.max(x.abs()))
}

/// Host-side AMAX fake quantization with the scalar reference.
pub fn q(xs: &[f32], format: Fp8Format, margin: i32) -> Vec<f32> {
    let bias = amax_bias(amax(xs), format, margin).unwrap();
    xs.iter()
        .map(|&x| quantize_scaled(x, format, bias))
        .collect()
}

/// The bit patterns of a tensor's values.
pub fn bits<const D: usize, B: burn::tensor::backend::Backend>(
    t: burn::tensor::Tensor<B, D>,
) -> Vec<u32> {
    t.into_data()
        .to_vec::<f32>()
        .unwrap()
        .iter()
        .map(|x| x.to_bits())
        .collect()
}

/// Makes CUDA quantize with the device kernel (`FP8_CUDA_KERNEL=device`,
/// `fp8_backend::kernel::CUDA_KERNEL_ENV`): the CUDA tests are about that kernel, which CUDA
/// otherwise takes only when asked (docs/design.md "Kernels"). Every CUDA test calls this before
/// its first cast.
///
/// The tests of this binary are threads of one process, and the variable is process-wide: set
/// while another thread reads the environment (the CUDA driver does, through libc), it is a data
/// race, and the kernel choice is read once per process anyway (`kernel/cube.rs`). So it is set
/// once, under a `Once` that every CUDA test passes before touching CUDA: the first sets it, the
/// others wait until it is set, and no CUDA code runs before.
#[cfg(feature = "cuda")]
pub fn cuda_device_kernel() {
    static SET: std::sync::Once = std::sync::Once::new();
    SET.call_once(|| std::env::set_var(fp8_backend::kernel::CUDA_KERNEL_ENV, "device"));
}

/// A device tensor's values, read back to the host as f32 (the wgpu and CUDA tests).
#[cfg(any(feature = "wgpu", feature = "cuda"))]
pub fn download<B: burn::tensor::backend::Backend>(
    t: burn::tensor::ops::FloatTensor<B>,
) -> Vec<f32> {
    burn::tensor::read_sync(B::float_into_data(t))
        .expect("reading a tensor back")
        .convert::<f32>()
        .into_vec()
        .expect("f32 data")
}
