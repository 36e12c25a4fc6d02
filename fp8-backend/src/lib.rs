//! FP8 formats, FP8-AMAX scaling and the `Fp8<B>` backend decorator.
pub mod decorator;
pub mod kernel;
pub mod linear;
pub use decorator::Fp8;
pub use kernel::Fp8Kernels;
