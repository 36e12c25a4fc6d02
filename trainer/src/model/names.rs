//! Parameters by Hugging Face name, read off Burn's module tree.
//!
//! The model's field names are the Hugging Face ones, so the path Burn's visitor walks
//! (`transformer` / `h` / `0` / `attn` / `c_attn` / `weight`) joined with dots *is* the tensor
//! name in `model.safetensors`. Saving, loading and gradient dumps all use this one walk, so no
//! parameter can be forgotten and no remapping table exists. An enum's variant (the family of
//! [`super::Model`]) adds no level: Burn's derive enters it as a module named by the variant,
//! with a container type `Enum:...`, which the walk skips.

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Tensor, TensorData};

/// The dotted path of the module being visited.
#[derive(Default)]
struct Path(Vec<String>);

/// Whether Burn's visitors enter a module of `container_type` as a level of the name: not an
/// enum's variant.
fn names_a_level(container_type: &str) -> bool {
    !container_type.starts_with("Enum:")
}

impl Path {
    fn enter(&mut self, name: &str, container_type: &str) {
        if names_a_level(container_type) {
            self.0.push(name.to_string());
        }
    }
    fn exit(&mut self, container_type: &str) {
        if names_a_level(container_type) {
            self.0.pop();
        }
    }
    fn name(&self) -> String {
        self.0.join(".")
    }
}

/// Every float parameter: (HF name, shape), in module order.
pub fn param_shapes<B: Backend, M: Module<B>>(module: &M) -> Vec<(String, Vec<usize>)> {
    struct Shapes(Path, Vec<(String, Vec<usize>)>);
    impl<B: Backend> ModuleVisitor<B> for Shapes {
        fn enter_module(&mut self, name: &str, container_type: &str) {
            self.0.enter(name, container_type);
        }
        fn exit_module(&mut self, _: &str, container_type: &str) {
            self.0.exit(container_type);
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            self.1.push((self.0.name(), param.lazy_shape().to_vec()));
        }
    }
    let mut visitor = Shapes(Path::default(), Vec::new());
    module.visit(&mut visitor);
    visitor.1
}

/// Every float parameter's value: (HF name, data), in module order.
pub fn param_values<B: Backend, M: Module<B>>(module: &M) -> Vec<(String, TensorData)> {
    param_values_where(module, |_| true)
}

/// [`param_values`], taking the module apart as it goes: each parameter's tensor is freed once
/// its data is read, so the values and the module are never both whole in memory (a preset's
/// initial weights: one copy at a time, not two).
pub fn into_param_values<B: Backend, M: Module<B>>(module: M) -> Vec<(String, TensorData)> {
    into_param_values_with(module, |_, data| Ok::<_, ()>(data)).expect("no error")
}

/// [`into_param_values`] with each value passed through `keep` (name, data) as it is read: what
/// `keep` returns is kept, so a value it shrinks is never whole beside the others; the first
/// error stops the reading and is returned.
pub fn into_param_values_with<B: Backend, M: Module<B>, E>(
    module: M,
    keep: impl FnMut(&str, TensorData) -> Result<TensorData, E>,
) -> Result<Vec<(String, TensorData)>, E> {
    struct Take<F, E>(Path, Vec<(String, TensorData)>, F, Option<E>);
    impl<B: Backend, F: FnMut(&str, TensorData) -> Result<TensorData, E>, E> ModuleMapper<B>
        for Take<F, E>
    {
        fn enter_module(&mut self, name: &str, container_type: &str) {
            self.0.enter(name, container_type);
        }
        fn exit_module(&mut self, _: &str, container_type: &str) {
            self.0.exit(container_type);
        }
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
            if self.3.is_some() {
                return param;
            }
            let (id, value) = (param.id, param.val());
            let device = value.device();
            drop(param);
            let name = self.0.name();
            match (self.2)(&name, value.into_data()) {
                Ok(data) => self.1.push((name, data)),
                Err(e) => self.3 = Some(e),
            }
            Param::initialized(id, Tensor::zeros([1; D], &device))
        }
    }
    let mut take = Take(Path::default(), Vec::new(), keep, None);
    drop(module.map(&mut take));
    match take.3 {
        Some(e) => Err(e),
        None => Ok(take.1),
    }
}

/// [`param_values`] of the parameters `select` names (the others are not read).
pub fn param_values_where<B: Backend, M: Module<B>>(
    module: &M,
    select: impl Fn(&str) -> bool,
) -> Vec<(String, TensorData)> {
    struct Values<S>(Path, Vec<(String, TensorData)>, S);
    impl<B: Backend, S: Fn(&str) -> bool> ModuleVisitor<B> for Values<S> {
        fn enter_module(&mut self, name: &str, container_type: &str) {
            self.0.enter(name, container_type);
        }
        fn exit_module(&mut self, _: &str, container_type: &str) {
            self.0.exit(container_type);
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            let name = self.0.name();
            if (self.2)(&name) {
                self.1.push((name, param.val().into_data()));
            }
        }
    }
    let mut visitor = Values(Path::default(), Vec::new(), select);
    module.visit(&mut visitor);
    visitor.1
}

/// The gradient of every float parameter by HF name (a parameter that took no part in the
/// loss gets `None`). A tied `wte` has a single gradient: embedding and head contributions summed.
pub fn param_grads<B: AutodiffBackend, M: Module<B>>(
    module: &M,
    grads: &B::Gradients,
) -> Vec<(String, Option<TensorData>)> {
    param_grad_tensors(module, grads)
        .into_iter()
        .map(|(name, g)| (name, g.map(Tensor::into_data)))
        .collect()
}

/// [`param_grads`] left on the device, each gradient flattened to one dimension (the parameter's
/// shape is [`param_shapes`]'): for summing micro-batches without copying each one to the host.
pub fn param_grad_tensors<B: AutodiffBackend, M: Module<B>>(
    module: &M,
    grads: &B::Gradients,
) -> Vec<(String, Option<Tensor<B::InnerBackend, 1>>)> {
    type Flat<B> = Tensor<<B as AutodiffBackend>::InnerBackend, 1>;
    struct Grads<'a, B: AutodiffBackend>(Path, Vec<(String, Option<Flat<B>>)>, &'a B::Gradients);
    impl<B: AutodiffBackend> ModuleVisitor<B> for Grads<'_, B> {
        fn enter_module(&mut self, name: &str, container_type: &str) {
            self.0.enter(name, container_type);
        }
        fn exit_module(&mut self, _: &str, container_type: &str) {
            self.0.exit(container_type);
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            let grad = param.grad(self.2).map(|g| {
                let n = g.shape().num_elements();
                g.reshape([n])
            });
            self.1.push((self.0.name(), grad));
        }
    }
    let mut visitor = Grads::<B>(Path::default(), Vec::new(), grads);
    module.visit(&mut visitor);
    visitor.1
}

/// Whether any parameter of `module` takes a gradient.
pub fn any_trainable<B: Backend, M: Module<B>>(module: &M) -> bool {
    struct Any(bool);
    impl<B: Backend> ModuleVisitor<B> for Any {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            self.0 |= param.is_require_grad();
        }
    }
    let mut any = Any(false);
    module.visit(&mut any);
    any.0
}

/// Every float parameter marked as taking a gradient or not, by HF name (`trainable`): a
/// frozen parameter takes no part in the backward pass and has no optimizer state.
pub fn set_trainable<B: Backend, M: Module<B>>(module: M, trainable: impl Fn(&str) -> bool) -> M {
    struct Mark<F>(Path, F);
    impl<B: Backend, F: Fn(&str) -> bool> ModuleMapper<B> for Mark<F> {
        fn enter_module(&mut self, name: &str, container_type: &str) {
            self.0.enter(name, container_type);
        }
        fn exit_module(&mut self, _: &str, container_type: &str) {
            self.0.exit(container_type);
        }
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
            param.set_require_grad((self.1)(&self.0.name()))
        }
    }
    module.map(&mut Mark(Path::default(), trainable))
}

/// Replaces every float parameter with the tensor `source` gives for its HF name and shape.
/// `source` sees the expected shape and returns the new value or an error; the first error
/// stops the replacement (later parameters keep their lazy initial values) and is returned.
pub fn replace_params<B: Backend, M: Module<B>, E>(
    module: M,
    source: impl FnMut(&str, &[usize]) -> Result<TensorData, E>,
    device: &B::Device,
) -> Result<M, E> {
    replace_params_where(module, |_| true, source, device)
}

/// [`replace_params`] for the parameters `select` names only (the others are kept as they are).
pub fn replace_params_where<B: Backend, M: Module<B>, E>(
    module: M,
    select: impl Fn(&str) -> bool,
    source: impl FnMut(&str, &[usize]) -> Result<TensorData, E>,
    device: &B::Device,
) -> Result<M, E> {
    struct Replace<'a, S, F, E, D> {
        path: Path,
        select: S,
        source: F,
        error: Option<E>,
        device: &'a D,
    }
    impl<B: Backend, S: Fn(&str) -> bool, F: FnMut(&str, &[usize]) -> Result<TensorData, E>, E>
        ModuleMapper<B> for Replace<'_, S, F, E, B::Device>
    {
        fn enter_module(&mut self, name: &str, container_type: &str) {
            self.path.enter(name, container_type);
        }
        fn exit_module(&mut self, _: &str, container_type: &str) {
            self.path.exit(container_type);
        }
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
            if self.error.is_some() || !(self.select)(&self.path.name()) {
                return param;
            }
            let shape = param.lazy_shape().to_vec();
            match (self.source)(&self.path.name(), &shape) {
                Ok(data) => {
                    let id = param.id;
                    param.transform_for_load(Tensor::from_data(data, self.device), id)
                }
                Err(error) => {
                    self.error = Some(error);
                    param
                }
            }
        }
    }
    let mut mapper = Replace {
        path: Path::default(),
        select,
        source,
        error: None,
        device,
    };
    let module = module.map(&mut mapper);
    match mapper.error {
        Some(error) => Err(error),
        None => Ok(module),
    }
}

#[cfg(test)]
mod tests {
    use burn::tensor::backend::Backend;

    use super::*;
    use crate::device::{InitBackend, INIT_DEVICE};
    use crate::model::{Model, ModelConfig, ModelOptions};

    /// A preset's initial weights read by taking the model apart are the ones read from it
    /// whole: the same parameters drawn in the same order.
    #[test]
    fn into_param_values_reads_what_param_values_reads() {
        let config = ModelConfig::preset("llama-tiny").unwrap();
        let fresh = || {
            InitBackend::seed(&INIT_DEVICE, 5);
            Model::<InitBackend>::new(&config, &ModelOptions::default(), &INIT_DEVICE).unwrap()
        };
        let whole = param_values(&fresh());
        let taken = into_param_values(fresh());
        assert_eq!(whole.len(), taken.len());
        for ((a, x), (b, y)) in whole.iter().zip(&taken) {
            assert_eq!(a, b);
            assert_eq!(x, y, "{a}");
        }
    }
}
