//! Tensors of the CPU backends as plain `f32` slices, for the fused passes that Burn has no op
//! for (the AdamW update, the cross-entropy). A device backend answers `None` and its callers
//! use tensor ops instead.

use burn::backend::flex::{Flex, FlexTensor};
use burn::backend::ndarray::{NdArray, NdArrayTensor};
use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{DType, TensorData};
use fp8_backend::{Fp8, Fp8Kernels};

use crate::model::ops::device::DeviceOps;

/// Backends whose float tensors live in host memory as `f32`.
///
/// Every such backend also says which fused ops it runs on its device ([`DeviceOps`]: none on
/// the CPU backends).
pub trait HostTensors: DeviceOps {
    /// The values of `t` in row-major order, when they are one contiguous `f32` slice in host
    /// memory.
    fn host_slice(_t: &FloatTensor<Self>) -> Option<&[f32]> {
        None
    }

    /// `t` made exclusive (copied first when shared or not contiguous), for [`Self::host_mut`];
    /// `Err(t)` on a device backend.
    fn host_exclusive(t: FloatTensor<Self>) -> Result<FloatTensor<Self>, FloatTensor<Self>> {
        Err(t)
    }

    /// The values of an exclusive tensor (from [`Self::host_exclusive`]) to change in place.
    fn host_mut(_t: &mut FloatTensor<Self>) -> &mut [f32] {
        unreachable!("only called on tensors host_exclusive returned")
    }
}

impl HostTensors for Flex {
    fn host_slice(t: &FlexTensor) -> Option<&[f32]> {
        (t.dtype() == DType::F32)
            .then(|| t.as_slice::<f32>())
            .flatten()
    }

    fn host_exclusive(t: FlexTensor) -> Result<FlexTensor, FlexTensor> {
        if t.dtype() != DType::F32 {
            return Err(t);
        }
        // Exclusive and exactly its elements: the usual case for parameters, moments and
        // fresh results; anything else is copied once.
        let exact =
            t.layout().start_offset() == 0 && t.bytes().len() == t.layout().num_elements() * 4;
        Ok(match t.is_unique() && t.is_contiguous() && exact {
            true => t,
            false => FlexTensor::from_data(t.into_data()),
        })
    }

    fn host_mut(t: &mut FlexTensor) -> &mut [f32] {
        t.storage_mut::<f32>()
    }
}

impl HostTensors for NdArray<f32> {
    fn host_slice(t: &NdArrayTensor) -> Option<&[f32]> {
        match t {
            NdArrayTensor::F32(storage) => storage.view().to_slice(),
            _ => None,
        }
    }

    fn host_exclusive(t: NdArrayTensor) -> Result<NdArrayTensor, NdArrayTensor> {
        let NdArrayTensor::F32(storage) = t else {
            return Err(t);
        };
        let array = storage.into_owned();
        let array = match array.is_standard_layout() {
            true => array,
            false => array.as_standard_layout().into_owned().into_shared(),
        };
        Ok(NdArrayTensor::from(array))
    }

    fn host_mut(t: &mut NdArrayTensor) -> &mut [f32] {
        let NdArrayTensor::F32(storage) = t else {
            unreachable!("host_exclusive returns f32 tensors")
        };
        storage
            .ensure_owned()
            .as_slice_mut()
            .expect("host_exclusive returns standard-layout arrays")
    }
}

#[cfg(feature = "wgpu")]
impl HostTensors for burn::backend::Wgpu {}
#[cfg(feature = "cuda")]
impl HostTensors for burn::backend::Cuda {}

/// The decorator shares its inner backend's tensors.
impl<B: HostTensors + Fp8Kernels> HostTensors for Fp8<B> {
    fn host_slice(t: &FloatTensor<Self>) -> Option<&[f32]> {
        B::host_slice(t)
    }

    fn host_exclusive(t: FloatTensor<Self>) -> Result<FloatTensor<Self>, FloatTensor<Self>> {
        B::host_exclusive(t)
    }

    fn host_mut(t: &mut FloatTensor<Self>) -> &mut [f32] {
        B::host_mut(t)
    }
}

/// A host tensor of `values` with `shape` on backend `B` (through `TensorData`: no extra copy
/// on the CPU backends).
pub fn from_host<B: Backend>(
    values: Vec<f32>,
    shape: Vec<usize>,
    device: &B::Device,
) -> FloatTensor<B> {
    B::float_from_data(TensorData::new(values, shape), device)
}
