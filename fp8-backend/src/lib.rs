//! FP8 formats, FP8-AMAX scaling and the `Fp8<B>` Burn backend decorator.
//!
//! Implements the FP8-AMAX method of Perez et al., "Training and inference of large language
//! models using 8-bit floating point" (arXiv 2309.17224): every linear layer's weights and
//! activations are cast to E4 and its gradients to E5, each tensor with its own power-of-two
//! scale chosen from its absolute maximum at every call. `Autodiff<Fp8<B>>` trains any Burn model
//! built from `burn::nn::Linear` this way; everything else runs on `B` untouched.
//!
//! ```text
//! cargo bench -p fp8-backend --bench quantize
//! ```

pub mod context;
pub mod decorator;
pub mod format;
pub mod kernel;
pub mod linear;
pub mod scaling;

pub use context::{
    current_policy, install, take_report, with_policy, Fp8Guard, Fp8Report, LinearOp,
    NonFiniteEvent, QuantRecord,
};
pub use decorator::Fp8;
pub use format::{Fp8Family, Fp8Format, Role, UnknownName};
pub use kernel::{Fp8Kernels, QuantOutput, QuantStats};
pub use scaling::{
    amax_bias, quantize_scaled, BiasRule, Fp8Policy, NonFiniteAmax, Scaling,
    DEFAULT_GRADIENT_MARGIN, MAX_BIAS,
};
