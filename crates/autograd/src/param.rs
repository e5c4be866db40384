//! Named parameters in a stable (insertion) order, each with data, a gradient accumulator and a
//! "no weight decay" flag.

use std::collections::HashMap;
use std::sync::Arc;

use crate::pool::Buffer;
use crate::tensor::{Shape, Tensor};
use crate::{Error, Result};

/// Index of a parameter in its [`ParamStore`] (insertion order).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ParamId(pub usize);

/// One named parameter.
#[derive(Debug)]
pub struct Param {
    name: String,
    shape: Shape,
    data: Arc<Buffer>,
    grad: Option<Buffer>,
    no_decay: bool,
}

impl Param {
    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn shape(&self) -> &[usize] {
        self.shape.dims()
    }
    pub fn numel(&self) -> usize {
        self.data.len()
    }
    pub fn data(&self) -> &[f32] {
        &self.data
    }
    /// Mutable data. If a tape still shares the storage, the parameter gets its own copy first
    /// (the tape keeps the old values), so this never aliases.
    pub fn data_mut(&mut self) -> &mut [f32] {
        &mut Arc::<Buffer>::make_mut(&mut self.data)[..]
    }
    /// Accumulated gradient, if any backward reached this parameter since the last `zero_grad`.
    pub fn grad(&self) -> Option<&[f32]> {
        self.grad.as_deref()
    }
    pub fn grad_mut(&mut self) -> Option<&mut [f32]> {
        self.grad.as_deref_mut()
    }
    /// Replaces the gradient accumulator (e.g. gradients computed outside a tape).
    pub fn set_grad(&mut self, grad: Option<Buffer>) {
        if let Some(g) = &grad {
            assert_eq!(g.len(), self.numel(), "gradient length of {}", self.name);
        }
        self.grad = grad;
    }
    /// Data and gradient together (for optimizers).
    pub fn data_and_grad(&mut self) -> (&mut [f32], Option<&[f32]>) {
        (&mut Arc::<Buffer>::make_mut(&mut self.data)[..], self.grad.as_deref())
    }
    /// True for parameters excluded from weight decay (norm weights).
    pub fn no_decay(&self) -> bool {
        self.no_decay
    }
    /// The parameter as an untracked tensor sharing its storage.
    pub fn tensor(&self) -> Tensor {
        Tensor::from_arc(self.shape.dims(), self.data.clone()).expect("param shape checked on add")
    }
}

/// All parameters of a model, in insertion order.
#[derive(Debug, Default)]
pub struct ParamStore {
    params: Vec<Param>,
    by_name: HashMap<String, usize>,
}

impl ParamStore {
    pub fn new() -> ParamStore {
        ParamStore::default()
    }

    /// Adds a parameter; names must be unique and `data` must match `shape`.
    pub fn add(
        &mut self,
        name: &str,
        shape: &[usize],
        data: Vec<f32>,
        no_decay: bool,
    ) -> Result<ParamId> {
        if self.by_name.contains_key(name) {
            return Err(Error::DuplicateParam(name.to_string()));
        }
        let s = Shape::new(shape)?;
        if s.numel() != data.len() {
            return Err(Error::ShapeData {
                shape: shape.to_vec(),
                expected: s.numel(),
                got: data.len(),
            });
        }
        let id = self.params.len();
        self.params.push(Param {
            name: name.to_string(),
            shape: s,
            data: Arc::new(Buffer::from_vec(data)),
            grad: None,
            no_decay,
        });
        self.by_name.insert(name.to_string(), id);
        Ok(ParamId(id))
    }

    pub fn len(&self) -> usize {
        self.params.len()
    }
    pub fn is_empty(&self) -> bool {
        self.params.is_empty()
    }
    /// Total number of scalars.
    pub fn num_elements(&self) -> usize {
        self.params.iter().map(Param::numel).sum()
    }
    pub fn id(&self, name: &str) -> Option<ParamId> {
        self.by_name.get(name).map(|&i| ParamId(i))
    }
    /// Panics on an id from another store (ids are only made by `add`).
    pub fn get(&self, id: ParamId) -> &Param {
        &self.params[id.0]
    }
    pub fn get_mut(&mut self, id: ParamId) -> &mut Param {
        &mut self.params[id.0]
    }
    /// Parameters in insertion order.
    pub fn iter(&self) -> impl Iterator<Item = (ParamId, &Param)> {
        self.params.iter().enumerate().map(|(i, p)| (ParamId(i), p))
    }
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (ParamId, &mut Param)> {
        self.params.iter_mut().enumerate().map(|(i, p)| (ParamId(i), p))
    }
    /// Drops all gradients (their buffers return to the pool).
    pub fn zero_grad(&mut self) {
        self.params.iter_mut().for_each(|p| p.grad = None);
    }

    /// Adds the parameter gradients of one backward pass into the accumulators (moving the
    /// buffer when the accumulator is empty), so micro-batches can be summed.
    pub fn accumulate_grads(&mut self, grads: impl IntoIterator<Item = (ParamId, Buffer)>) {
        for (id, g) in grads {
            let p = &mut self.params[id.0];
            match &mut p.grad {
                Some(acc) => acc.iter_mut().zip(g.iter()).for_each(|(a, x)| *a += x),
                None => p.grad = Some(g),
            }
        }
    }

    /// Multiplies every gradient by `c` (e.g. 1/micro-batches or clipping).
    pub fn scale_grads(&mut self, c: f32) {
        for p in &mut self.params {
            if let Some(g) = &mut p.grad {
                g.iter_mut().for_each(|x| *x *= c);
            }
        }
    }
}
