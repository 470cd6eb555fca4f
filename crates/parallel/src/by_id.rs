//! Float tensors keyed by parameter id: read from a module by visiting it, written into a module
//! by mapping it. Burn's visitors and mappers are generic over each tensor's rank, so the
//! tensors are kept as `Any` and taken back at the rank the mapper asks for.

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use std::any::Any;
use std::collections::HashMap;

/// Tensors by id.
#[derive(Default)]
pub(crate) struct ById(HashMap<ParamId, Box<dyn Any + Send>>);

impl ById {
    /// Every float tensor of `module` (the first one met, for an id met twice).
    pub(crate) fn of<B: Backend, M: Module<B>>(module: &M) -> Self {
        let mut all = Self::default();
        module.visit(&mut all);
        all
    }

    pub(crate) fn insert<B: Backend, const D: usize>(&mut self, id: ParamId, value: Tensor<B, D>) {
        self.0.insert(id, Box::new(value));
    }

    pub(crate) fn get<B: Backend, const D: usize>(&self, id: &ParamId) -> Option<&Tensor<B, D>> {
        self.0.get(id).and_then(|value| value.downcast_ref())
    }

    /// Keeps only the ids `keep` says yes to.
    pub(crate) fn retain(&mut self, mut keep: impl FnMut(&ParamId) -> bool) {
        self.0.retain(|id, _| keep(id));
    }
}

impl<B: Backend> ModuleVisitor<B> for ById {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if !self.0.contains_key(&param.id) {
            self.insert(param.id, param.val());
        }
    }
}

/// Gives every float tensor whose id it holds that value, on the tensor's own device.
impl<B: Backend> ModuleMapper<B> for ById {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        match self.get::<B, D>(&param.id).cloned() {
            Some(value) => param.map(|old| {
                let device = old.device();
                // A move to the same device would still be an autodiff step: not made.
                if value.device() == device {
                    value
                } else {
                    value.to_device(&device)
                }
            }),
            None => param,
        }
    }
}
