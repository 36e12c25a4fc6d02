//! fp8-backend's integration tests: one test binary for the crate (each binary links all of
//! Burn: one per crate keeps test builds short and small), one module per behaviour.
//! `cargo test -p fp8-backend --test it golden::` runs one module; the wgpu and CUDA tests need
//! the crate's `wgpu` / `cuda` feature.
//!
//! The tests run on threads of one process, so what one sets for the process it sets for all.
//! `FP8_CUDA_KERNEL` is set once, for every CUDA test (`common::cuda_device_kernel`). The FP8
//! policy of anonymous layers is thread-local and each test runs on a thread of its own;
//! burn-collective's group (one per backend type and process) is used by one test only (`peers`);
//! no test seeds a backend's random number generator (every operand is computed from a fixed
//! formula).

mod common;

mod anonymous_layers;
mod cpu_fp8_gemm;
mod delayed_scaling;
mod device_kernel;
mod device_linear;
mod flex_kernels;
mod fp8_mma;
mod generated_ops;
mod golden;
mod named_layers;
mod ndarray_views;
mod passthrough;
mod peers;
mod quantizer_properties;
mod stored_weights;
