//! AdamW with the update of PyTorch's `torch.optim.AdamW` (decoupled weight decay,
//! bias-corrected moments, eps outside the sqrt), its state on the device of the model.
//!
//! The model's f32 parameters are the master weights; the moments are one flat tensor per
//! parameter beside them. Each step reads nothing back: the gradient-clipping factor is folded
//! into the update, and the CPU backends run the whole update as one fused pass over
//! parameter, gradient and moments, in place ([`HostTensors`]); the cubecl backends (wgpu, CUDA)
//! run it as one kernel with the same arithmetic, others use tensor ops. Host copies are made only for checkpoints.

use std::path::Path;

use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{Tensor, TensorData, TensorPrimitive};
use rayon::prelude::*;

use crate::checkpoint::f32_from_le;
use crate::checkpoint::save::{write_safetensors, NamedTensor};
use crate::error::Error;
use crate::host::HostTensors;

/// Hyper-parameters of one update.
#[derive(Clone, Copy, Debug)]
pub struct AdamWStep {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
}

/// The constants of one update of one parameter, computed once per step on the host.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Coefficients {
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    /// `lr / (1 - beta1^t)`.
    pub step_size: f32,
    /// `sqrt(1 - beta2^t)`.
    pub bc2_sqrt: f32,
    /// `1 - lr * weight_decay` for decayed parameters, 1 for the others.
    pub decay: f32,
    /// The gradient is multiplied by this first (global-norm clipping; 1 when not clipped).
    pub grad_scale: f32,
}

impl Coefficients {
    /// The update of one element: `(value, m, v)` from the gradient `g`.
    #[inline(always)]
    fn apply(&self, value: f32, m: f32, v: f32, g: f32) -> (f32, f32, f32) {
        let g = if self.grad_scale == 1.0 {
            g
        } else {
            g * self.grad_scale
        };
        let m = self.beta1 * m + (1.0 - self.beta1) * g;
        let v = self.beta2 * v + (1.0 - self.beta2) * g * g;
        let denom = v.sqrt() / self.bc2_sqrt + self.eps;
        (value * self.decay - self.step_size * m / denom, m, v)
    }
}

/// `(param, m, v)` after one update with `grad` (all 1-D, the same length): one fused pass in
/// place on the CPU backends, one kernel on the device backends that have it
/// ([`device_adamw`](crate::model::ops::device::DeviceOps::device_adamw)), tensor ops with the same arithmetic elsewhere.
fn update_tensors<B: HostTensors>(
    param: FloatTensor<B>,
    grad: FloatTensor<B>,
    m: FloatTensor<B>,
    v: FloatTensor<B>,
    c: &Coefficients,
) -> [FloatTensor<B>; 3] {
    let exclusive = |t| B::host_exclusive(t);
    match (
        B::host_slice(&grad).is_some(),
        exclusive(param),
        exclusive(m),
        exclusive(v),
    ) {
        (true, Ok(mut param), Ok(mut m), Ok(mut v)) => {
            let grad = B::host_slice(&grad).expect("checked");
            let (value, moment1, moment2) = (
                B::host_mut(&mut param),
                B::host_mut(&mut m),
                B::host_mut(&mut v),
            );
            update_slices(value, moment1, moment2, grad, c);
            [param, m, v]
        }
        (_, param, m, v) => {
            let take = |r: Result<FloatTensor<B>, FloatTensor<B>>| r.unwrap_or_else(|t| t);
            match B::device_adamw(take(param), &grad, take(m), take(v), c) {
                Ok(updated) => updated,
                Err([param, m, v]) => tensor_op_update::<B>(param, grad, m, v, c),
            }
        }
    }
}

/// The update with tensor ops: the same operations in the same order as
/// `Coefficients::apply`, one pass over memory each.
fn tensor_op_update<B: Backend>(
    param: FloatTensor<B>,
    grad: FloatTensor<B>,
    m: FloatTensor<B>,
    v: FloatTensor<B>,
    c: &Coefficients,
) -> [FloatTensor<B>; 3] {
    let t = |p| Tensor::<B, 1>::from_primitive(TensorPrimitive::Float(p));
    let (param, grad, m, v) = (t(param), t(grad), t(m), t(v));
    let g = if c.grad_scale == 1.0 {
        grad
    } else {
        grad.mul_scalar(c.grad_scale)
    };
    let m = m.mul_scalar(c.beta1) + g.clone().mul_scalar(1.0 - c.beta1);
    let v = v.mul_scalar(c.beta2) + g.clone().mul_scalar(1.0 - c.beta2) * g;
    let denom = v.clone().sqrt().div_scalar(c.bc2_sqrt).add_scalar(c.eps);
    let param = param.mul_scalar(c.decay) - m.clone().mul_scalar(c.step_size) / denom;
    [param, m, v].map(|t| t.into_primitive().tensor())
}

/// Elements per rayon task of the fused update.
const CHUNK: usize = 1 << 14;

/// The fused update over host slices (in place).
fn update_slices(value: &mut [f32], m: &mut [f32], v: &mut [f32], g: &[f32], c: &Coefficients) {
    assert!(value.len() == g.len() && m.len() == g.len() && v.len() == g.len());
    value
        .par_chunks_mut(CHUNK)
        .zip(m.par_chunks_mut(CHUNK))
        .zip(v.par_chunks_mut(CHUNK))
        .zip(g.par_chunks(CHUNK))
        .for_each(|(((value, m), v), g)| {
            for i in 0..value.len() {
                (value[i], m[i], v[i]) = c.apply(value[i], m[i], v[i], g[i]);
            }
        });
}

/// The moments of one parameter.
#[derive(Clone, Debug)]
pub struct Slot<B: Backend> {
    /// Hugging Face name of the parameter.
    pub name: String,
    pub shape: Vec<usize>,
    /// Weight decay applies (matrices), or not (biases, layer-norm parameters).
    pub decay: bool,
    /// First moment (`exp_avg`), flattened.
    pub m: Tensor<B, 1>,
    /// Second moment (`exp_avg_sq`), flattened.
    pub v: Tensor<B, 1>,
}

/// The optimizer: the moments of every trained parameter (in module order) and the update
/// count.
#[derive(Clone, Debug)]
pub struct AdamW<B: Backend> {
    pub slots: Vec<Slot<B>>,
    /// For each parameter of the model (module order), its slot: `None` for a frozen one
    /// (LoRA's base), which has no moments.
    pub slot_of: Vec<Option<usize>>,
    /// Updates applied so far (bias correction uses `t + 1` for the next one).
    pub t: u64,
}

impl<B: HostTensors> AdamW<B> {
    /// Zero moments for parameters `(name, shape)`; matrices (rank >= 2) decay, vectors do not
    /// (nanoGPT's `configure_optimizers`: biases and layer norms are 1-D).
    pub fn new(params: Vec<(String, Vec<usize>)>, device: &B::Device) -> Self {
        Self::new_for(params, |_| true, device)
    }

    /// [`AdamW::new`] for the parameters `trained` names; the others (module order kept) get
    /// no slot.
    pub fn new_for(
        params: Vec<(String, Vec<usize>)>,
        trained: impl Fn(&str) -> bool,
        device: &B::Device,
    ) -> Self {
        let mut slot_of = Vec::with_capacity(params.len());
        let mut kept = Vec::new();
        for (name, shape) in params {
            match trained(&name) {
                true => {
                    slot_of.push(Some(kept.len()));
                    kept.push((name, shape));
                }
                false => slot_of.push(None),
            }
        }
        let slots = kept
            .into_iter()
            .map(|(name, shape)| {
                let n = shape.iter().product::<usize>();
                Slot {
                    decay: shape.len() >= 2,
                    m: Tensor::zeros([n], device),
                    v: Tensor::zeros([n], device),
                    name,
                    shape,
                }
            })
            .collect();
        Self {
            slots,
            slot_of,
            t: 0,
        }
    }

    /// The name of parameter `index` (module order) when it is trained.
    pub fn param_name(&self, index: usize) -> Option<&str> {
        let slot = (*self.slot_of.get(index)?)?;
        Some(self.slots[slot].name.as_str())
    }

    /// Counts the next update and returns its coefficients for decayed and undecayed
    /// parameters (the bias corrections use the new count).
    pub fn begin_step(&mut self, h: AdamWStep, grad_scale: f32) -> [Coefficients; 2] {
        self.t += 1;
        let t = self.t as i32;
        let base = Coefficients {
            beta1: h.beta1,
            beta2: h.beta2,
            eps: h.eps,
            step_size: h.lr / (1.0 - h.beta1.powi(t)),
            bc2_sqrt: (1.0 - h.beta2.powi(t)).sqrt(),
            decay: 1.0,
            grad_scale,
        };
        let decayed = Coefficients {
            decay: 1.0 - h.lr * h.weight_decay,
            ..base
        };
        [decayed, base]
    }

    /// Updates parameter `index` (module order; flattened) with `grad` under the step's `coefficients`
    /// (from [`AdamW::begin_step`]); returns the new value.
    pub fn update(
        &mut self,
        index: usize,
        param: Tensor<B, 1>,
        grad: Tensor<B, 1>,
        coefficients: &[Coefficients; 2],
    ) -> Tensor<B, 1> {
        let slot = self.slot_of[index].expect("a parameter with a gradient is trained");
        let slot = &mut self.slots[slot];
        let c = &coefficients[usize::from(!slot.decay)];
        let (m, v) = (slot.m.clone(), slot.v.clone());
        // The slot's handles are replaced below; dropping them first leaves the moments unshared.
        slot.m = Tensor::empty([0], &m.device());
        slot.v = Tensor::empty([0], &v.device());
        let prim = |t: Tensor<B, 1>| t.into_primitive().tensor();
        let [param, m, v] = update_tensors::<B>(prim(param), prim(grad), prim(m), prim(v), c);
        let t = |p| Tensor::<B, 1>::from_primitive(TensorPrimitive::Float(p));
        slot.m = t(m);
        slot.v = t(v);
        t(param)
    }

    /// Writes the moments as `{name}.exp_avg` / `{name}.exp_avg_sq` (safetensors, the
    /// parameters' shapes).
    pub fn save_moments(&self, path: &Path) -> std::io::Result<()> {
        let host = |t: &Tensor<B, 1>| -> Vec<f32> {
            t.clone()
                .into_data()
                .convert::<f32>()
                .into_vec::<f32>()
                .expect("f32")
        };
        let tensors: Vec<NamedTensor> = self
            .slots
            .iter()
            .flat_map(|s| {
                [("exp_avg", &s.m), ("exp_avg_sq", &s.v)].map(|(tag, moment)| NamedTensor {
                    name: format!("{}.{tag}", s.name),
                    shape: s.shape.clone(),
                    values: host(moment),
                })
            })
            .collect();
        write_safetensors(path, &tensors)
    }

    /// Reads moments written by [`AdamW::save_moments`]; every parameter must be present.
    pub fn load_moments(&mut self, path: &Path, device: &B::Device) -> Result<(), Error> {
        let bad = |message: String| Error::BadFile {
            path: path.to_path_buf(),
            message: format!("bad optimizer state: {message}"),
        };
        let bytes = datasets::input::read_limited(path, u64::MAX, "optimizer state")
            .map_err(Error::io(path))?;
        let file = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| bad(e.to_string()))?;
        for s in &mut self.slots {
            for (tag, target) in [("exp_avg", &mut s.m), ("exp_avg_sq", &mut s.v)] {
                let name = format!("{}.{tag}", s.name);
                let view = file
                    .tensor(&name)
                    .map_err(|_| bad(format!("tensor `{name}` is missing")))?;
                if view.shape() != s.shape.as_slice() || view.dtype() != safetensors::Dtype::F32 {
                    return Err(bad(format!(
                        "tensor `{name}` is {:?} {:?}, expected F32 {:?}",
                        view.dtype(),
                        view.shape(),
                        s.shape
                    )));
                }
                let values = f32_from_le(view.data());
                // NaN moments would make every step non-finite (each one skipped); a negative
                // second moment has no square root. Neither is ever written.
                let bad_value = if tag == "exp_avg" {
                    values.iter().position(|v| !v.is_finite())
                } else {
                    values.iter().position(|v| !(v.is_finite() && *v >= 0.0))
                };
                if let Some(at) = bad_value {
                    return Err(bad(format!(
                        "tensor `{name}` holds {} at index {at}; moments are finite{}",
                        values[at],
                        if tag == "exp_avg" { "" } else { " and >= 0" }
                    )));
                }
                let n = values.len();
                *target = Tensor::from_data(TensorData::new(values, [n]), device);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use burn::backend::{Flex, NdArray};

    use super::*;

    /// Deterministic values in [-1, 1) times `scale`, over three chunks and a tail.
    fn case_values(seed: u32, scale: f32) -> Vec<f32> {
        let n = 3 * CHUNK + 17;
        (0..n as u32)
            .map(|i| ((i.wrapping_mul(2_654_435_761) ^ seed) % 2001) as f32 / 1000.0 - 1.0)
            .map(|x| x * scale)
            .collect()
    }

    /// A mid-training update: clipped gradient, weight decay.
    fn case_coefficients() -> Coefficients {
        Coefficients {
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            step_size: 1e-3 / 0.19,
            bc2_sqrt: (1.0f32 - 0.95f32.powi(2)).sqrt(),
            decay: 1.0 - 1e-4,
            grad_scale: 0.37,
        }
    }

    /// The fused CPU passes and the tensor-op default compute the same bits.
    #[test]
    fn fused_kernels_equal_the_tensor_op_update() {
        let (values, c) = (case_values, case_coefficients());
        let inputs = [
            values(1, 1.0),
            values(2, 0.01),
            values(3, 1e-3),
            values(4, 1e-5),
        ];
        let v_nonneg: Vec<f32> = inputs[3].iter().map(|x| x.abs()).collect();
        fn run<B: HostTensors>(inputs: &[Vec<f32>], v: &[f32], c: &Coefficients) -> Vec<Vec<u32>> {
            let d = Default::default();
            let t = |x: &[f32]| {
                Tensor::<B, 1>::from_data(TensorData::new(x.to_vec(), [x.len()]), &d)
                    .into_primitive()
                    .tensor()
            };
            let out = update_tensors::<B>(t(&inputs[0]), t(&inputs[1]), t(&inputs[2]), t(v), c);
            out.map(|p| {
                Tensor::<B, 1>::from_primitive(TensorPrimitive::Float(p))
                    .into_data()
                    .to_vec::<f32>()
                    .unwrap()
                    .iter()
                    .map(|x| x.to_bits())
                    .collect()
            })
            .to_vec()
        }
        let flex = run::<Flex>(&inputs, &v_nonneg, &c);
        let ndarray = run::<NdArray<f32>>(&inputs, &v_nonneg, &c);
        let d = Default::default();
        let t = |x: &[f32]| {
            Tensor::<Flex, 1>::from_data(TensorData::new(x.to_vec(), [x.len()]), &d)
                .into_primitive()
                .tensor()
        };
        let generic = tensor_op_update::<Flex>(
            t(&inputs[0]),
            t(&inputs[1]),
            t(&inputs[2]),
            t(&v_nonneg),
            &c,
        )
        .map(|p| {
            Tensor::<Flex, 1>::from_primitive(TensorPrimitive::Float(p))
                .into_data()
                .to_vec::<f32>()
                .unwrap()
                .iter()
                .map(|x| x.to_bits())
                .collect::<Vec<u32>>()
        });
        assert_eq!(flex, ndarray, "flex and ndarray fused passes");
        assert_eq!(flex, generic.to_vec(), "fused pass and tensor ops");
        // The update did something.
        assert_ne!(
            flex[0],
            inputs[0].iter().map(|x| x.to_bits()).collect::<Vec<_>>()
        );
    }

    /// The device kernel (wgpu) against the fused CPU pass: the same operations, compiled for
    /// the device (which may contract a multiply and an add into one FMA, moving the last bit).
    #[cfg(feature = "wgpu")]
    #[test]
    fn device_kernel_equals_the_fused_pass() {
        device_kernel_equals_the_fused_pass_on::<burn::backend::Wgpu>();
    }

    #[cfg(feature = "cuda")]
    #[test]
    fn cuda_device_kernel_equals_the_fused_pass() {
        device_kernel_equals_the_fused_pass_on::<burn::backend::Cuda>();
    }

    #[cfg(any(feature = "wgpu", feature = "cuda"))]
    fn device_kernel_equals_the_fused_pass_on<Device: HostTensors>() {
        use crate::model::ops::device::DeviceOps;

        /// Relative to the largest element: a few ulps of f32 (measured: see the assertion's
        /// output); a wrong coefficient or a moment not updated moves results by 1e-3 or more.
        const DEVICE_ADAMW_REL_TOL: f32 = 1e-6;
        let (values, c) = (case_values, case_coefficients());
        let (param, grad, m) = (values(1, 1.0), values(2, 0.01), values(3, 1e-3));
        let v: Vec<f32> = values(4, 1e-5).iter().map(|x| x.abs()).collect();
        let (mut want_p, mut want_m, mut want_v) = (param.clone(), m.clone(), v.clone());
        update_slices(&mut want_p, &mut want_m, &mut want_v, &grad, &c);

        let d = Default::default();
        let t = |x: &[f32]| {
            Tensor::<Device, 1>::from_data(TensorData::new(x.to_vec(), [x.len()]), &d)
                .into_primitive()
                .tensor()
        };
        let [p2, m2, v2] =
            <Device as DeviceOps>::device_adamw(t(&param), &t(&grad), t(&m), t(&v), &c)
                .unwrap_or_else(|_| panic!("the device runs the AdamW kernel"));
        let host = |p| {
            Tensor::<Device, 1>::from_primitive(TensorPrimitive::Float(p))
                .into_data()
                .to_vec::<f32>()
                .unwrap()
        };
        let rel = |a: &[f32], b: &[f32]| {
            let scale = b.iter().fold(0f32, |m, x| m.max(x.abs()));
            a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
        };
        for (what, got, want) in [
            ("param", host(p2), want_p),
            ("m", host(m2), want_m),
            ("v", host(v2), want_v),
        ] {
            let r = rel(&got, &want);
            println!("adamw {what}: rel {r:e}");
            assert!(r <= DEVICE_ADAMW_REL_TOL, "adamw {what} differs by {r:e}");
        }
    }
}
