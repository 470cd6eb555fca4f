//! A module's tensors as one flat `f32` buffer, in the module's visiting order, so that one
//! collective moves them all (not one call per parameter).
//!
//! What a step exchanges ([`Layout::pack`]): the gradients of the trainable parameters only
//! (frozen ones never travel and never receive a gradient), then one flag per trainable
//! parameter saying whether this rank has a gradient for it (a parameter no rank's loss reached
//! gets none, as in one process, instead of a zero gradient that Adam or weight decay would
//! still act on), then the buffers weighted by this rank's share of the rows (summed, they are
//! the row-weighted mean that every rank then holds).

use crate::buffers::Buffers;
use burn::module::{AutodiffModule, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{Tensor, TensorData};
use std::any::Any;
use std::collections::{HashMap, HashSet};

/// What a float tensor of the module is to the exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A parameter that requires a gradient.
    Trainable,
    /// A parameter that does not (fine-tuning): it never travels after the start.
    Frozen,
    /// State the forward pass updates (BatchNorm's running statistics).
    Buffer,
}

#[derive(Debug, Clone)]
struct Entry {
    id: ParamId,
    shape: Vec<usize>,
    kind: Kind,
}

impl Entry {
    fn len(&self) -> usize {
        self.shape.iter().product()
    }
}

/// The module's float tensors, each once, in visiting order.
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    entries: Vec<Entry>,
    kinds: HashMap<ParamId, Kind>,
}

impl Layout {
    pub(crate) fn of<B: AutodiffBackend, M: AutodiffModule<B>>(
        module: &M,
        buffers: &Buffers,
    ) -> Self {
        struct Collect<'a> {
            buffers: &'a Buffers,
            seen: HashSet<ParamId>,
            entries: Vec<Entry>,
        }
        impl<B: AutodiffBackend> ModuleVisitor<B> for Collect<'_> {
            fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
                if !self.seen.insert(param.id) {
                    return;
                }
                let value = param.val();
                let kind = if self.buffers.contains(&param.id) {
                    Kind::Buffer
                } else if value.is_require_grad() {
                    Kind::Trainable
                } else {
                    Kind::Frozen
                };
                self.entries.push(Entry {
                    id: param.id,
                    shape: value.dims().to_vec(),
                    kind,
                });
            }
        }
        let mut collect = Collect {
            buffers,
            seen: HashSet::new(),
            entries: Vec::new(),
        };
        module.visit(&mut collect);
        let kinds = collect.entries.iter().map(|e| (e.id, e.kind)).collect();
        Self {
            entries: collect.entries,
            kinds,
        }
    }

    /// Shapes and kinds, as bytes: what ranks compare before training.
    pub(crate) fn signature(&self) -> Vec<u8> {
        self.entries
            .iter()
            .flat_map(|e| {
                let header = [e.kind as u64, e.shape.len() as u64];
                header
                    .into_iter()
                    .chain(e.shape.iter().map(|&d| d as u64))
                    .collect::<Vec<_>>()
            })
            .flat_map(u64::to_le_bytes)
            .collect()
    }

    /// Values of every float tensor: what rank 0 broadcasts at the start.
    pub(crate) fn values(&self) -> usize {
        self.entries.iter().map(Entry::len).sum()
    }

    fn has(&self, kind: Kind) -> impl Iterator<Item = &Entry> + '_ {
        self.entries.iter().filter(move |e| e.kind == kind)
    }

    /// Every float tensor's values, one after another.
    pub(crate) fn params<B: AutodiffBackend, M: AutodiffModule<B>>(&self, module: &M) -> Vec<f32> {
        struct Read(HashSet<ParamId>, Vec<f32>);
        impl<B: AutodiffBackend> ModuleVisitor<B> for Read {
            fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
                if self.0.insert(param.id) {
                    append(&mut self.1, param.val().inner().into_data());
                }
            }
        }
        crate::replicas::settle(module);
        let mut read = Read(HashSet::new(), Vec::with_capacity(self.values()));
        module.visit(&mut read);
        read.1
    }

    /// `module` with its float tensors read from `buffer` (as written by [`params`]), with the
    /// same ids, and with the same parameters requiring a gradient as before.
    ///
    /// [`params`]: Self::params
    pub(crate) fn with_params<B: AutodiffBackend, M: AutodiffModule<B>>(
        &self,
        module: M,
        buffer: &[f32],
    ) -> M {
        crate::replicas::settle(&module);
        let mut offset = 0;
        let mut values = Values::default();
        for entry in &self.entries {
            let end = (offset + entry.len()).min(buffer.len());
            values.host.insert(entry.id, buffer[offset..end].to_vec());
            offset = end;
        }
        module.map(&mut values)
    }

    /// This rank's contribution to a step, on the device of the module's first tensor, built on
    /// the device so that a GPU transport never leaves it.
    pub(crate) fn pack<B: AutodiffBackend, M: AutodiffModule<B>>(
        &self,
        module: &M,
        grads: &GradientsParams,
        buffer_weight: f64,
    ) -> Tensor<B::InnerBackend, 1> {
        struct Pack<'a, B: AutodiffBackend> {
            layout: &'a Layout,
            grads: &'a GradientsParams,
            weight: f64,
            seen: HashSet<ParamId>,
            device: Option<B::Device>,
            gradients: Vec<Tensor<B::InnerBackend, 1>>,
            flags: Vec<f32>,
            buffers: Vec<Tensor<B::InnerBackend, 1>>,
        }
        impl<B: AutodiffBackend> ModuleVisitor<B> for Pack<'_, B> {
            fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
                if !self.seen.insert(param.id) {
                    return;
                }
                let value = param.val().inner();
                let device = self.device.get_or_insert_with(|| value.device()).clone();
                match self.layout.kind(param.id) {
                    Some(Kind::Trainable) => {
                        let grad = self.grads.get::<B::InnerBackend, D>(param.id);
                        self.flags.push(if grad.is_some() { 1.0 } else { 0.0 });
                        self.gradients.push(match grad {
                            Some(grad) => grad.flatten::<1>(0, D - 1).to_device(&device),
                            None => Tensor::zeros([value.shape().num_elements()], &device),
                        });
                    }
                    Some(Kind::Buffer) => self.buffers.push(
                        value
                            .flatten::<1>(0, D - 1)
                            .to_device(&device)
                            .mul_scalar(self.weight),
                    ),
                    Some(Kind::Frozen) | None => {}
                }
            }
        }
        crate::replicas::settle(module);
        let mut pack = Pack::<B> {
            layout: self,
            grads,
            weight: buffer_weight,
            seen: HashSet::new(),
            device: None,
            gradients: Vec::new(),
            flags: Vec::new(),
            buffers: Vec::new(),
        };
        module.visit(&mut pack);
        let Some(device) = pack.device else {
            return Tensor::zeros([0], &Default::default());
        };
        let count = pack.flags.len();
        let flags = Tensor::from_data(TensorData::new(pack.flags, [count]), &device);
        let parts: Vec<_> = pack
            .gradients
            .into_iter()
            .chain(std::iter::once(flags))
            .chain(pack.buffers)
            .collect();
        Tensor::cat(parts, 0)
    }

    /// The gradients in `flat` (the sum of every rank's [`pack`]) for the trainable parameters
    /// that some rank had one for, on each parameter's device; the buffers in `flat` are
    /// written into `module`'s.
    ///
    /// [`pack`]: Self::pack
    pub(crate) fn unpack<B: AutodiffBackend, M: AutodiffModule<B>>(
        &self,
        module: &M,
        flat: Tensor<B::InnerBackend, 1>,
    ) -> GradientsParams {
        struct Unpack<'a, B: AutodiffBackend> {
            layout: &'a Layout,
            flat: Tensor<B::InnerBackend, 1>,
            flags: Vec<f32>,
            seen: HashSet<ParamId>,
            gradient_at: usize,
            flag_at: usize,
            buffer_at: usize,
            grads: GradientsParams,
            buffers: Values,
        }
        impl<B: AutodiffBackend> ModuleVisitor<B> for Unpack<'_, B> {
            fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
                if !self.seen.insert(param.id) {
                    return;
                }
                let value = param.val();
                let (shape, count) = (value.shape(), value.shape().num_elements());
                match self.layout.kind(param.id) {
                    Some(Kind::Trainable) => {
                        let at = self.gradient_at;
                        self.gradient_at += count;
                        let reached = self.flags.get(self.flag_at).is_some_and(|&f| f > 0.0);
                        self.flag_at += 1;
                        if reached {
                            let grad: Tensor<B::InnerBackend, D> = self
                                .flat
                                .clone()
                                .slice(at..at + count)
                                .reshape(shape)
                                .to_device(&value.device());
                            self.grads.register(param.id, grad);
                        }
                    }
                    Some(Kind::Buffer) => {
                        let at = self.buffer_at;
                        self.buffer_at += count;
                        let slice = self.flat.clone().slice(at..at + count);
                        self.buffers.device.insert(param.id, Box::new(slice));
                    }
                    Some(Kind::Frozen) | None => {}
                }
            }
        }
        let trainable = self.has(Kind::Trainable).count();
        let gradient_values: usize = self.has(Kind::Trainable).map(Entry::len).sum();
        let flags = flat
            .clone()
            .slice(gradient_values..gradient_values + trainable)
            .into_data()
            .convert::<f32>()
            .to_vec()
            .unwrap_or_default();
        let mut unpack = Unpack::<B> {
            layout: self,
            flat,
            flags,
            seen: HashSet::new(),
            gradient_at: 0,
            flag_at: 0,
            buffer_at: gradient_values + trainable,
            grads: GradientsParams::new(),
            buffers: Values::default(),
        };
        module.visit(&mut unpack);
        if !unpack.buffers.device.is_empty() {
            crate::replicas::settle(module);
            // A clone shares the module's buffers: mapping it writes into them.
            let _ = module.clone().map(&mut unpack.buffers);
        }
        unpack.grads
    }

    fn kind(&self, id: ParamId) -> Option<Kind> {
        self.kinds.get(&id).copied()
    }
}

/// Appends a tensor's values; a plain copy when they are already `f32` (the generic element
/// iterator is about 30 times slower).
fn append(buffer: &mut Vec<f32>, data: TensorData) {
    let data = data.convert::<f32>();
    match data.as_slice::<f32>() {
        Ok(values) => buffer.extend_from_slice(values),
        Err(_) => buffer.extend(data.iter::<f32>()),
    }
}

/// Values by id, given to the float tensors with those ids (reshaped to theirs): from the
/// host (`host`, keeping whether the tensor requires a gradient) or flat on a device.
#[derive(Default)]
struct Values {
    host: HashMap<ParamId, Vec<f32>>,
    device: HashMap<ParamId, Box<dyn Any + Send>>,
}

impl<B: AutodiffBackend> ModuleMapper<B> for Values {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        if let Some(values) = self.host.get(&param.id) {
            let values = values.clone();
            return param.map(|tensor| {
                let trainable = tensor.is_require_grad();
                let shape = tensor.shape();
                Tensor::from_data(TensorData::new(values, shape), &tensor.device())
                    .set_require_grad(trainable)
            });
        }
        let on_device = self
            .device
            .get(&param.id)
            .and_then(|v| v.downcast_ref::<Tensor<B::InnerBackend, 1>>());
        match on_device {
            Some(values) => {
                let values = values.clone();
                param.map(|tensor| {
                    let shape = tensor.shape();
                    Tensor::from_inner(values.to_device(&tensor.device()).reshape(shape))
                })
            }
            None => param,
        }
    }
}
