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
use crate::dtype::WeightDtype;

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

/// A borrowed tensor to write: name, row-major shape and values.
#[derive(Clone, Copy, Debug)]
pub struct TensorRef<'a> {
    pub name: &'a str,
    pub shape: &'a [usize],
    pub data: &'a [f32],
}

/// An owned tensor read back.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorData {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// Tensors by name plus the string metadata of one safetensors file.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct TensorFile {
    pub tensors: BTreeMap<String, TensorData>,
    pub metadata: BTreeMap<String, String>,
}

/// A tensor as safetensors sees it: little-endian bytes of its dtype.
struct EncodedView<'a> {
    dtype: WeightDtype,
    shape: &'a [usize],
    bytes: Vec<u8>,
}

impl View for EncodedView<'_> {
    fn dtype(&self) -> Dtype {
        self.dtype.safetensors()
    }
    fn shape(&self) -> &[usize] {
        self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.bytes)
    }
    fn data_len(&self) -> usize {
        self.bytes.len()
    }
}

/// Serializes f32 tensors and string metadata to safetensors bytes.
pub fn write_tensors(
    tensors: &[TensorRef<'_>],
    metadata: &BTreeMap<String, String>,
) -> Result<Vec<u8>, CheckpointError> {
    write_tensors_as(tensors, metadata, WeightDtype::F32)
}

/// [`write_tensors`] storing every tensor as `dtype` (see [`crate::dtype`]).
pub fn write_tensors_as(
    tensors: &[TensorRef<'_>],
    metadata: &BTreeMap<String, String>,
    dtype: WeightDtype,
) -> Result<Vec<u8>, CheckpointError> {
    write_tensors_mixed(tensors, &vec![dtype; tensors.len()], metadata)
}

/// [`write_tensors`] storing tensor i as `dtypes[i]` (a file of mixed dtypes, checksummed).
pub fn write_tensors_mixed(
    tensors: &[TensorRef<'_>],
    dtypes: &[WeightDtype],
    metadata: &BTreeMap<String, String>,
) -> Result<Vec<u8>, CheckpointError> {
    assert_eq!(tensors.len(), dtypes.len(), "one dtype per tensor");
    let mut seen = std::collections::BTreeSet::new();
    let mut views = Vec::with_capacity(tensors.len());
    for (tensor, &dtype) in tensors.iter().zip(dtypes) {
        if !seen.insert(tensor.name) {
            return Err(CheckpointError::DuplicateTensor { name: tensor.name.to_string() });
        }
        let numel = tensor.shape.iter().try_fold(1usize, |acc, &n| acc.checked_mul(n));
        if numel != Some(tensor.data.len()) {
            return Err(CheckpointError::DataLength {
                name: tensor.name.to_string(),
                shape: tensor.shape.to_vec(),
                len: tensor.data.len(),
            });
        }
        let bytes = crate::dtype::encode(tensor.name, tensor.data, dtype)?;
        views.push((tensor.name, EncodedView { dtype, shape: tensor.shape, bytes }));
    }
    if metadata.contains_key(CHECKSUMS_KEY) {
        return Err(CheckpointError::InvalidMetadata {
            key: CHECKSUMS_KEY.into(),
            message: "reserved key given as metadata".into(),
        });
    }
    // The checksums cover the bytes as stored (in the stored dtype).
    let mut checksums =
        BTreeMap::from([(METADATA_CHECKSUM.to_string(), metadata_checksum(metadata))]);
    for (name, view) in &views {
        let sum = tensor_checksum(view.dtype.safetensors(), view.shape, &view.bytes);
        checksums.insert(name.to_string(), sum);
    }
    let mut info: std::collections::HashMap<String, String> =
        metadata.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    info.insert(CHECKSUMS_KEY.into(), serde_json::to_string(&checksums).expect("map of strings"));
    let mut bytes = safetensors::serialize(views, Some(info))?;
    canonicalize_header(&mut bytes);
    Ok(bytes)
}

/// A 64-bit content hash. Each 8-byte word goes through a step that is a bijection of the state
/// for a fixed word and injective in the word for a fixed state, so a change confined to one
/// word (any single flipped bit) always changes the result; the length is mixed in last.
fn hash_bytes(state: u64, bytes: &[u8]) -> u64 {
    const ODD: u64 = 0x9E37_79B9_7F4A_7C15;
    let step = |state: u64, word: u64| (state ^ word).wrapping_mul(ODD).rotate_left(29);
    let mut words = bytes.chunks_exact(8);
    let mut state = (&mut words)
        .fold(state, |s, w| step(s, u64::from_le_bytes(w.try_into().expect("chunks of 8"))));
    let mut tail = [0u8; 8];
    tail[..words.remainder().len()].copy_from_slice(words.remainder());
    state = step(state, u64::from_le_bytes(tail));
    step(state, bytes.len() as u64)
}

/// Checksum of one tensor: dtype, shape and raw bytes, as 16 hex digits.
fn tensor_checksum(dtype: Dtype, shape: &[usize], bytes: &[u8]) -> String {
    let mut state = hash_bytes(0x7666_666E, format!("{dtype:?}").as_bytes());
    for &dim in shape {
        state = hash_bytes(state, &(dim as u64).to_le_bytes());
    }
    format!("{:016x}", hash_bytes(state, bytes))
}

/// Checksum of the metadata (keys and values in key order), as 16 hex digits.
fn metadata_checksum(metadata: &BTreeMap<String, String>) -> String {
    let state = metadata.iter().fold(0x6D65_7461, |state, (key, value)| {
        hash_bytes(hash_bytes(state, key.as_bytes()), value.as_bytes())
    });
    format!("{state:016x}")
}

/// Checks a file's header is exactly as [`write_tensors`] wrote it (canonical JSON padded with
/// spaces) and every tensor and the other `metadata` match their entry in `checksums_json`.
fn verify_checksums(
    bytes: &[u8],
    file: &SafeTensors<'_>,
    metadata: &BTreeMap<String, String>,
    checksums_json: &str,
) -> Result<(), CheckpointError> {
    let header_error = |what: &str| CheckpointError::Header(what.to_string());
    let checksums: BTreeMap<String, String> = serde_json::from_str(checksums_json)
        .map_err(|_| header_error("metadata `checksums` is not a JSON object of strings"))?;
    let region = bytes
        .get(..8)
        .and_then(|b| usize::try_from(u64::from_le_bytes(b.try_into().ok()?)).ok())
        .and_then(|len| bytes.get(8..8usize.checked_add(len)?))
        .ok_or_else(|| header_error("unreadable length"))?;
    let written = &region[..region.iter().rposition(|&b| b != b' ').map_or(0, |i| i + 1)];
    if canonical_header(region).as_deref().map(str::as_bytes) != Some(written) {
        return Err(header_error("not in the form vffn writes"));
    }
    if checksums.get(METADATA_CHECKSUM) != Some(&metadata_checksum(metadata)) {
        return Err(header_error("metadata does not match its checksum"));
    }
    if checksums.len() != file.len() + 1 {
        return Err(header_error("the checksums list other tensors than the file holds"));
    }
    for (name, view) in file.iter() {
        if checksums.get(name) != Some(&tensor_checksum(view.dtype(), view.shape(), view.data())) {
            return Err(CheckpointError::Checksum { name: name.to_string() });
        }
    }
    Ok(())
}

/// The first non-finite value of a tensor, as an error naming it.
fn check_finite(name: &str, data: &[f32]) -> Result<(), CheckpointError> {
    match data.iter().position(|x| !x.is_finite()) {
        Some(index) => {
            Err(CheckpointError::NonFinite { name: name.to_string(), index, value: data[index] })
        }
        None => Ok(()),
    }
}

/// Rewrites the JSON header with its keys sorted: safetensors keeps the metadata in a HashMap,
/// so without this the same checkpoint would serialize to different bytes from run to run.
/// The sorted header has the same length (same entries, reordered); if it somehow does not
/// fit, the original (valid, merely unordered) header is kept.
fn canonicalize_header(bytes: &mut [u8]) {
    let Some(len) = bytes.get(..8).map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
    else {
        return;
    };
    let Some(region) = usize::try_from(len).ok().and_then(|n| bytes.get_mut(8..8 + n)) else {
        return;
    };
    let Some(text) = canonical_header(region) else { return };
    if text.len() <= region.len() {
        region[..text.len()].copy_from_slice(text.as_bytes());
        region[text.len()..].fill(b' ');
    }
}

/// The header JSON with its keys sorted and `__metadata__` first, or None if it does not parse.
fn canonical_header(region: &[u8]) -> Option<String> {
    type Header = BTreeMap<String, serde_json::Value>;
    let mut header = serde_json::from_slice::<Header>(region).ok()?;
    let metadata = header
        .remove("__metadata__")
        .and_then(|m| serde_json::from_value::<BTreeMap<String, String>>(m).ok());
    let tensors = serde_json::to_string(&header).ok()?;
    let tensors = &tensors[1..tensors.len() - 1];
    Some(match metadata {
        None => format!("{{{tensors}}}"),
        Some(metadata) => {
            let metadata = serde_json::to_string(&metadata).ok()?;
            let separator = if tensors.is_empty() { "" } else { "," };
            format!("{{\"__metadata__\":{metadata}{separator}{tensors}}}")
        }
    })
}

/// Parses safetensors bytes holding f32, bf16 or f16 tensors (any mix), widened to f32;
/// checksums are verified when present.
pub fn read_tensors(bytes: &[u8]) -> Result<TensorFile, CheckpointError> {
    read_tensors_checked(bytes, false)
}

/// [`read_tensors`], with the checksums required when `require_checksums`.
fn read_tensors_checked(
    bytes: &[u8],
    require_checksums: bool,
) -> Result<TensorFile, CheckpointError> {
    let file = SafeTensors::deserialize(bytes)?;
    let (_, header) = SafeTensors::read_metadata(bytes)?;
    let mut metadata: BTreeMap<String, String> = header
        .metadata()
        .as_ref()
        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default();
    match metadata.remove(CHECKSUMS_KEY) {
        Some(checksums) => verify_checksums(bytes, &file, &metadata, &checksums)?,
        None if require_checksums => {
            return Err(CheckpointError::MissingMetadata { key: CHECKSUMS_KEY.into() })
        }
        None => {}
    }
    let mut tensors = BTreeMap::new();
    for (name, view) in file.iter() {
        let data = crate::dtype::decode(name, view.dtype(), view.data())?;
        tensors.insert(name.to_string(), TensorData { shape: view.shape().to_vec(), data });
    }
    Ok(TensorFile { tensors, metadata })
}

/// A model checkpoint read back: its config, temperature, extra metadata and tensors.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelCheckpoint {
    pub config: Config,
    pub temperature: f32,
    /// Metadata keys other than `config` and `temperature`.
    pub extra: BTreeMap<String, String>,
    pub tensors: BTreeMap<String, TensorData>,
}

/// Which parameters a (possibly other-kind) checkpoint provides.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct LoadPlan {
    /// Parameters present in the checkpoint with the right shape: copy them.
    pub copied: Vec<String>,
    /// Block-specific parameters the checkpoint lacks (routers, experts): keep the fresh init.
    pub initialized: Vec<String>,
    /// Checkpoint tensors this model has no use for (e.g. routers when loading as dense).
    pub ignored: Vec<String>,
}

/// Serializes a model checkpoint; `extra` keys may not be `config` or `temperature`.
pub fn save_model(
    config: &Config,
    temperature: f32,
    extra: &BTreeMap<String, String>,
    tensors: &[TensorRef<'_>],
) -> Result<Vec<u8>, CheckpointError> {
    save_model_as(config, temperature, extra, tensors, WeightDtype::F32)
}

/// [`save_model`] storing every tensor as `dtype` (`vffn export`).
pub fn save_model_as(
    config: &Config,
    temperature: f32,
    extra: &BTreeMap<String, String>,
    tensors: &[TensorRef<'_>],
    dtype: WeightDtype,
) -> Result<Vec<u8>, CheckpointError> {
    for key in [CONFIG_KEY, TEMPERATURE_KEY] {
        if extra.contains_key(key) {
            return Err(CheckpointError::InvalidMetadata {
                key: key.to_string(),
                message: "reserved key given as extra metadata".into(),
            });
        }
    }
    let mut metadata = extra.clone();
    metadata.insert(CONFIG_KEY.into(), config.to_json());
    // `{:?}` of an f32 is the shortest string that parses back to the same bits.
    metadata.insert(TEMPERATURE_KEY.into(), format!("{temperature:?}"));
    write_tensors_as(tensors, &metadata, dtype)
}

/// Parses a model checkpoint: container, dtypes, `config` and `temperature` metadata.
pub fn load_model(bytes: &[u8]) -> Result<ModelCheckpoint, CheckpointError> {
    load_model_checked(bytes, true)
}

/// [`load_model`] that also accepts a file without content checksums (written before vffn
/// had them, or by another tool): checksums present are still verified and every weight must
/// still be finite. For `vffn export --unverified`, which re-saves such a file with checksums.
pub fn load_model_unverified(bytes: &[u8]) -> Result<ModelCheckpoint, CheckpointError> {
    load_model_checked(bytes, false)
}

fn load_model_checked(
    bytes: &[u8],
    require_checksums: bool,
) -> Result<ModelCheckpoint, CheckpointError> {
    let TensorFile { tensors, mut metadata } = read_tensors_checked(bytes, require_checksums)?;
    for (name, tensor) in &tensors {
        check_finite(name, &tensor.data)?;
    }
    let config_json = metadata
        .remove(CONFIG_KEY)
        .ok_or_else(|| CheckpointError::MissingMetadata { key: CONFIG_KEY.into() })?;
    let config = Config::from_json(&config_json)?;
    let temperature_text = metadata
        .remove(TEMPERATURE_KEY)
        .ok_or_else(|| CheckpointError::MissingMetadata { key: TEMPERATURE_KEY.into() })?;
    let temperature =
        temperature_text.parse::<f32>().ok().filter(|t| t.is_finite() && *t > 0.0).ok_or_else(
            || CheckpointError::InvalidMetadata {
                key: TEMPERATURE_KEY.into(),
                message: format!("`{temperature_text}` is not a finite positive number"),
            },
        )?;
    Ok(ModelCheckpoint { config, temperature, extra: metadata, tensors })
}

/// Checks one tensor's shape against its spec.
fn check_shape(spec: &ParamSpec, found: &TensorData) -> Result<(), CheckpointError> {
    if found.shape != spec.shape {
        return Err(CheckpointError::ShapeMismatch {
            name: spec.name.clone(),
            expected: spec.shape.clone(),
            found: found.shape.clone(),
        });
    }
    Ok(())
}

/// Parameters only some block kinds have (may be missing when loading another kind).
fn is_block_specific(name: &str) -> bool {
    name.contains(".expert_gate.")
        || name.contains(".depth_predictor.")
        || name.contains(".experts.")
}

impl ModelCheckpoint {
    /// Resuming the same model: every spec present with its shape, nothing else in the file.
    pub fn check_exact(&self, specs: &[ParamSpec]) -> Result<(), CheckpointError> {
        let plan = self.plan_load(specs)?;
        if let Some(name) = plan.initialized.into_iter().next() {
            return Err(CheckpointError::MissingTensor { name });
        }
        if let Some(name) = plan.ignored.into_iter().next() {
            return Err(CheckpointError::UnexpectedTensor { name });
        }
        Ok(())
    }

    /// Loading a checkpoint of possibly another block kind (e.g. dense → versatile): tensors
    /// shared by every kind must all be present with the model's shapes (another d_model or
    /// layer count is an error naming the tensor); block-specific ones missing from the file
    /// stay freshly initialized; file tensors the model lacks are ignored.
    pub fn plan_load(&self, specs: &[ParamSpec]) -> Result<LoadPlan, CheckpointError> {
        let mut plan = LoadPlan::default();
        for spec in specs {
            match self.tensors.get(&spec.name) {
                Some(found) => {
                    check_shape(spec, found)?;
                    plan.copied.push(spec.name.clone());
                }
                None if is_block_specific(&spec.name) => plan.initialized.push(spec.name.clone()),
                None => return Err(CheckpointError::MissingTensor { name: spec.name.clone() }),
            }
        }
        let wanted: std::collections::BTreeSet<&str> =
            specs.iter().map(|s| s.name.as_str()).collect();
        plan.ignored =
            self.tensors.keys().filter(|name| !wanted.contains(name.as_str())).cloned().collect();
        Ok(plan)
    }
}

/// One parameter's AdamW moments to write.
#[derive(Clone, Copy, Debug)]
pub struct AdamMomentsRef<'a> {
    pub name: &'a str,
    pub shape: &'a [usize],
    pub m: &'a [f32],
    pub v: &'a [f32],
}

/// One parameter's AdamW moments read back.
#[derive(Clone, Debug, PartialEq)]
pub struct AdamMoments {
    pub shape: Vec<usize>,
    pub m: Vec<f32>,
    pub v: Vec<f32>,
}

/// The optimizer file read back: step and moments by parameter name.
#[derive(Clone, Debug, PartialEq)]
pub struct OptimizerState {
    pub step: u64,
    pub moments: BTreeMap<String, AdamMoments>,
}

/// Serializes AdamW state as `<name>.adam_m` / `<name>.adam_v` tensors with metadata `step`.
pub fn save_optimizer(
    step: u64,
    moments: &[AdamMomentsRef<'_>],
) -> Result<Vec<u8>, CheckpointError> {
    let names: Vec<(String, String)> = moments
        .iter()
        .map(|p| (format!("{}{ADAM_M_SUFFIX}", p.name), format!("{}{ADAM_V_SUFFIX}", p.name)))
        .collect();
    let mut tensors = Vec::with_capacity(2 * moments.len());
    for (p, (m_name, v_name)) in moments.iter().zip(&names) {
        tensors.push(TensorRef { name: m_name, shape: p.shape, data: p.m });
        tensors.push(TensorRef { name: v_name, shape: p.shape, data: p.v });
    }
    let metadata = BTreeMap::from([(STEP_KEY.to_string(), step.to_string())]);
    write_tensors(&tensors, &metadata)
}

/// Parses an optimizer file; every parameter must have both moments with one shape.
pub fn load_optimizer(bytes: &[u8]) -> Result<OptimizerState, CheckpointError> {
    let TensorFile { mut tensors, metadata } = read_tensors_checked(bytes, true)?;
    for (name, tensor) in &tensors {
        check_finite(name, &tensor.data)?;
        if name.ends_with(ADAM_V_SUFFIX) {
            if let Some(index) = tensor.data.iter().position(|&v| v < 0.0) {
                let value = tensor.data[index];
                return Err(CheckpointError::Negative { name: name.clone(), index, value });
            }
        }
    }
    let step_text = metadata
        .get(STEP_KEY)
        .ok_or_else(|| CheckpointError::MissingMetadata { key: STEP_KEY.into() })?;
    let step = step_text.parse::<u64>().map_err(|e| CheckpointError::InvalidMetadata {
        key: STEP_KEY.into(),
        message: format!("`{step_text}`: {e}"),
    })?;
    let names: Vec<String> = tensors.keys().cloned().collect();
    let mut moments = BTreeMap::new();
    for name in names {
        let Some(param) = name.strip_suffix(ADAM_M_SUFFIX) else {
            if name.ends_with(ADAM_V_SUFFIX) {
                let param = &name[..name.len() - ADAM_V_SUFFIX.len()];
                if !tensors.contains_key(&format!("{param}{ADAM_M_SUFFIX}"))
                    && !moments.contains_key(param)
                {
                    return Err(CheckpointError::MissingTensor {
                        name: format!("{param}{ADAM_M_SUFFIX}"),
                    });
                }
                continue;
            }
            return Err(CheckpointError::UnexpectedTensor { name });
        };
        let v_name = format!("{param}{ADAM_V_SUFFIX}");
        let m = tensors.remove(&name).expect("name listed from the map");
        let v = tensors.remove(&v_name).ok_or(CheckpointError::MissingTensor { name: v_name })?;
        if v.shape != m.shape {
            return Err(CheckpointError::ShapeMismatch {
                name: format!("{param}{ADAM_V_SUFFIX}"),
                expected: m.shape,
                found: v.shape,
            });
        }
        moments.insert(param.to_string(), AdamMoments { shape: m.shape, m: m.data, v: v.data });
    }
    Ok(OptimizerState { step, moments })
}

impl OptimizerState {
    /// Resuming: moments for exactly the model's parameters, with their shapes.
    pub fn check(&self, specs: &[ParamSpec]) -> Result<(), CheckpointError> {
        for spec in specs {
            let found = self.moments.get(&spec.name).ok_or_else(|| {
                CheckpointError::MissingTensor { name: format!("{}{ADAM_M_SUFFIX}", spec.name) }
            })?;
            if found.shape != spec.shape {
                return Err(CheckpointError::ShapeMismatch {
                    name: format!("{}{ADAM_M_SUFFIX}", spec.name),
                    expected: spec.shape.clone(),
                    found: found.shape.clone(),
                });
            }
        }
        if self.moments.len() != specs.len() {
            let wanted: std::collections::BTreeSet<&str> =
                specs.iter().map(|s| s.name.as_str()).collect();
            if let Some(extra) = self.moments.keys().find(|k| !wanted.contains(k.as_str())) {
                return Err(CheckpointError::UnexpectedTensor {
                    name: format!("{extra}{ADAM_M_SUFFIX}"),
                });
            }
        }
        Ok(())
    }
}

/// `state.json`: where a training run stands, enough to resume it bit-exactly.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainState {
    /// Format version of this file (currently 1).
    pub format: u32,
    /// Optimizer steps completed.
    pub step: u64,
    /// State of the model's RNG (Gumbel noise), as decimal strings (JSON numbers lose u64s).
    #[serde(with = "u64x4_as_strings")]
    pub model_rng: [u64; 4],
    /// State of the batcher's RNG: the data position.
    #[serde(with = "u64x4_as_strings")]
    pub data_rng: [u64; 4],
    /// Training tokens consumed so far.
    pub tokens_seen: u64,
    /// What the run trains on (`builtin` or the data file's path), to refuse a mismatched resume.
    pub data_source: String,
    pub train: TrainConfig,
}

/// The current [`TrainState::format`].
pub const TRAIN_STATE_FORMAT: u32 = 1;

impl TrainState {
    /// Pretty JSON for `state.json`.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("TrainState serializes to JSON")
    }

    /// Parses and validates `state.json`.
    pub fn from_json(text: &str) -> Result<Self, CheckpointError> {
        let state: TrainState =
            serde_json::from_str(text).map_err(|e| CheckpointError::State(e.to_string()))?;
        if state.format != TRAIN_STATE_FORMAT {
            return Err(CheckpointError::State(format!(
                "format {} is not supported (expected {TRAIN_STATE_FORMAT})",
                state.format
            )));
        }
        state.train.validate().map_err(|e| CheckpointError::State(e.to_string()))?;
        for (key, words) in [("model_rng", state.model_rng), ("data_rng", state.data_rng)] {
            if words == [0; 4] {
                return Err(CheckpointError::State(format!(
                    "`{key}` is all zeros, which is not a valid generator state"
                )));
            }
        }
        Ok(state)
    }
}

/// `[u64; 4]` as four decimal strings.
mod u64x4_as_strings {
    use serde::de::Error;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(words: &[u64; 4], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(words.iter().map(|w| w.to_string()))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u64; 4], D::Error> {
        let texts = Vec::<String>::deserialize(d)?;
        if texts.len() != 4 {
            return Err(D::Error::custom(format!("expected 4 words, found {}", texts.len())));
        }
        let mut words = [0u64; 4];
        for (word, text) in words.iter_mut().zip(&texts) {
            *word = text.parse().map_err(|e| D::Error::custom(format!("`{text}`: {e}")))?;
        }
        Ok(words)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::BlockKind;
    use proptest::prelude::*;
    use vffn_autograd::Rng;

    /// Random tensors for every spec, with awkward values included (bit-exactness).
    fn random_params(specs: &[ParamSpec], seed: u64) -> Vec<(String, Vec<usize>, Vec<f32>)> {
        let mut rng = Rng::new(seed);
        specs
            .iter()
            .map(|s| {
                let mut data: Vec<f32> = (0..s.numel()).map(|_| rng.normal()).collect();
                if data.len() >= 4 {
                    data[..4].copy_from_slice(&[-0.0, f32::MIN_POSITIVE / 2.0, f32::MAX, 1e-45]);
                }
                (s.name.clone(), s.shape.clone(), data)
            })
            .collect()
    }

    fn refs(params: &[(String, Vec<usize>, Vec<f32>)]) -> Vec<TensorRef<'_>> {
        params.iter().map(|(n, s, d)| TensorRef { name: n, shape: s, data: d }).collect()
    }

    fn small_config(block: BlockKind) -> Config {
        Config { block, d_model: 16, n_heads: 2, hidden: 32, n_layers: 2, ..Config::tiny() }
    }

    #[test]
    fn model_round_trip_is_bit_exact() {
        let config = small_config(BlockKind::Versatile);
        let specs = config.param_specs();
        let params = random_params(&specs, 1);
        let extra = BTreeMap::from([("note".to_string(), "hello".to_string())]);
        let bytes = save_model(&config, 0.123_456_79, &extra, &refs(&params)).unwrap();
        let loaded = load_model(&bytes).unwrap();
        assert_eq!(loaded.config, config);
        assert_eq!(loaded.temperature.to_bits(), 0.123_456_79f32.to_bits());
        assert_eq!(loaded.extra, extra);
        loaded.check_exact(&specs).unwrap();
        for (name, shape, data) in &params {
            let t = &loaded.tensors[name];
            assert_eq!(&t.shape, shape);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&t.data), bits(data), "{name}");
        }
        // Serializing again gives the same bytes (stable order).
        assert_eq!(save_model(&config, 0.123_456_79, &extra, &refs(&params)).unwrap(), bytes);
    }

    #[test]
    fn serialization_is_deterministic() {
        let metadata: BTreeMap<String, String> =
            (0..20).map(|i| (format!("key{i}"), format!("value \"{i}\""))).collect();
        let one = [TensorRef { name: "w", shape: &[2], data: &[1.0, -1.0] }];
        for tensors in [&one[..], &[]] {
            let first = write_tensors(tensors, &metadata).unwrap();
            for _ in 0..5 {
                assert_eq!(write_tensors(tensors, &metadata).unwrap(), first);
            }
            let back = read_tensors(&first).unwrap();
            assert_eq!(back.metadata, metadata);
            assert_eq!(back.tensors.len(), tensors.len());
        }
    }

    #[test]
    fn errors_name_the_tensor() {
        let config = small_config(BlockKind::Dense);
        let specs = config.param_specs();
        let mut params = random_params(&specs, 2);
        let dropped = params.remove(3);
        let bytes = save_model(&config, 1.0, &BTreeMap::new(), &refs(&params)).unwrap();
        let err = load_model(&bytes).unwrap().check_exact(&specs).unwrap_err();
        assert!(
            matches!(&err, CheckpointError::MissingTensor { name } if *name == dropped.0),
            "{err}"
        );
        // Wrong shape (same element count, transposed).
        let mut params = random_params(&specs, 2);
        params[2].1.reverse();
        let bytes = save_model(&config, 1.0, &BTreeMap::new(), &refs(&params)).unwrap();
        let err = load_model(&bytes).unwrap().check_exact(&specs).unwrap_err();
        assert!(err.to_string().contains(&params[2].0), "{err}");
        // Data that does not fill the shape is refused at write time.
        let bad = [TensorRef { name: "x", shape: &[2, 3], data: &[0.0; 5] }];
        assert!(matches!(
            write_tensors(&bad, &BTreeMap::new()),
            Err(CheckpointError::DataLength { .. })
        ));
        let twice = [TensorRef { name: "x", shape: &[1], data: &[0.0] }; 2];
        assert!(matches!(
            write_tensors(&twice, &BTreeMap::new()),
            Err(CheckpointError::DuplicateTensor { .. })
        ));
    }

    /// A tensor of another dtype, written with safetensors directly.
    struct RawView(Dtype, Vec<usize>, Vec<u8>);
    impl View for RawView {
        fn dtype(&self) -> Dtype {
            self.0
        }
        fn shape(&self) -> &[usize] {
            &self.1
        }
        fn data(&self) -> Cow<'_, [u8]> {
            Cow::Borrowed(&self.2)
        }
        fn data_len(&self) -> usize {
            self.2.len()
        }
    }

    #[test]
    fn wrong_dtype_and_bad_metadata() {
        let tensors = vec![("transformer.wte.weight", RawView(Dtype::F64, vec![2], vec![0; 16]))];
        let bytes = safetensors::serialize(tensors, None).unwrap();
        let err = read_tensors(&bytes).unwrap_err();
        assert!(matches!(&err, CheckpointError::WrongDtype { name, .. }
            if name == "transformer.wte.weight"));
        let one = [TensorRef { name: "a", shape: &[1], data: &[1.0] }];
        let no_config = write_tensors(&one, &BTreeMap::new()).unwrap();
        assert!(matches!(load_model(&no_config), Err(CheckpointError::MissingMetadata { .. })));
        let mut metadata = BTreeMap::from([(CONFIG_KEY.to_string(), "{\"d_model\": 7}".into())]);
        metadata.insert(TEMPERATURE_KEY.into(), "1.0".into());
        let bad_config = write_tensors(&one, &metadata).unwrap();
        let err = load_model(&bad_config).unwrap_err();
        assert!(matches!(err, CheckpointError::Config(_)), "{err}");
        metadata.insert(CONFIG_KEY.into(), Config::tiny().to_json());
        metadata.insert(TEMPERATURE_KEY.into(), "hot".into());
        let bad_temperature = write_tensors(&one, &metadata).unwrap();
        assert!(matches!(
            load_model(&bad_temperature),
            Err(CheckpointError::InvalidMetadata { key, .. }) if key == TEMPERATURE_KEY
        ));
        let reserved = BTreeMap::from([(CONFIG_KEY.to_string(), String::new())]);
        assert!(save_model(&Config::tiny(), 1.0, &reserved, &one).is_err());
    }

    #[test]
    fn a_file_without_checksums_is_refused_as_written_by_an_older_vffn_or_another_tool() {
        let config = small_config(BlockKind::Dense);
        let bytes = [1.0f32, 2.0].iter().flat_map(|x| x.to_le_bytes()).collect();
        let tensors = vec![("w", EncodedView { dtype: WeightDtype::F32, shape: &[2], bytes })];
        let metadata = std::collections::HashMap::from([
            (CONFIG_KEY.to_string(), config.to_json()),
            (TEMPERATURE_KEY.to_string(), "1.0".to_string()),
        ]);
        let bytes = safetensors::serialize(tensors, Some(metadata)).unwrap();
        assert!(read_tensors(&bytes).is_ok(), "plain reads do not require checksums");
        let err = load_model(&bytes).unwrap_err();
        assert!(matches!(&err, CheckpointError::MissingMetadata { key } if key == CHECKSUMS_KEY));
        // Re-saving: the unverified reader takes it, and what it writes carries checksums.
        let old = load_model_unverified(&bytes).unwrap();
        let refs: Vec<TensorRef<'_>> = old
            .tensors
            .iter()
            .map(|(name, t)| TensorRef { name, shape: &t.shape, data: &t.data })
            .collect();
        let resaved = save_model(&old.config, old.temperature, &old.extra, &refs).unwrap();
        assert!(load_model(&resaved).is_ok());
        let text = err.to_string();
        assert!(text.contains("older vffn") && text.contains("another tool"), "{text}");
        let other = CheckpointError::MissingMetadata { key: STEP_KEY.into() }.to_string();
        assert_eq!(other, "metadata `step`: missing");
    }

    #[test]
    fn every_truncation_is_refused() {
        let config = small_config(BlockKind::Dense);
        let specs = &config.param_specs()[..3];
        let params = random_params(specs, 3);
        let bytes = save_model(&config, 2.5, &BTreeMap::new(), &refs(&params)).unwrap();
        assert!(load_model(&bytes).is_ok());
        for len in 0..bytes.len() {
            let err = load_model(&bytes[..len]).unwrap_err();
            assert!(matches!(err, CheckpointError::Format(_)), "prefix {len}: {err}");
        }
        // One byte too many is refused too.
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(matches!(load_model(&longer), Err(CheckpointError::Format(_))));
    }

    #[test]
    fn corrupted_header_is_refused() {
        let one = [TensorRef { name: "w", shape: &[2, 2], data: &[1.0, 2.0, 3.0, 4.0] }];
        let bytes = write_tensors(&one, &BTreeMap::new()).unwrap();
        // Break the JSON: its first byte `{`.
        let mut broken = bytes.clone();
        broken[8] = b'!';
        let err = read_tensors(&broken).unwrap_err();
        assert!(err.to_string().contains("not a valid safetensors file"), "{err}");
        // Declared header length past the end of the file.
        let mut long_header = bytes.clone();
        long_header[..8].copy_from_slice(&(u64::MAX / 2).to_le_bytes());
        assert!(matches!(read_tensors(&long_header), Err(CheckpointError::Format(_))));
        // Offsets that do not match the shape.
        let text = String::from_utf8_lossy(&bytes).replace("[2,2]", "[2,3]");
        assert!(matches!(read_tensors(text.as_bytes()), Err(CheckpointError::Format(_))));
    }

    #[test]
    fn every_flipped_bit_of_a_model_file_is_refused() {
        let tensors = [
            TensorRef { name: "a", shape: &[2, 3], data: &[1.0, -2.0, 3.5, 0.0, 1e-3, 7.0] },
            TensorRef { name: "b", shape: &[1], data: &[0.25] },
        ];
        let extra = BTreeMap::from([("step".to_string(), "12".to_string())]);
        let bytes = save_model(&small_config(BlockKind::Moe), 1.5, &extra, &tensors).unwrap();
        assert!(load_model(&bytes).is_ok());
        for at in 0..bytes.len() {
            for bit in 0..8 {
                let mut flipped = bytes.clone();
                flipped[at] ^= 1 << bit;
                assert!(load_model(&flipped).is_err(), "byte {at} bit {bit} went unnoticed");
            }
        }
    }

    #[test]
    fn non_finite_values_and_negative_second_moments_are_refused() {
        let config = small_config(BlockKind::Dense);
        let nan = [TensorRef { name: "w", shape: &[2], data: &[1.0, f32::NAN] }];
        let err = load_model(&save_model(&config, 1.0, &BTreeMap::new(), &nan).unwrap());
        assert!(
            matches!(&err, Err(CheckpointError::NonFinite { name, index: 1, .. }) if name == "w"),
            "{err:?}"
        );
        let moments = [AdamMomentsRef { name: "w", shape: &[2], m: &[0.0, 0.0], v: &[0.0, -1.0] }];
        let err = load_optimizer(&save_optimizer(1, &moments).unwrap()).unwrap_err();
        assert!(
            matches!(&err, CheckpointError::Negative { name, .. } if name == "w.adam_v"),
            "{err}"
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Random prefixes and random byte corruption: an error or a value, never a panic.
        #[test]
        fn corruption_never_panics(cut in 0usize..400, flips in prop::collection::vec(
            (0usize..400, any::<u8>()), 0..4)) {
            let one = [TensorRef { name: "w", shape: &[3, 5], data: &[0.5; 15] }];
            let mut metadata = BTreeMap::from([(STEP_KEY.to_string(), "7".to_string())]);
            metadata.insert(CONFIG_KEY.into(), small_config(BlockKind::Moe).to_json());
            let mut bytes = write_tensors(&one, &metadata).unwrap();
            for (at, value) in flips {
                let at = at % bytes.len();
                bytes[at] = value;
            }
            let cut = cut.min(bytes.len());
            let _ = load_model(&bytes[..cut]);
            let _ = load_optimizer(&bytes[..cut]);
            let _ = read_tensors(&bytes);
        }

        /// Arbitrary bytes are refused cleanly (a valid file by chance is out of reach here).
        #[test]
        fn arbitrary_bytes_are_refused(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
            prop_assert!(read_tensors(&bytes).is_err());
            prop_assert!(load_model(&bytes).is_err());
        }
    }

    #[test]
    fn cross_kind_loading_plan() {
        let dense = small_config(BlockKind::Dense);
        let params = random_params(&dense.param_specs(), 4);
        let bytes = save_model(&dense, 1.0, &BTreeMap::new(), &refs(&params)).unwrap();
        let checkpoint = load_model(&bytes).unwrap();
        for block in [BlockKind::Versatile, BlockKind::Moe, BlockKind::Kloop] {
            let target = small_config(block).param_specs();
            let plan = checkpoint.plan_load(&target).unwrap();
            assert_eq!(plan.copied.len(), dense.param_specs().len(), "{block:?}");
            assert_eq!(plan.copied.len() + plan.initialized.len(), target.len());
            assert!(plan.initialized.iter().all(|n| is_block_specific(n)));
            assert!(plan.ignored.is_empty());
        }
        let versatile = small_config(BlockKind::Versatile);
        let plan = checkpoint.plan_load(&versatile.param_specs()).unwrap();
        assert_eq!(
            plan.initialized,
            vec![
                "transformer.blocks.0.expert_gate.weight",
                "transformer.blocks.0.depth_predictor.weight",
                "transformer.blocks.1.expert_gate.weight",
                "transformer.blocks.1.depth_predictor.weight",
            ]
        );
        // The other way round the routers are ignored.
        let v_params = random_params(&versatile.param_specs(), 5);
        let v_bytes = save_model(&versatile, 1.0, &BTreeMap::new(), &refs(&v_params)).unwrap();
        let back = load_model(&v_bytes).unwrap().plan_load(&dense.param_specs()).unwrap();
        assert_eq!(back.ignored.len(), 4);
        // Another d_model: error naming the first shared tensor.
        let wider = Config { d_model: 32, ..small_config(BlockKind::Versatile) };
        let err = checkpoint.plan_load(&wider.param_specs()).unwrap_err();
        assert!(
            matches!(&err, CheckpointError::ShapeMismatch { name, .. }
                if name == "transformer.wte.weight"),
            "{err}"
        );
        // More layers than the checkpoint: a shared tensor is missing.
        let deeper = Config { n_layers: 3, ..small_config(BlockKind::Versatile) };
        let err = checkpoint.plan_load(&deeper.param_specs()).unwrap_err();
        assert!(
            matches!(&err, CheckpointError::MissingTensor { name }
                if name == "transformer.blocks.2.attn_norm.weight"),
            "{err}"
        );
    }

    #[test]
    fn optimizer_round_trip_and_checks() {
        let config = small_config(BlockKind::Moe);
        let specs = config.param_specs();
        let m = random_params(&specs, 6);
        // Second moments are never negative.
        let mut v = random_params(&specs, 7);
        v.iter_mut().for_each(|(_, _, data)| data.iter_mut().for_each(|x| *x = x.abs()));
        let entries: Vec<AdamMomentsRef<'_>> = m
            .iter()
            .zip(&v)
            .map(|((name, shape, m), (_, _, v))| AdamMomentsRef { name, shape, m, v })
            .collect();
        let bytes = save_optimizer(41, &entries).unwrap();
        let state = load_optimizer(&bytes).unwrap();
        assert_eq!(state.step, 41);
        state.check(&specs).unwrap();
        for ((name, _, m), (_, _, v)) in m.iter().zip(&v) {
            let got = &state.moments[name];
            assert_eq!(
                got.m.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                m.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
            );
            assert_eq!(
                got.v.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                v.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
            );
        }
        // Another kind's specs: missing moments are named.
        let dense_state = {
            let dense_specs = small_config(BlockKind::Dense).param_specs();
            let keep: Vec<_> = entries
                .iter()
                .filter(|e| dense_specs.iter().any(|s| s.name == e.name))
                .copied()
                .collect();
            load_optimizer(&save_optimizer(1, &keep).unwrap()).unwrap()
        };
        let err = dense_state.check(&specs).unwrap_err();
        assert!(err.to_string().contains("expert_gate.weight.adam_m"), "{err}");
        let err = state.check(&small_config(BlockKind::Dense).param_specs()).unwrap_err();
        assert!(matches!(err, CheckpointError::UnexpectedTensor { .. }), "{err}");
        // A lone `.adam_m` or `.adam_v`, a stray tensor, a missing step.
        let lone_m = [TensorRef { name: "p.adam_m", shape: &[1], data: &[0.0] }];
        let step = BTreeMap::from([(STEP_KEY.to_string(), "3".to_string())]);
        let err = load_optimizer(&write_tensors(&lone_m, &step).unwrap()).unwrap_err();
        assert!(matches!(&err, CheckpointError::MissingTensor { name } if name == "p.adam_v"));
        let lone_v = [TensorRef { name: "p.adam_v", shape: &[1], data: &[0.0] }];
        let err = load_optimizer(&write_tensors(&lone_v, &step).unwrap()).unwrap_err();
        assert!(matches!(&err, CheckpointError::MissingTensor { name } if name == "p.adam_m"));
        let stray = [TensorRef { name: "p", shape: &[1], data: &[0.0] }];
        let err = load_optimizer(&write_tensors(&stray, &step).unwrap()).unwrap_err();
        assert!(matches!(err, CheckpointError::UnexpectedTensor { .. }));
        let err = load_optimizer(&write_tensors(&stray, &BTreeMap::new()).unwrap()).unwrap_err();
        assert!(matches!(err, CheckpointError::MissingMetadata { .. }));
    }

    #[test]
    fn train_state_round_trip() {
        let mut rng = Rng::new(9);
        rng.below(10);
        let state = TrainState {
            format: TRAIN_STATE_FORMAT,
            step: 1234,
            model_rng: rng.state(),
            data_rng: [u64::MAX, 0, 1, 1 << 63],
            tokens_seen: 1234 * 16 * 128,
            data_source: "builtin".into(),
            train: TrainConfig::default(),
        };
        let text = state.to_json();
        assert!(text.contains("\"18446744073709551615\""), "u64 words as strings: {text}");
        assert_eq!(TrainState::from_json(&text).unwrap(), state);
        let renamed = text.replace("\"tokens_seen\"", "\"tokens\"");
        assert!(matches!(TrainState::from_json(&renamed), Err(CheckpointError::State(_))));
        let bad_word = text.replace("\"18446744073709551615\"", "\"18446744073709551616\"");
        assert!(TrainState::from_json(&bad_word).is_err());
        let zero_rng = text.replacen(&format!("\"{}\"", state.model_rng[0]), "\"0\"", 1);
        let zero_rng = state.model_rng[1..]
            .iter()
            .fold(zero_rng, |t, w| t.replacen(&format!("\"{w}\""), "\"0\"", 1));
        let err = TrainState::from_json(&zero_rng).unwrap_err().to_string();
        assert!(err.contains("model_rng") && err.contains("all zeros"), "{err}");
        let future = text.replace("\"format\": 1", "\"format\": 2");
        assert!(TrainState::from_json(&future).unwrap_err().to_string().contains("format 2"));
    }
}
