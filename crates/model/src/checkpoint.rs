//! Checkpoints as bytes and strings (the CLI does the file I/O).
//!
//! A training checkpoint directory `DIR/ckpt/` holds three files:
//! - [`MODEL_FILE`] `model.safetensors`: every parameter as little-endian f32 under its
//!   [`crate::ParamSpec`] name, with metadata `config` (the [`Config`] as JSON), `temperature`
//!   (the depth predictor's current Gumbel-softmax temperature) and any extra string keys.
//! - [`OPTIMIZER_FILE`] `optimizer.safetensors`: AdamW moments `<name>.adam_m` and
//!   `<name>.adam_v` for every parameter, metadata `step`.
//! - [`STATE_FILE`] `state.json`: [`TrainState`] (step, RNG states, data position, recipe).
//!
//! Parsing never panics on bad input: truncated or corrupted files, wrong dtypes, missing
//! tensors and wrong shapes are [`CheckpointError`]s that name the tensor or key.
//!
//! Every file [`write_tensors`] writes carries a content checksum of each tensor (and one of
//! the other metadata) in the metadata key [`CHECKSUMS_KEY`]; model and optimizer files must
//! have it and are verified on load, so one flipped bit anywhere is an error naming the tensor.
//! Loaded values are validated too: weights and moments finite, second moments ≥ 0.

use std::borrow::Cow;
use std::collections::BTreeMap;

use safetensors::tensor::{Dtype, SafeTensors, View};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::config::{Config, ConfigError, ParamSpec, TrainConfig};
use crate::dtype::{DtypeError, WeightDtype};

pub const MODEL_FILE: &str = "model.safetensors";
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
pub const STATE_FILE: &str = "state.json";

/// Metadata key holding the model [`Config`] as JSON.
pub const CONFIG_KEY: &str = "config";
/// Metadata key holding the Gumbel-softmax temperature as a decimal string.
pub const TEMPERATURE_KEY: &str = "temperature";
/// Metadata key holding the optimizer step as a decimal string.
pub const STEP_KEY: &str = "step";
/// Metadata key holding the content checksums: a JSON object from tensor name (and
/// [`METADATA_CHECKSUM`] for the other metadata) to 16 hex digits.
pub const CHECKSUMS_KEY: &str = "checksums";
/// The entry of [`CHECKSUMS_KEY`] covering the metadata other than the checksums themselves.
const METADATA_CHECKSUM: &str = "__metadata__";
const ADAM_M_SUFFIX: &str = ".adam_m";
const ADAM_V_SUFFIX: &str = ".adam_v";

/// Everything that can be wrong with a checkpoint; each names the tensor or key at fault.
#[derive(Debug, Error)]
pub enum CheckpointError {
    /// The safetensors container itself is unreadable (truncated, corrupted header, ...).
    // Not `#[from]`: that would make the inner error a `source` too, and an error chain
    // printed whole would say it twice.
    #[error("not a valid safetensors file (truncated or corrupted?): {0}")]
    Format(safetensors::SafeTensorError),
    #[error("tensor `{name}`: dtype {found}, expected F32, BF16 or F16")]
    WrongDtype { name: String, found: String },
    #[error("tensor `{name}`: missing from the checkpoint")]
    MissingTensor { name: String },
    #[error("tensor `{name}`: shape {found:?} in the checkpoint, the model expects {expected:?}")]
    ShapeMismatch { name: String, expected: Vec<usize>, found: Vec<usize> },
    #[error("tensor `{name}`: {len} values do not fill shape {shape:?}")]
    DataLength { name: String, shape: Vec<usize>, len: usize },
    #[error("tensor `{name}`: given twice")]
    DuplicateTensor { name: String },
    #[error("tensor `{name}`: in the checkpoint but not in the model")]
    UnexpectedTensor { name: String },
    #[error("metadata `{key}`: missing{}", missing_hint(key))]
    MissingMetadata { key: String },
    #[error("metadata `{key}`: {message}")]
    InvalidMetadata { key: String, message: String },
    #[error("metadata `config`: {0}")]
    Config(ConfigError),
    #[error("tensor `{name}`: content does not match its checksum (the file is corrupted)")]
    Checksum { name: String },
    #[error("tensor `{name}`: value {value} at index {index} is not finite")]
    NonFinite { name: String, index: usize, value: f32 },
    #[error("tensor `{name}`: value {value} at index {index} is negative (must be at least 0)")]
    Negative { name: String, index: usize, value: f32 },
    #[error("header: {0} (the file is corrupted)")]
    Header(String),
    #[error("{STATE_FILE}: {0}")]
    State(String),
}

/// What a missing metadata key says about the file: no checksums means an older vffn (or
/// another tool) wrote it, which is refused all the same.
fn missing_hint(key: &str) -> &'static str {
    if key == CHECKSUMS_KEY {
        " (the file was written by an older vffn or by another tool, without the content \
         checksums vffn requires; re-save it with checksums: `vffn export --checkpoint PATH \
         --dtype f32 --out NEW.safetensors --unverified`)"
    } else {
        ""
    }
}

impl From<DtypeError> for CheckpointError {
    fn from(err: DtypeError) -> Self {
        match err {
            DtypeError::WrongDtype { name, found } => CheckpointError::WrongDtype { name, found },
            DtypeError::NonFinite { name, index, value } => {
                CheckpointError::NonFinite { name, index, value }
            }
        }
    }
}

impl From<safetensors::SafeTensorError> for CheckpointError {
    fn from(err: safetensors::SafeTensorError) -> Self {
        CheckpointError::Format(err)
    }
}

impl From<ConfigError> for CheckpointError {
    fn from(err: ConfigError) -> Self {
        CheckpointError::Config(err)
    }
}

mod model_file;
mod optimizer_file;
mod tensors;
#[cfg(test)]
mod tests;
mod train_state;

pub use model_file::*;
pub use optimizer_file::*;
pub use tensors::*;
pub use train_state::*;
