//! FP8 formats, FP8-AMAX scaling and the `Fp8<B>` Burn backend decorator.
//!
//! Implements the FP8-AMAX method of Perez et al., "Training and inference of large language
//! models using 8-bit floating point" (arXiv 2309.17224): every linear layer's weights and
//! activations are cast to E4 and its gradients to E5, each tensor with its own power-of-two
//! scale chosen from its absolute maximum at every call (docs/design.md, "FP8 numerics").
//!
//! Two ways in:
//! - a model that names its layers calls [`fp8_linear`] with each layer's [`Fp8Site`] on
//!   `Fp8<B>` or `Autodiff<Fp8<B>>`; the policy and the statistics travel with the site's
//!   [`Fp8Context`] (the trainer's GPT-2 does this);
//! - any Burn model built from `burn::nn::Linear` trains on `Autodiff<Fp8<B>>` under a policy
//!   installed on the thread ([`install`], [`with_policy`]), its layers known by call order.
//!
//! Everything else runs on `B` untouched.
//!
//! ```text
//! cargo bench -p fp8-backend --bench quantize
//! ```

pub mod autodiff;
pub mod context;
pub mod decorator;
pub mod delayed;
pub mod format;
pub mod kernel;
pub mod linear;
pub mod peers;
pub mod policy;
pub mod profile;
pub mod report;
pub mod scaling;
pub mod simd;
pub mod site;
pub mod stored;

pub use autodiff::{fp8_linear, fp8_linear_stored, Fp8LinearOps};
pub use context::{
    current_policy, install, install_with_stats, take_report, with_policy, with_policy_and_stats,
    Fp8Guard,
};
pub use decorator::Fp8;
pub use delayed::{AmaxCompute, AmaxHistory};
pub use format::{Fp8Family, Fp8Format, Role, UnknownName};
pub use kernel::{Fp8Kernels, QuantOutput, QuantStats};
pub use peers::{AmaxReducer, CollectiveAmax};
pub use policy::{BaseStorage, Fp8Policy, HeadPrecision, LayerFilter, LayerFilterError, Precision};
pub use report::{Fp8Report, LayerId, LinearOp, NonFiniteEvent, QuantRecord};
pub use scaling::{
    amax_bias, quantize_scaled, BiasRule, NonFiniteAmax, DEFAULT_GRADIENT_MARGIN, MAX_BIAS,
};
pub use site::{Fp8Context, Fp8Site, FrozenHistories};
pub use stored::Fp8Weight;
