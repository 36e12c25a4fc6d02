//! FP8-stored base weights while a model loads (`precision.base_storage: "fp8"`): each FP8
//! projection weight is cast and kept as its codes as soon as its values are read (from a
//! checkpoint file, or drawn for a preset), and the model gets an empty placeholder for it, so
//! the f32 base is never whole in memory. [`Projection::store_fp8`] makes the same cast of a
//! weight already loaded.

use std::collections::HashMap;

use burn::tensor::backend::Backend;
use burn::tensor::TensorData;
use fp8_backend::{BiasRule, Fp8Format, Fp8Policy, Fp8Weight, Role};

use super::config::FileTensor;
use super::{CausalLm, Model, ModelConfig, Projection};

/// The FP8 cast of a projection weight of `stored_dims` in its checkpoint layout (`[d_input,
/// d_output]`, or `[d_output, d_input]` when `transposed`).
pub fn encode(
    values: &[f32],
    [rows, cols]: [usize; 2],
    transposed: bool,
    format: Fp8Format,
    rule: BiasRule,
) -> Result<Fp8Weight, fp8_backend::NonFiniteAmax> {
    let in_out = if transposed {
        [cols, rows]
    } else {
        [rows, cols]
    };
    Fp8Weight::encode(values, in_out, transposed, format, rule)
}

/// The values of a stored weight as a tensor of its checkpoint layout.
pub fn decoded<B: Backend>(stored: &Fp8Weight, device: &B::Device) -> burn::tensor::Tensor<B, 2> {
    burn::tensor::Tensor::from_data(
        TensorData::new(stored.decode(), stored.stored_dims()),
        device,
    )
}

/// The weights to store and, once their values have passed, their casts.
pub struct BaseStorage {
    format: Fp8Format,
    rule: BiasRule,
    /// Whether the family stores projection weights as `[d_output, d_input]` (`nn.Linear`).
    transposed: bool,
    /// The FP8 projections' weights: parameter name in the module tree (what a checkpoint's
    /// tensor loads as: GPT-2's carry the `transformer.` prefix) -> `{projection}.weight`, the
    /// key [`Self::attach`] looks up.
    names: HashMap<String, String>,
    stored: HashMap<String, Fp8Weight>,
}

impl BaseStorage {
    /// For a model of `config` whose FP8 projections are frozen (LoRA) under `policy`: `None`
    /// unless the policy stores them (`base_storage: "fp8"`, an FP8 mode).
    pub fn new(config: &ModelConfig, policy: &Fp8Policy) -> Option<Self> {
        if policy.base_storage != fp8_backend::BaseStorage::Fp8 {
            return None;
        }
        let (format, rule) = policy.rule_for(Role::Weight)?;
        let names = (config.projection_names().into_iter())
            .filter(|name| policy.layers.matches(name))
            .map(|name| {
                let key = format!("{name}.weight");
                let param = match config.file_tensor(&key) {
                    FileTensor::Param(param) => param,
                    FileTensor::Buffer | FileTensor::TiedHead { .. } => key.clone(),
                };
                (param, key)
            })
            .collect();
        Some(Self {
            format,
            rule,
            transposed: config.projection_layout() == super::projection::Layout::OutIn,
            names,
            stored: HashMap::new(),
        })
    }

    /// The value to load for parameter `name`: `data` itself, or for a weight to store, an
    /// empty placeholder once its cast is kept (an error names a weight holding an infinity or
    /// NaN).
    pub fn take(&mut self, name: &str, data: TensorData) -> Result<TensorData, String> {
        let Some(key) = self.names.get(name) else {
            return Ok(data);
        };
        let values = data.as_slice::<f32>().expect("projection weights are f32");
        let dims = [data.shape[0], data.shape[1]];
        let stored = encode(values, dims, self.transposed, self.format, self.rule)
            .map_err(|e| format!("{name}: {e}"))?;
        drop(data);
        self.stored.insert(key.clone(), stored);
        Ok(TensorData::new(Vec::<f32>::new(), [0, 0]))
    }

    /// Gives the model's projections the casts taken while it loaded.
    pub fn attach<B: Backend>(mut self, model: &mut Model<B>) {
        let mut give = |name: &str, p: &mut Projection<B>| {
            if let Some(stored) = self.stored.remove(&format!("{name}.weight")) {
                p.stored = Some(stored);
            }
        };
        let projections = match model {
            Model::Gpt2(m) => m.projections_mut(),
            Model::Llama(m) => m.projections_mut(),
        };
        for (name, p) in projections {
            give(&name, p);
        }
        assert!(
            self.stored.is_empty(),
            "stored weights without a projection: {:?}",
            self.stored.keys().collect::<Vec<_>>()
        );
    }
}
