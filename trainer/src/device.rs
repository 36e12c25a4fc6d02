//! Where a job runs, in one place: the devices a config names ([`Device`], [`DeviceSlot`]),
//! the Burn backend each one is ([`on_device!`], [`DeviceBackend`]), and the backends the
//! commands run on ([`TrainBackend`], [`InferenceBackend`], [`CpuBackend`], and the CPU where
//! presets are initialised).

use burn::backend::flex::{Flex, FlexDevice};
use burn::backend::ndarray::{NdArray, NdArrayDevice};
use burn::backend::Autodiff;
use fp8_backend::{Fp8, Fp8Kernels};
use serde::{Deserialize, Serialize};

use crate::host::HostTensors;

/// Calls `f::<B>(args..., device)` with the device backend `B` and the default device of a
/// job's [`Device`]; a device whose cargo feature is off gives `Error::DeviceUnavailable`.
/// (Generic functions cannot be passed around uninstantiated, hence a macro.)
macro_rules! on_device {
    ($device:expr, $f:ident ( $($arg:expr),* $(,)? )) => {
        match $device {
            $crate::device::Device::Cpu => $f::<burn::backend::Flex>(
                $($arg,)* burn::backend::flex::FlexDevice,
            ),
            $crate::device::Device::Ndarray => $f::<burn::backend::NdArray<f32>>(
                $($arg,)* burn::backend::ndarray::NdArrayDevice::Cpu,
            ),
            #[cfg(feature = "wgpu")]
            $crate::device::Device::Wgpu => $f::<burn::backend::Wgpu>(
                $($arg,)* burn::backend::wgpu::WgpuDevice::default(),
            ),
            #[cfg(feature = "cuda")]
            $crate::device::Device::Cuda => $f::<burn::backend::Cuda>(
                $($arg,)* burn::backend::cuda::CudaDevice::default(),
            ),
            #[allow(unreachable_patterns)]
            other => Err($crate::Error::DeviceUnavailable(other)),
        }
    };
}

/// The backend every precision trains on: the FP8 decorator over a device backend `B`; which
/// projections are FP8 is the model's policy (with FP8 off it computes `B`'s bits).
pub type TrainBackend<B> = Autodiff<Fp8<B>>;

/// The backend evaluation runs on: the decorator without autodiff.
pub type InferenceBackend<B> = Fp8<B>;

/// The backend the inspection commands (`logits`, `generate`) run on: the CPU's.
pub type CpuBackend = Fp8<Flex>;

/// A preset's weights are drawn on this backend and device (ndarray on the CPU) and then copied
/// to the job's device, so that a seed gives the same initial weights on every device (each
/// backend's RNG draws different numbers).
pub type InitBackend = TrainBackend<NdArray<f32>>;
/// The device of [`InitBackend`].
pub const INIT_DEVICE: NdArrayDevice = NdArrayDevice::Cpu;

/// A device backend a job can run on: FP8 kernels, host access where it is the CPU's, and its
/// devices by index (`cuda:1`).
pub trait DeviceBackend: Fp8Kernels + HostTensors {
    /// Device `index` of this backend (the CPU backends have one device: every index is it).
    fn device_at(index: usize) -> Self::Device;
}

impl DeviceBackend for Flex {
    fn device_at(_index: usize) -> FlexDevice {
        FlexDevice
    }
}

impl DeviceBackend for NdArray<f32> {
    fn device_at(_index: usize) -> NdArrayDevice {
        NdArrayDevice::Cpu
    }
}

#[cfg(feature = "wgpu")]
impl DeviceBackend for burn::backend::Wgpu {
    fn device_at(index: usize) -> burn::backend::wgpu::WgpuDevice {
        use burn::backend::wgpu::WgpuDevice;
        match index {
            0 => WgpuDevice::default(),
            i => WgpuDevice::DiscreteGpu(i),
        }
    }
}

#[cfg(feature = "cuda")]
impl DeviceBackend for burn::backend::Cuda {
    fn device_at(index: usize) -> burn::backend::cuda::CudaDevice {
        burn::backend::cuda::CudaDevice::new(index)
    }
}

/// Where the job runs (`device` of a job config).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Device {
    /// The CPU, on Burn's flex backend (the fastest CPU backend measured here: see bench/).
    #[default]
    Cpu,
    /// The CPU, on Burn's ndarray backend.
    Ndarray,
    /// wgpu (Vulkan/Metal/DX12); needs `--features wgpu`.
    Wgpu,
    /// CUDA; needs `--features cuda`.
    Cuda,
}

impl Device {
    /// The spelling used in configs.
    pub fn name(self) -> &'static str {
        match self {
            Self::Cpu => "cpu",
            Self::Ndarray => "ndarray",
            Self::Wgpu => "wgpu",
            Self::Cuda => "cuda",
        }
    }

    /// Whether this build has the device's backend (the cargo feature of its name).
    pub fn available(self) -> bool {
        match self {
            Self::Cpu | Self::Ndarray => true,
            Self::Wgpu => cfg!(feature = "wgpu"),
            Self::Cuda => cfg!(feature = "cuda"),
        }
    }
}

impl std::str::FromStr for Device {
    type Err = fp8_backend::UnknownName;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "cpu" => Ok(Self::Cpu),
            "ndarray" => Ok(Self::Ndarray),
            "wgpu" => Ok(Self::Wgpu),
            "cuda" => Ok(Self::Cuda),
            other => Err(fp8_backend::UnknownName {
                what: "device",
                got: other.to_string(),
                expected: "cpu, ndarray, wgpu, cuda",
            }),
        }
    }
}

/// One device of a kind: `cuda:1` (the CPU kinds have one device, index 0; `cpu` peers share it).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct DeviceSlot {
    pub kind: Device,
    pub index: usize,
}

impl std::fmt::Display for DeviceSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.kind.name(), self.index)
    }
}

impl From<DeviceSlot> for String {
    fn from(slot: DeviceSlot) -> String {
        slot.to_string()
    }
}

impl TryFrom<String> for DeviceSlot {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        let (kind, index) = match text.split_once(':') {
            Some((kind, index)) => {
                let index = index.parse::<usize>().map_err(|_| {
                    format!("`{text}`: the device index after `:` must be a number (`cuda:1`)")
                })?;
                (kind, index)
            }
            None => (text.as_str(), 0),
        };
        let kind: Device = kind.parse().map_err(|e| format!("`{text}`: {e}"))?;
        if index > 0 && matches!(kind, Device::Cpu | Device::Ndarray) {
            return Err(format!(
                "`{text}`: the CPU has one device (`{}` peers share it; write `{}`)",
                kind.name(),
                kind.name()
            ));
        }
        Ok(Self { kind, index })
    }
}
