//! Typed errors for misuse that can come from data (shapes read from files, names, saved state).

use thiserror::Error;

/// Errors returned by fallible constructors, backward, parameters and optimizer state.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum Error {
    #[error("shape {shape:?} needs {expected} elements, got {got}")]
    ShapeData { shape: Vec<usize>, expected: usize, got: usize },
    #[error("cannot reshape {from:?} to {to:?}")]
    Reshape { from: Vec<usize>, to: Vec<usize> },
    #[error("rows {start}..{end} out of range for shape {shape:?}")]
    Narrow { start: usize, end: usize, shape: Vec<usize> },
    #[error("tensor rank {0} exceeds the maximum of 6")]
    Rank(usize),
    #[error("backward needs a tracked tensor recorded on this tape")]
    NotTracked,
    #[error("backward from a loss needs one element, got shape {0:?}")]
    NotScalar(Vec<usize>),
    #[error("seed gradient has {got} elements, output has {expected}")]
    SeedLength { expected: usize, got: usize },
    #[error("parameter name {0:?} already exists")]
    DuplicateParam(String),
    #[error("parameter {name:?}: {what}")]
    ParamState { name: String, what: String },
}
