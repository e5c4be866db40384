//! vffn-model: everything about the VersatileFFN model and its baselines that is not the
//! autograd engine itself.
//!
//! - [`config`]: [`Config`] (architecture, presets `tiny`/`small`), [`TrainConfig`] (the
//!   recipe), [`RunConfig`] (the TOML file), validation with key-naming errors,
//!   [`Fusion::lambda`], and [`Config::param_specs`]: every parameter tensor with its exact
//!   checkpoint name and shape.
//! - [`flops`]: analytic FLOPs per token (training and inference, by component) and realized
//!   inference FLOPs from routing decisions (the paper's `Base·N_mean + (MoE−Base)·P`).
//! - [`checkpoint`]: safetensors model and optimizer files and `state.json`, to and from
//!   bytes/strings, with loading across block kinds (dense → versatile, ...).
//! - [`corpus`]: the built-in synthetic corpus with per-byte difficulty labels.
//! - [`data`]: train/validation splits, random training windows, ordered validation windows.
//! - [`model`]: the transformer ([`Model`]): init, training forward, inference with per-token
//!   early exit, loading; [`decode`]: KV-cache decoding. Block internals live in `blocks`
//!   (attention, FFN, MoE, routing) and `versatile` (width path, depth path, fusion).
//!
//! - [`schedule`]: the temperature and learning-rate schedules; [`train_step`]: the one
//!   training step ([`Training`]); [`workloads`]: the benchmark workloads (criterion and
//!   `vffn bench`).
//!
//! The crate does no file or terminal I/O: the CLI reads and writes the bytes.

pub(crate) mod balance;
pub(crate) mod blocks;
pub mod checkpoint;
pub mod config;
pub mod corpus;
pub mod data;
pub mod decode;
pub mod dtype;
pub mod flops;
pub(crate) mod fused;
pub(crate) mod layer;
pub mod model;
pub mod schedule;
pub mod train_step;
pub(crate) mod versatile;
pub(crate) mod weights;
pub mod workloads;

pub use checkpoint::{
    load_model, load_model_unverified, load_optimizer, read_tensors, save_model, save_model_as,
    save_optimizer, write_tensors, write_tensors_as, write_tensors_mixed, AdamMoments,
    AdamMomentsRef, CheckpointError, LoadPlan, ModelCheckpoint, OptimizerState, TensorData,
    TensorFile, TensorRef, TrainState, MODEL_FILE, OPTIMIZER_FILE, STATE_FILE, TRAIN_STATE_FORMAT,
};
pub use config::{
    BlockKind, Config, ConfigError, DepthNoise, Fusion, ParamKind, ParamSpec, Paths, RunConfig,
    TrainConfig,
};
pub use corpus::{generate as generate_corpus, Corpus, Difficulty};
pub use data::{
    validation_batches, validation_windows, Batch, Batcher, DataError, Dataset, Split,
    BUILTIN_TRAIN_BYTES, BUILTIN_VAL_BYTES,
};
pub use decode::Decoder;
pub use dtype::WeightDtype;
pub use flops::{
    causal_mean_context, dense_ffn_flops, inference_flops, realized_inference_flops,
    realized_inference_flops_from_counts, training_flops, DepthRouting, FlopsBreakdown, FlopsError,
};
pub use fused::ComposedReason;
pub use layer::FfnPath;
pub use model::{InferOutput, Model, ModelError, Routing, StepGrads, TrainOutput, TRAIN_GROUPS};
pub use train_step::{adamw_config, StepReport, TrainError, Training, DATA_SALT, NOISE_SALT};
pub use versatile::DepthAgreement;
