//! vffn-autograd: tensors, a define-by-run tape, ops with their backward side by side, optimizers.

pub mod rng;

pub use rng::Rng;
