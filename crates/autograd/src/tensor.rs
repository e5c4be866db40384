//! `Tensor`: an f32 row-major contiguous array with a shape, shared storage, and an optional link
//! to the tape node that produced it.

use std::fmt;
use std::sync::Arc;

use crate::pool::Buffer;
use crate::{Error, Result, Rng};

/// Maximum tensor rank.
pub const MAX_RANK: usize = 6;

/// A shape stored inline (no allocation per tensor).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    dims: [usize; MAX_RANK],
    rank: u8,
}

impl Shape {
    pub fn new(dims: &[usize]) -> Result<Shape> {
        if dims.len() > MAX_RANK {
            return Err(Error::Rank(dims.len()));
        }
        let mut d = [0; MAX_RANK];
        d[..dims.len()].copy_from_slice(dims);
        Ok(Shape { dims: d, rank: dims.len() as u8 })
    }
    pub fn dims(&self) -> &[usize] {
        &self.dims[..self.rank as usize]
    }
    pub fn numel(&self) -> usize {
        self.dims().iter().product()
    }
}

impl fmt::Debug for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.dims())
    }
}

/// Where a tracked tensor's gradient goes: node `index` of tape `tape`, elements
/// `offset..offset+numel` of that node's output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct NodeRef {
    pub tape: u32,
    pub index: u32,
    pub offset: usize,
}

/// An f32 tensor. Cloning shares storage.
#[derive(Clone)]
pub struct Tensor {
    shape: Shape,
    storage: Arc<Buffer>,
    offset: usize,
    pub(crate) node: Option<NodeRef>,
}

impl fmt::Debug for Tensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let data = self.data();
        let head = &data[..data.len().min(8)];
        write!(f, "Tensor{:?} tracked={} {:?}", self.shape, self.node.is_some(), head)?;
        if data.len() > 8 {
            write!(f, "..")?;
        }
        Ok(())
    }
}

impl Tensor {
    /// A tensor over `data` (row-major).
    pub fn from_vec(shape: &[usize], data: Vec<f32>) -> Result<Tensor> {
        Tensor::from_buffer(shape, Buffer::from_vec(data))
    }

    /// A tensor over a pooled buffer (row-major).
    pub fn from_buffer(shape: &[usize], data: Buffer) -> Result<Tensor> {
        Tensor::from_arc(shape, Arc::new(data))
    }

    /// A tensor over shared storage (used for parameters; no copy).
    pub fn from_arc(shape: &[usize], storage: Arc<Buffer>) -> Result<Tensor> {
        let shape = Shape::new(shape)?;
        if shape.numel() != storage.len() {
            return Err(Error::ShapeData {
                shape: shape.dims().to_vec(),
                expected: shape.numel(),
                got: storage.len(),
            });
        }
        Ok(Tensor { shape, storage, offset: 0, node: None })
    }

    /// Internal constructor for op outputs whose sizes are right by construction.
    pub(crate) fn from_parts(shape: &[usize], data: Buffer) -> Tensor {
        let shape = Shape::new(shape).expect("op output rank");
        debug_assert_eq!(shape.numel(), data.len());
        Tensor { shape, storage: Arc::new(data), offset: 0, node: None }
    }

    pub fn zeros(shape: &[usize]) -> Tensor {
        let n = shape.iter().product();
        Tensor::from_parts(shape, Buffer::zeros(n))
    }

    pub fn full(shape: &[usize], value: f32) -> Tensor {
        let n = shape.iter().product();
        Tensor::from_parts(shape, Buffer::full(n, value))
    }

    pub fn scalar(value: f32) -> Tensor {
        Tensor::from_parts(&[], Buffer::full(1, value))
    }

    /// Normal(0, std²) entries from `rng`.
    pub fn randn(shape: &[usize], std: f32, rng: &mut Rng) -> Tensor {
        let n = shape.iter().product();
        let mut b = Buffer::uninit(n);
        b.iter_mut().for_each(|x| *x = rng.normal() * std);
        Tensor::from_parts(shape, b)
    }

    pub fn shape(&self) -> &[usize] {
        self.shape.dims()
    }
    pub fn rank(&self) -> usize {
        self.shape.rank as usize
    }
    pub fn numel(&self) -> usize {
        self.shape.numel()
    }
    /// Size of the last dimension (1 for a scalar).
    pub fn cols(&self) -> usize {
        self.shape().last().copied().unwrap_or(1)
    }
    /// Product of all dimensions but the last (the rows of the 2-D view).
    pub fn rows(&self) -> usize {
        let s = self.shape();
        if s.is_empty() {
            1
        } else {
            s[..s.len() - 1].iter().product()
        }
    }
    pub fn data(&self) -> &[f32] {
        &self.storage[self.offset..self.offset + self.numel()]
    }
    pub fn to_vec(&self) -> Vec<f32> {
        self.data().to_vec()
    }
    /// The single element of a one-element tensor (panics otherwise).
    pub fn item(&self) -> f32 {
        assert_eq!(self.numel(), 1, "item() on shape {:?}", self.shape());
        self.data()[0]
    }
    /// Whether this tensor is linked to a tape node (gradients flow to it).
    pub fn is_tracked(&self) -> bool {
        self.node.is_some()
    }
    /// The same values, unlinked from the tape.
    pub fn detach(&self) -> Tensor {
        Tensor { node: None, ..self.clone() }
    }

    /// Same storage, new shape (same element count). Keeps the tape link: the gradient of the
    /// view is the gradient of the original, element for element.
    pub fn reshape(&self, shape: &[usize]) -> Result<Tensor> {
        let new = Shape::new(shape)?;
        if new.numel() != self.numel() {
            return Err(Error::Reshape { from: self.shape().to_vec(), to: shape.to_vec() });
        }
        Ok(Tensor { shape: new, ..self.clone() })
    }

    /// Rows `start..start+count` along dim 0, as a view (no copy). Keeps the tape link: its
    /// gradient lands in the matching range of the original's gradient.
    pub fn narrow_rows(&self, start: usize, count: usize) -> Result<Tensor> {
        let s = self.shape();
        let end = start + count;
        if s.is_empty() || end > s[0] {
            return Err(Error::Narrow { start, end, shape: s.to_vec() });
        }
        let row_len: usize = s[1..].iter().product();
        let mut dims = s.to_vec();
        dims[0] = count;
        let mut t = self.clone();
        t.shape = Shape::new(&dims)?;
        t.offset += start * row_len;
        if let Some(n) = &mut t.node {
            n.offset += start * row_len;
        }
        Ok(t)
    }

    /// The storage `Arc`, for sharing without a copy.
    pub fn storage(&self) -> (&Arc<Buffer>, usize) {
        (&self.storage, self.offset)
    }
}
