//! fp8-backend's integration tests: one test binary for the crate (each binary links all of
//! Burn: one per crate keeps test builds short and small), one module per behaviour.
//! `cargo test -p fp8-backend --test it golden::` runs one module; the wgpu and CUDA tests need
//! the crate's `wgpu` / `cuda` feature.

mod common;

mod anonymous_layers;
mod delayed_scaling;
mod device_kernel;
mod device_linear;
mod flex_kernels;
mod generated_ops;
mod golden;
mod named_layers;
mod ndarray_views;
mod passthrough;
mod peers;
mod quantizer_properties;
