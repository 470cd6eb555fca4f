//! A module's tensors as one flat `f32` buffer, in the module's visiting order, so that one
//! collective moves them all (not one call per parameter).
//!
//! What a step exchanges ([`Layout::pack`]): the gradients of the trainable parameters only
//! (frozen ones never travel and never receive a gradient), one flag per trainable parameter
//! saying whether this rank has a gradient for it (a parameter no rank's loss reached gets none,
//! as in one process, instead of a zero gradient that Adam or weight decay would still act on).
//! Buffers (running statistics) never travel here after the start: the ranks combine them after
//! every micro-batch, as one process does, through the small gather each micro-batch makes.
//!
//! With the optimizer state sharded, the buffer is cut into one block per rank: the
//! reduce-scatter gives rank `r` the sum of block `r` (the gradients of the parameters whose
//! optimizer step it takes), and after the step [`Layout::pack_values`] and the all-gather bring
//! every rank's updated parameters to all.

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
    /// State the forward pass updates (BatchNorm's running statistics): combined after each
    /// micro-batch, not here.
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

/// The module's float tensors, each once, in visiting order, and where each travels.
///
/// The flat buffer is cut into blocks, one per owner (one block for an all-reduce; one per rank
/// when the optimizer state is sharded). Each block holds its owner's trainable gradients (or,
/// for the all-gather, parameters), then their presence flags, and, where the
/// engine needs blocks of one size (NCCL), zeros up to the largest block's length. Tensors are
/// dealt to owners in visiting order, in contiguous runs of about the same number of values, so
/// blocks differ by at most about one tensor.
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    entries: Vec<Entry>,
    places: HashMap<ParamId, Place>,
    blocks: usize,
    /// Where each block starts, and where the last one ends.
    starts: Vec<usize>,
    /// Per block: where its flags start, and how many there are.
    flags: Vec<(usize, usize)>,
}

/// Where a tensor's values sit in the flat buffer.
#[derive(Debug, Clone, Copy)]
struct Place {
    kind: Kind,
    owner: usize,
    /// Start of its values: gradient or parameter for a trainable tensor, value for a buffer.
    at: usize,
    /// Its presence flag (trainable tensors only).
    flag: usize,
}

impl Layout {
    /// The layout of `module`'s tensors in `blocks` blocks, all as long as the longest if
    /// `equal`.
    pub(crate) fn of<B: AutodiffBackend, M: AutodiffModule<B>>(
        module: &M,
        buffers: &Buffers,
        blocks: usize,
        equal: bool,
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
        Self::place(collect.entries, blocks.max(1), equal)
    }

    fn place(entries: Vec<Entry>, blocks: usize, equal: bool) -> Self {
        let travelling: Vec<&Entry> = entries
            .iter()
            .filter(|e| e.kind == Kind::Trainable)
            .collect();
        let total: usize = travelling.iter().map(|e| e.len()).sum();
        // A tensor belongs to the block its middle value falls in.
        let mut before = 0;
        let owners: Vec<usize> = travelling
            .iter()
            .map(|e| {
                let middle = before + e.len() / 2;
                before += e.len();
                (middle * blocks / total.max(1)).min(blocks - 1)
            })
            .collect();
        // Per block: gradient values, flags.
        let mut sizes = vec![[0usize; 2]; blocks];
        for (e, &owner) in travelling.iter().zip(&owners) {
            sizes[owner][0] += e.len();
            sizes[owner][1] += 1;
        }
        let longest: usize = sizes.iter().map(|s| s.iter().sum()).max().unwrap_or(0);
        let mut starts = vec![0];
        for size in &sizes {
            let len = if equal { longest } else { size.iter().sum() };
            starts.push(starts.last().copied().unwrap_or(0) + len);
        }
        let mut used = vec![[0usize; 2]; blocks];
        let mut places = HashMap::new();
        for (e, &owner) in travelling.iter().zip(&owners) {
            let base = starts[owner];
            let [grads, _] = sizes[owner];
            let used = &mut used[owner];
            let place = Place {
                kind: e.kind,
                owner,
                at: base + used[0],
                flag: base + grads + used[1],
            };
            used[0] += e.len();
            used[1] += 1;
            places.insert(e.id, place);
        }
        let flags = sizes
            .iter()
            .enumerate()
            .map(|(owner, [grads, flags])| (starts[owner] + grads, *flags))
            .collect();
        Self {
            entries,
            places,
            blocks,
            starts,
            flags,
        }
    }

    /// Shapes, kinds and blocks, as bytes: what ranks compare before training.
    pub(crate) fn signature(&self) -> Vec<u8> {
        std::iter::once(self.blocks as u64)
            .chain(self.entries.iter().flat_map(|e| {
                let header = [e.kind as u64, e.shape.len() as u64];
                header
                    .into_iter()
                    .chain(e.shape.iter().map(|&d| d as u64))
                    .collect::<Vec<_>>()
            }))
            .flat_map(u64::to_le_bytes)
            .collect()
    }

    /// Values of every float tensor: what rank 0 broadcasts at the start.
    pub(crate) fn values(&self) -> usize {
        self.entries.iter().map(Entry::len).sum()
    }

    /// Length of each block: the flat buffer holds one per owner, one after another.
    pub(crate) fn counts(&self) -> Vec<usize> {
        self.starts.windows(2).map(|w| w[1] - w[0]).collect()
    }

    /// The trainable tensors in block `owner`: those whose optimizer step rank `owner` takes
    /// when the state is sharded.
    pub(crate) fn owned_by(&self, owner: usize) -> HashSet<ParamId> {
        self.places
            .iter()
            .filter(|(_, p)| p.kind == Kind::Trainable && p.owner == owner)
            .map(|(&id, _)| id)
            .collect()
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

    /// The ids of every float tensor, in visiting order.
    pub(crate) fn ids(&self) -> Vec<u64> {
        self.entries.iter().map(|e| e.id.val()).collect()
    }

    /// `module` with its float tensors read from `buffer` (as written by [`params`]), with the
    /// same parameters requiring a gradient as before, and with the parameters taking the ids
    /// `ids` (as written by [`ids`](Self::ids): rank 0's, so that every rank's optimizer
    /// records name the parameters alike; buffers keep theirs, which no record names).
    ///
    /// [`params`]: Self::params
    pub(crate) fn with_params<B: AutodiffBackend, M: AutodiffModule<B>>(
        &self,
        module: M,
        buffer: &[f32],
        ids: &[u64],
    ) -> M {
        crate::replicas::settle(&module);
        let mut offset = 0;
        let mut values = Values::default();
        for (entry, &id) in self.entries.iter().zip(ids) {
            let end = (offset + entry.len()).min(buffer.len());
            values.host.insert(entry.id, buffer[offset..end].to_vec());
            values.ids.insert(entry.id, ParamId::from(id));
            offset = end;
        }
        module.map(&mut values)
    }

    /// This rank's contribution to a step, every block filled: its gradients (a zero one where
    /// it has none) and their presence flags. Built on the device of the module's first
    /// tensor, so that a GPU transport never leaves it.
    pub(crate) fn pack<B: AutodiffBackend, M: AutodiffModule<B>>(
        &self,
        module: &M,
        grads: &GradientsParams,
    ) -> Tensor<B::InnerBackend, 1> {
        self.assemble::<B, M>(module, Content::Gradients(grads))
    }

    /// Block `owner` filled with the module's values of its trainable tensors, zeros elsewhere: this rank's part of the all-gather that follows a sharded step.
    pub(crate) fn pack_values<B: AutodiffBackend, M: AutodiffModule<B>>(
        &self,
        module: &M,
        owner: usize,
    ) -> Tensor<B::InnerBackend, 1> {
        self.assemble::<B, M>(module, Content::Values(owner))
    }

    fn assemble<B: AutodiffBackend, M: AutodiffModule<B>>(
        &self,
        module: &M,
        content: Content<'_>,
    ) -> Tensor<B::InnerBackend, 1> {
        struct Pack<'a, B: AutodiffBackend> {
            layout: &'a Layout,
            content: Content<'a>,
            seen: HashSet<ParamId>,
            device: Option<B::Device>,
            blocks: Vec<Block<B::InnerBackend>>,
        }
        impl<B: AutodiffBackend> ModuleVisitor<B> for Pack<'_, B> {
            fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
                if !self.seen.insert(param.id) {
                    return;
                }
                let value = param.val().inner();
                let device = self.device.get_or_insert_with(|| value.device()).clone();
                let Some(&place) = self.layout.places.get(&param.id) else {
                    return;
                };
                let flat =
                    |t: Tensor<B::InnerBackend, D>| t.flatten::<1>(0, D - 1).to_device(&device);
                let block = &mut self.blocks[place.owner];
                match (self.content, place.kind) {
                    (Content::Gradients(grads), Kind::Trainable) => {
                        let grad = grads.get::<B::InnerBackend, D>(param.id);
                        block.1.push(if grad.is_some() { 1.0 } else { 0.0 });
                        block.0.push(match grad {
                            Some(grad) => flat(grad),
                            None => Tensor::zeros([value.shape().num_elements()], &device),
                        });
                    }
                    (Content::Values(owner), Kind::Trainable) if owner == place.owner => {
                        block.1.push(0.0);
                        block.0.push(flat(value));
                    }
                    _ => {}
                }
            }
        }
        crate::replicas::settle(module);
        let mut pack = Pack::<B> {
            layout: self,
            content,
            seen: HashSet::new(),
            device: None,
            blocks: (0..self.blocks).map(|_| Default::default()).collect(),
        };
        module.visit(&mut pack);
        let Some(device) = pack.device else {
            return Tensor::zeros([0], &Default::default());
        };
        let mut parts = Vec::new();
        for ((gradients, flags), len) in pack.blocks.into_iter().zip(self.counts()) {
            let count = flags.len();
            let mut filled = 0;
            for part in gradients.into_iter().chain(
                (count > 0).then(|| Tensor::from_data(TensorData::new(flags, [count]), &device)),
            ) {
                filled += part.dims()[0];
                parts.push(part);
            }
            if filled < len {
                parts.push(Tensor::zeros([len - filled], &device));
            }
        }
        if parts.is_empty() {
            return Tensor::zeros([0], &device);
        }
        Tensor::cat(parts, 0)
    }

    /// The gradients in block `owner` of `flat` (the sum of every rank's [`pack`]) for the
    /// trainable parameters some rank had one for, on each parameter's device.
    ///
    /// [`pack`]: Self::pack
    pub(crate) fn unpack<B: AutodiffBackend, M: AutodiffModule<B>>(
        &self,
        module: &M,
        flat: Tensor<B::InnerBackend, 1>,
        owner: usize,
    ) -> GradientsParams {
        struct Unpack<'a, B: AutodiffBackend> {
            layout: &'a Layout,
            flat: Tensor<B::InnerBackend, 1>,
            owner: usize,
            /// The block's flags, from `flags_at`.
            flags: Vec<f32>,
            flags_at: usize,
            seen: HashSet<ParamId>,
            grads: GradientsParams,
        }
        impl<B: AutodiffBackend> ModuleVisitor<B> for Unpack<'_, B> {
            fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
                if !self.seen.insert(param.id) {
                    return;
                }
                let Some(&place) = self.layout.places.get(&param.id) else {
                    return;
                };
                if place.owner != self.owner {
                    return;
                }
                let value = param.val();
                let (shape, count) = (value.shape(), value.shape().num_elements());
                let slice = self.flat.clone().slice(place.at..place.at + count);
                match place.kind {
                    Kind::Trainable => {
                        let reached = self
                            .flags
                            .get(place.flag - self.flags_at)
                            .is_some_and(|&f| f > 0.0);
                        if reached {
                            let grad: Tensor<B::InnerBackend, D> =
                                slice.reshape(shape).to_device(&value.device());
                            self.grads.register(param.id, grad);
                        }
                    }
                    Kind::Buffer | Kind::Frozen => {}
                }
            }
        }
        // The one read to the host: the presence flags, which decide which gradients exist.
        let (flags_at, count) = self.flags.get(owner).copied().unwrap_or_default();
        let flags = if count > 0 {
            flat.clone()
                .slice(flags_at..flags_at + count)
                .into_data()
                .convert::<f32>()
                .to_vec()
                .unwrap_or_default()
        } else {
            Vec::new()
        };
        let mut unpack = Unpack::<B> {
            layout: self,
            flat,
            owner,
            flags,
            flags_at,
            seen: HashSet::new(),
            grads: GradientsParams::new(),
        };
        module.visit(&mut unpack);
        unpack.grads
    }

    /// `module` with every trainable tensor and buffer read from `flat` (every block filled by
    /// [`pack_values`](Self::pack_values) on its owner), keeping ids and which parameters
    /// require a gradient.
    pub(crate) fn with_values<B: AutodiffBackend, M: AutodiffModule<B>>(
        &self,
        module: M,
        flat: Tensor<B::InnerBackend, 1>,
    ) -> M {
        let mut values = Values::default();
        for entry in &self.entries {
            if let Some(place) = self.places.get(&entry.id) {
                let slice = flat.clone().slice(place.at..place.at + entry.len());
                values.device.insert(entry.id, Box::new(slice));
            }
        }
        crate::replicas::settle(&module);
        module.map(&mut values)
    }
}

/// One block's pieces: the trainable tensors' values and their flags.
type Block<B> = (Vec<Tensor<B, 1>>, Vec<f32>);

/// What [`Layout::assemble`] fills the blocks with.
#[derive(Clone, Copy)]
enum Content<'a> {
    /// Gradients and flags.
    Gradients(&'a GradientsParams),
    /// The values of block `owner`'s tensors.
    Values(usize),
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
/// host (`host`) or flat on a device (`device`), keeping whether the tensor requires a gradient.
#[derive(Default)]
struct Values {
    host: HashMap<ParamId, Vec<f32>>,
    device: HashMap<ParamId, Box<dyn Any + Send>>,
    /// New ids, by the old.
    ids: HashMap<ParamId, ParamId>,
}

impl<B: AutodiffBackend> ModuleMapper<B> for Values {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        if let Some(values) = self.host.get(&param.id) {
            let values = values.clone();
            let param = param.map(|tensor| {
                let trainable = tensor.is_require_grad();
                let shape = tensor.shape();
                Tensor::from_data(TensorData::new(values, shape), &tensor.device())
                    .set_require_grad(trainable)
            });
            return match self.ids.get(&param.id) {
                Some(&id) => {
                    let (_, value, mapper) = param.consume();
                    Param::from_mapped_value(id, value, mapper)
                }
                None => param,
            };
        }
        let on_device = self
            .device
            .get(&param.id)
            .and_then(|v| v.downcast_ref::<Tensor<B::InnerBackend, 1>>());
        match on_device {
            Some(values) => {
                let values = values.clone();
                param.map(|tensor| {
                    let trainable = tensor.is_require_grad();
                    let shape = tensor.shape();
                    Tensor::from_inner(values.to_device(&tensor.device()).reshape(shape))
                        .set_require_grad(trainable)
                })
            }
            None => param,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(len: usize, kind: Kind) -> Entry {
        Entry {
            id: ParamId::new(),
            shape: vec![len],
            kind,
        }
    }

    /// Every trainable value has a place of its own inside its block; frozen tensors and
    /// buffers have none; blocks differ by at most about one tensor.
    #[test]
    fn blocks_hold_every_travelling_value_once_and_about_evenly() {
        use Kind::*;
        let lens = [128, 16, 48, 3, 1000, 7, 7, 300, 1, 64];
        let kinds = [
            Trainable, Trainable, Buffer, Trainable, Frozen, Trainable, Buffer, Trainable,
            Trainable, Trainable,
        ];
        for (blocks, equal) in (1..=4).flat_map(|b| [(b, false), (b, true)]) {
            let entries: Vec<Entry> = lens.iter().zip(kinds).map(|(&l, k)| entry(l, k)).collect();
            let layout = Layout::place(entries.clone(), blocks, equal);
            let counts = layout.counts();
            assert_eq!(counts.len(), blocks);
            let total: usize = counts.iter().sum();
            let travelling_and_flags: usize = entries
                .iter()
                .filter(|e| e.kind == Trainable)
                .map(|e| e.len() + 1)
                .sum();
            if equal {
                assert!(counts.iter().all(|&c| c == counts[0]), "{counts:?}");
            } else {
                assert_eq!(
                    total, travelling_and_flags,
                    "unpadded blocks: no value more"
                );
            }
            let mut used = vec![false; total];
            let mut per_block = vec![0usize; blocks];
            for e in &entries {
                let Some(place) = layout.places.get(&e.id) else {
                    assert_ne!(e.kind, Trainable, "only trainable tensors travel");
                    continue;
                };
                assert_eq!(e.kind, Trainable);
                let (start, end) = (layout.starts[place.owner], layout.starts[place.owner + 1]);
                let mut cells: Vec<usize> = (place.at..place.at + e.len()).collect();
                if e.kind == Trainable {
                    cells.push(place.flag);
                }
                for cell in cells {
                    assert!(
                        (start..end).contains(&cell),
                        "{blocks} blocks: {cell} outside block {}",
                        place.owner
                    );
                    assert!(!used[cell], "{blocks} blocks: {cell} used twice");
                    used[cell] = true;
                }
                per_block[place.owner] += e.len();
            }
            let travelling: usize = entries
                .iter()
                .filter(|e| e.kind == Trainable)
                .map(Entry::len)
                .sum();
            assert_eq!(per_block.iter().sum::<usize>(), travelling);
            let largest = entries
                .iter()
                .filter(|e| e.kind == Trainable)
                .map(Entry::len)
                .max()
                .unwrap();
            for (owner, &values) in per_block.iter().enumerate() {
                assert!(
                    values <= travelling / blocks + largest,
                    "{blocks} blocks: block {owner} holds {values}"
                );
            }
            let (flags_at, count) = layout.flags[0];
            assert_eq!(flags_at, per_block_grads(&layout, &entries, 0));
            assert!(count <= 7);
        }
    }

    fn per_block_grads(layout: &Layout, entries: &[Entry], owner: usize) -> usize {
        entries
            .iter()
            .filter(|e| e.kind == Kind::Trainable)
            .filter(|e| layout.places[&e.id].owner == owner)
            .map(Entry::len)
            .sum()
    }
}
