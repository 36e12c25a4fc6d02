//! `Fp8<B>` itself and its `Backend` impl; the ops traits are in `ops/` (generated).

use core::fmt;
use core::marker::PhantomData;

use burn::tensor::backend::{Backend, BackendTypes, DTypeUsageSet, ExecutionError};
use burn::tensor::{DType, TensorData};

use crate::kernel::Fp8Kernels;

/// Backend decorator: `B` with FP8 linear layers. Zero-sized, like `Autodiff<B>`.
pub struct Fp8<B> {
    _backend: PhantomData<B>,
}

// By hand rather than derived: a derive would demand `B: Copy` (and `B: Default` ...) although
// no `B` is stored.
impl<B> Clone for Fp8<B> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<B> Copy for Fp8<B> {}

impl<B> Default for Fp8<B> {
    fn default() -> Self {
        Self {
            _backend: PhantomData,
        }
    }
}

impl<B> fmt::Debug for Fp8<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fp8<{}>", core::any::type_name::<B>())
    }
}

/// Exactly B's types, so that every forwarded op is a plain call (no wrapper tensors).
impl<B: Fp8Kernels> BackendTypes for Fp8<B> {
    type Device = B::Device;

    type FloatTensorPrimitive = B::FloatTensorPrimitive;
    type FloatElem = B::FloatElem;

    type IntTensorPrimitive = B::IntTensorPrimitive;
    type IntElem = B::IntElem;

    type BoolTensorPrimitive = B::BoolTensorPrimitive;
    type BoolElem = B::BoolElem;

    type QuantizedTensorPrimitive = B::QuantizedTensorPrimitive;
}

/// Every method, defaulted ones included, forwards to `B` so that B's own overrides are used.
impl<B: Fp8Kernels> Backend for Fp8<B> {
    fn ad_enabled(device: &Self::Device) -> bool {
        B::ad_enabled(device)
    }

    fn memory_persistent_allocations<
        Output: Send,
        Input: Send,
        Func: Fn(Input) -> Output + Send,
    >(
        device: &Self::Device,
        input: Input,
        func: Func,
    ) -> Output {
        B::memory_persistent_allocations(device, input, func)
    }

    fn memory_cleanup(device: &Self::Device) {
        B::memory_cleanup(device)
    }

    fn name(device: &Self::Device) -> String {
        format!("fp8<{}>", B::name(device))
    }

    fn seed(device: &Self::Device, seed: u64) {
        B::seed(device, seed)
    }

    fn sync(device: &Self::Device) -> Result<(), ExecutionError> {
        B::sync(device)
    }

    fn staging<'a, Iter>(data: Iter, device: &Self::Device)
    where
        Iter: Iterator<Item = &'a mut TensorData>,
    {
        B::staging(data, device)
    }

    fn supports_dtype(device: &Self::Device, dtype: DType) -> bool {
        B::supports_dtype(device, dtype)
    }

    fn dtype_usage(device: &Self::Device, dtype: DType) -> DTypeUsageSet {
        B::dtype_usage(device, dtype)
    }

    fn device_count(type_id: u16) -> usize {
        B::device_count(type_id)
    }
}
