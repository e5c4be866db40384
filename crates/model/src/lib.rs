//! vffn-model
