//! The define-by-run tape: each recorded op is a node holding its inputs' node links and a
//! backward closure; `backward` walks the nodes in reverse and hands each closure its output
//! gradient plus one gradient slot per input.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::param::{ParamId, ParamStore};
use crate::pool::Buffer;
use crate::tensor::{NodeRef, Tensor};
use crate::{Error, Result};

/// A backward closure: `(grad of the output, one slot per input) -> ()`.
pub type BackwardFn = Box<dyn FnOnce(&[f32], &mut [Option<GradSlot>]) + Send>;

static NEXT_TAPE_ID: AtomicU32 = AtomicU32::new(1);

/// An input link: which node, and which element range of its output.
#[derive(Clone, Copy, Debug)]
struct InputRef {
    index: usize,
    offset: usize,
    len: usize,
}

struct Node {
    /// Number of elements of the node's output.
    len: usize,
    inputs: Vec<Option<InputRef>>,
    /// `None` for leaves (their gradient is kept and returned).
    backward: Option<BackwardFn>,
    param: Option<ParamId>,
}

/// Where one input's gradient goes during backward.
///
/// `data()` is the input's gradient range. If `accumulate()` is false the slot is fresh and holds
/// unspecified values: the op must overwrite every element. If true, the op must add into it.
pub struct GradSlot {
    buf: Buffer,
    start: usize,
    len: usize,
    accumulate: bool,
}

impl GradSlot {
    /// The gradient range of this input.
    pub fn data(&mut self) -> &mut [f32] {
        &mut self.buf[self.start..self.start + self.len]
    }
    /// Whether the op must add into `data()` (true) or overwrite it (false).
    pub fn accumulate(&self) -> bool {
        self.accumulate
    }
    /// GEMM-style beta: 1.0 to accumulate, 0.0 to overwrite.
    pub fn beta(&self) -> f32 {
        if self.accumulate {
            1.0
        } else {
            0.0
        }
    }
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// `data() (+)= src`.
    pub fn add(&mut self, src: &[f32]) {
        let acc = self.accumulate;
        let dst = self.data();
        assert_eq!(dst.len(), src.len(), "GradSlot::add length");
        if acc {
            dst.iter_mut().zip(src).for_each(|(d, s)| *d += s);
        } else {
            dst.copy_from_slice(src);
        }
    }
    /// `data() (+)= alpha·src`.
    pub fn add_scaled(&mut self, src: &[f32], alpha: f32) {
        let acc = self.accumulate;
        let dst = self.data();
        assert_eq!(dst.len(), src.len(), "GradSlot::add_scaled length");
        if acc {
            dst.iter_mut().zip(src).for_each(|(d, s)| *d += alpha * s);
        } else {
            dst.iter_mut().zip(src).for_each(|(d, s)| *d = alpha * s);
        }
    }
    /// Makes the slot an accumulator (zero-filling it if fresh); for ops that scatter.
    pub fn zero_if_fresh(&mut self) {
        if !self.accumulate {
            self.data().fill(0.0);
            self.accumulate = true;
        }
    }
}

/// Records ops for reverse-mode differentiation. See the crate docs for the API.
pub struct Tape {
    id: u32,
    grad_enabled: bool,
    nodes: Vec<Node>,
    params: HashMap<usize, Tensor>,
}

impl Default for Tape {
    fn default() -> Self {
        Tape::new()
    }
}

impl Tape {
    /// A recording tape.
    pub fn new() -> Tape {
        Tape {
            id: NEXT_TAPE_ID.fetch_add(1, Ordering::Relaxed),
            grad_enabled: true,
            nodes: Vec::new(),
            params: HashMap::new(),
        }
    }

    /// An inference tape: ops compute values and record nothing.
    pub fn no_grad() -> Tape {
        Tape { grad_enabled: false, ..Tape::new() }
    }

    pub fn grad_enabled(&self) -> bool {
        self.grad_enabled
    }

    /// Number of recorded nodes (leaves included).
    pub fn num_nodes(&self) -> usize {
        self.nodes.len()
    }

    fn check_owner(&self, t: &Tensor) {
        if let Some(n) = t.node {
            assert_eq!(n.tape, self.id, "tensor is tracked by a different tape");
        }
    }

    /// Whether an op over `inputs` would be recorded (grad enabled and some input tracked).
    /// Ops use it to skip saving data for backward when nothing will be recorded.
    pub fn wants_grad(&self, inputs: &[&Tensor]) -> bool {
        self.grad_enabled && inputs.iter().any(|t| t.node.is_some())
    }

    fn push_leaf(&mut self, t: &Tensor, param: Option<ParamId>) -> Tensor {
        let index = self.nodes.len();
        self.nodes.push(Node { len: t.numel(), inputs: Vec::new(), backward: None, param });
        let mut out = t.detach();
        out.node = Some(NodeRef { tape: self.id, index: index as u32, offset: 0 });
        out
    }

    /// A leaf that wants a gradient (read it from [`Gradients::get`]). In no-grad mode, `t`
    /// detached.
    pub fn watch(&mut self, t: &Tensor) -> Tensor {
        if !self.grad_enabled {
            return t.detach();
        }
        self.push_leaf(t, None)
    }

    /// The parameter as a leaf sharing its storage (one leaf per parameter per tape).
    pub fn param(&mut self, store: &ParamStore, id: ParamId) -> Tensor {
        let value = store.get(id).tensor();
        if !self.grad_enabled {
            return value;
        }
        if let Some(t) = self.params.get(&id.0) {
            return t.clone();
        }
        let t = self.push_leaf(&value, Some(id));
        self.params.insert(id.0, t.clone());
        t
    }

    /// Records an op: `output` was computed from `inputs`; `backward(grad_out, slots)` must write
    /// (or add, see [`GradSlot`]) each input's gradient into `slots[i]` when it is `Some`.
    /// Returns `output` linked to the new node, or `output` unlinked if nothing is recorded.
    pub fn custom<F>(&mut self, inputs: &[&Tensor], output: Tensor, backward: F) -> Tensor
    where
        F: FnOnce(&[f32], &mut [Option<GradSlot>]) + Send + 'static,
    {
        if !self.wants_grad(inputs) {
            return output.detach();
        }
        let links = inputs
            .iter()
            .map(|t| {
                self.check_owner(t);
                t.node.map(|n| InputRef {
                    index: n.index as usize,
                    offset: n.offset,
                    len: t.numel(),
                })
            })
            .collect();
        let index = self.nodes.len();
        self.nodes.push(Node {
            len: output.numel(),
            inputs: links,
            backward: Some(Box::new(backward)),
            param: None,
        });
        let mut out = output.detach();
        out.node = Some(NodeRef { tape: self.id, index: index as u32, offset: 0 });
        out
    }

    /// Backward from a one-element `loss` (seed 1.0).
    pub fn backward(self, loss: &Tensor) -> Result<Gradients> {
        if loss.numel() != 1 {
            return Err(Error::NotScalar(loss.shape().to_vec()));
        }
        self.backward_with_grad(loss, &[1.0])
    }

    /// Backward from `out` with seed gradient `grad` (same element count as `out`).
    pub fn backward_with_grad(self, out: &Tensor, grad: &[f32]) -> Result<Gradients> {
        self.backward_with_seed(out, Buffer::copy_of(grad))
    }

    /// [`Tape::backward_with_grad`] taking the seed by value (no copy when `out` is a whole
    /// node's output).
    pub fn backward_with_seed(mut self, out: &Tensor, grad: Buffer) -> Result<Gradients> {
        let root = match out.node {
            Some(n) if n.tape == self.id => n,
            _ => return Err(Error::NotTracked),
        };
        if grad.len() != out.numel() {
            return Err(Error::SeedLength { expected: out.numel(), got: grad.len() });
        }
        let mut grads: Vec<Option<Buffer>> = (0..self.nodes.len()).map(|_| None).collect();
        let root_len = self.nodes[root.index as usize].len;
        let seed = if root.offset == 0 && grad.len() == root_len {
            grad
        } else {
            let mut seed = Buffer::zeros(root_len);
            seed[root.offset..root.offset + grad.len()].copy_from_slice(&grad);
            seed
        };
        grads[root.index as usize] = Some(seed);

        for i in (0..=root.index as usize).rev() {
            let Some(grad_out) = grads[i].take() else { continue };
            let Some(backward) = self.nodes[i].backward.take() else {
                grads[i] = Some(grad_out); // a leaf: keep its gradient
                continue;
            };
            let inputs = std::mem::take(&mut self.nodes[i].inputs);
            // One slot per input; a node seen twice in the same op gets a temporary slot.
            let mut slots: Vec<Option<GradSlot>> = Vec::with_capacity(inputs.len());
            let mut duplicate = vec![false; inputs.len()];
            for (k, input) in inputs.iter().enumerate() {
                let Some(r) = *input else {
                    slots.push(None);
                    continue;
                };
                let seen = inputs[..k].iter().any(|p| p.is_some_and(|p| p.index == r.index));
                let slot = if seen {
                    duplicate[k] = true;
                    GradSlot { buf: Buffer::uninit(r.len), start: 0, len: r.len, accumulate: false }
                } else {
                    match grads[r.index].take() {
                        Some(buf) => {
                            GradSlot { buf, start: r.offset, len: r.len, accumulate: true }
                        }
                        None => {
                            let node_len = self.nodes[r.index].len;
                            if r.offset == 0 && r.len == node_len {
                                let buf = Buffer::uninit(node_len);
                                GradSlot { buf, start: 0, len: r.len, accumulate: false }
                            } else {
                                let buf = Buffer::zeros(node_len);
                                GradSlot { buf, start: r.offset, len: r.len, accumulate: true }
                            }
                        }
                    }
                };
                slots.push(Some(slot));
            }
            backward(&grad_out, &mut slots);
            drop(grad_out);
            // Return first-occurrence buffers, then fold the temporaries into them.
            for (k, slot) in slots.iter_mut().enumerate() {
                if !duplicate[k] {
                    if let (Some(r), Some(s)) = (inputs[k], slot.take()) {
                        grads[r.index] = Some(s.buf);
                    }
                }
            }
            for (k, slot) in slots.into_iter().enumerate() {
                if let (true, Some(r), Some(mut s)) = (duplicate[k], inputs[k], slot) {
                    let target = grads[r.index].as_mut().expect("first occurrence returned");
                    let dst = &mut target[r.offset..r.offset + r.len];
                    dst.iter_mut().zip(s.data().iter()).for_each(|(d, x)| *d += x);
                }
            }
        }

        let params =
            self.nodes.iter().enumerate().filter_map(|(i, n)| n.param.map(|p| (p, i))).collect();
        Ok(Gradients { tape: self.id, grads, params })
    }
}

/// Gradients of the leaves of one tape, after `backward`.
pub struct Gradients {
    tape: u32,
    grads: Vec<Option<Buffer>>,
    params: Vec<(ParamId, usize)>,
}

impl Gradients {
    /// The gradient of a leaf (or of a view of a leaf); `None` if it received none.
    pub fn get(&self, t: &Tensor) -> Option<&[f32]> {
        let n = t.node?;
        if n.tape != self.tape {
            return None;
        }
        let g = self.grads.get(n.index as usize)?.as_ref()?;
        Some(&g[n.offset..n.offset + t.numel()])
    }

    /// The gradient of a parameter brought in with [`Tape::param`].
    pub fn param(&self, id: ParamId) -> Option<&[f32]> {
        let &(_, index) = self.params.iter().find(|(p, _)| *p == id)?;
        self.grads[index].as_deref()
    }

    /// Moves out the parameter gradients, in tape order (for
    /// [`crate::ParamStore::accumulate_grads`], which is why `Gradients` is iterable).
    fn take_params(mut self) -> Vec<(ParamId, Buffer)> {
        let params = std::mem::take(&mut self.params);
        params.into_iter().filter_map(|(p, i)| self.grads[i].take().map(|g| (p, g))).collect()
    }
}

/// The parameter gradients, in tape order (leaf gradients are dropped).
impl IntoIterator for Gradients {
    type Item = (ParamId, Buffer);
    type IntoIter = std::vec::IntoIter<(ParamId, Buffer)>;

    fn into_iter(self) -> Self::IntoIter {
        self.take_params().into_iter()
    }
}
