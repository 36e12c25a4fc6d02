//! AdamW on f32 master weights held on the host, with the update of PyTorch's `torch.optim.AdamW`
//! (`_single_tensor_adamw`): decoupled weight decay, bias-corrected moments, eps outside the sqrt.
//!
//! Keeping master weights and moments as plain `Vec<f32>` makes the optimizer state trivially
//! exact to save and restore (a resumed run is bit-identical) and independent of the device.

use std::path::Path;

use crate::checkpoint::save::{write_safetensors, NamedTensor};
use crate::error::Error;

/// One parameter: HF name, shape, master value and AdamW moments.
#[derive(Clone, Debug)]
pub struct ParamState {
    pub name: String,
    pub shape: Vec<usize>,
    pub value: Vec<f32>,
    /// First moment (`exp_avg`).
    pub m: Vec<f32>,
    /// Second moment (`exp_avg_sq`).
    pub v: Vec<f32>,
    /// Weight decay applies (matrices), or not (biases, layer-norm parameters).
    pub decay: bool,
}

/// Hyper-parameters of one update.
#[derive(Clone, Copy, Debug)]
pub struct AdamWStep {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
}

/// The optimizer: every parameter's master value and moments, and the update count.
#[derive(Clone, Debug)]
pub struct AdamW {
    pub params: Vec<ParamState>,
    /// Updates applied so far (bias correction uses `t + 1` for the next one).
    pub t: u64,
}

impl AdamW {
    /// Starts from the model's current values; matrices (rank >= 2) decay, vectors do not
    /// (nanoGPT's `configure_optimizers`: biases and layer norms are 1-D).
    pub fn new(values: Vec<(String, Vec<usize>, Vec<f32>)>) -> Self {
        let params = values
            .into_iter()
            .map(|(name, shape, value)| ParamState {
                decay: shape.len() >= 2,
                m: vec![0.0; value.len()],
                v: vec![0.0; value.len()],
                name,
                shape,
                value,
            })
            .collect();
        Self { params, t: 0 }
    }

    /// Applies one update with `grads` (same order as `params`; `None` leaves a parameter as is).
    pub fn step(&mut self, grads: &[Option<Vec<f32>>], h: AdamWStep) {
        self.t += 1;
        let t = self.t as i32;
        let bc1 = 1.0 - h.beta1.powi(t);
        let bc2_sqrt = (1.0 - h.beta2.powi(t)).sqrt();
        let step_size = h.lr / bc1;
        for (p, g) in self.params.iter_mut().zip(grads) {
            let Some(g) = g else { continue };
            let decay = if p.decay {
                1.0 - h.lr * h.weight_decay
            } else {
                1.0
            };
            for i in 0..p.value.len() {
                let gi = g[i];
                p.m[i] = h.beta1 * p.m[i] + (1.0 - h.beta1) * gi;
                p.v[i] = h.beta2 * p.v[i] + (1.0 - h.beta2) * gi * gi;
                let denom = p.v[i].sqrt() / bc2_sqrt + h.eps;
                p.value[i] = p.value[i] * decay - step_size * p.m[i] / denom;
            }
        }
    }

    /// Writes the moments as `{name}.exp_avg` / `{name}.exp_avg_sq` (safetensors).
    pub fn save_moments(&self, path: &Path) -> std::io::Result<()> {
        let tensors: Vec<NamedTensor> = self
            .params
            .iter()
            .flat_map(|p| {
                [("exp_avg", &p.m), ("exp_avg_sq", &p.v)].map(|(tag, values)| NamedTensor {
                    name: format!("{}.{tag}", p.name),
                    shape: p.shape.clone(),
                    values: values.clone(),
                })
            })
            .collect();
        write_safetensors(path, &tensors)
    }

    /// Reads moments written by [`AdamW::save_moments`]; every parameter must be present.
    pub fn load_moments(&mut self, path: &Path) -> Result<(), Error> {
        let bad = |message: String| Error::BadFile {
            path: path.to_path_buf(),
            message: format!("bad optimizer state: {message}"),
        };
        let bytes = std::fs::read(path).map_err(Error::io(path))?;
        let file = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| bad(e.to_string()))?;
        for p in &mut self.params {
            for (tag, target) in [("exp_avg", &mut p.m), ("exp_avg_sq", &mut p.v)] {
                let name = format!("{}.{tag}", p.name);
                let view = file
                    .tensor(&name)
                    .map_err(|_| bad(format!("tensor `{name}` is missing")))?;
                if view.shape() != p.shape.as_slice() || view.dtype() != safetensors::Dtype::F32 {
                    return Err(bad(format!(
                        "tensor `{name}` is {:?} {:?}, expected F32 {:?}",
                        view.dtype(),
                        view.shape(),
                        p.shape
                    )));
                }
                *target = view
                    .data()
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect();
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One step from zero moments moves every weight by about lr against its gradient's sign
    /// (Adam's first step is sign(g) * lr, up to eps).
    #[test]
    fn first_step_is_lr_times_sign() {
        let mut opt = AdamW::new(vec![("w".into(), vec![1, 2], vec![1.0, -1.0])]);
        let h = AdamWStep {
            lr: 0.1,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.0,
        };
        opt.step(&[Some(vec![0.5, -2.0])], h);
        assert!((opt.params[0].value[0] - 0.9).abs() < 1e-6);
        assert!((opt.params[0].value[1] + 0.9).abs() < 1e-6);
        let decayed = {
            let mut o = AdamW::new(vec![("w".into(), vec![1, 1], vec![1.0])]);
            o.step(
                &[Some(vec![0.0])],
                AdamWStep {
                    weight_decay: 0.5,
                    ..h
                },
            );
            o.params[0].value[0]
        };
        assert!(
            (decayed - 0.95).abs() < 1e-6,
            "decoupled decay: 1 * (1 - 0.1 * 0.5)"
        );
    }
}
