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
const ADAM_M_SUFFIX: &str = ".adam_m";
const ADAM_V_SUFFIX: &str = ".adam_v";

/// Everything that can be wrong with a checkpoint; each names the tensor or key at fault.
#[derive(Debug, Error)]
pub enum CheckpointError {
    /// The safetensors container itself is unreadable (truncated, corrupted header, ...).
    #[error("not a valid safetensors file (truncated or corrupted?): {0}")]
    Format(#[from] safetensors::SafeTensorError),
    #[error("tensor `{name}`: dtype {found}, expected F32, BF16 or F16")]
    WrongDtype { name: String, found: String },
    #[error("tensor `{name}`: {dtype} value {index} is NaN or infinite")]
    NonFinite { name: String, dtype: String, index: usize },
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
    #[error("metadata `{key}`: missing")]
    MissingMetadata { key: String },
    #[error("metadata `{key}`: {message}")]
    InvalidMetadata { key: String, message: String },
    #[error("metadata `config`: {0}")]
    Config(#[from] ConfigError),
    #[error("{STATE_FILE}: {0}")]
    State(String),
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
    let mut seen = std::collections::BTreeSet::new();
    let mut views = Vec::with_capacity(tensors.len());
    for tensor in tensors {
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
    let info = metadata.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    let mut bytes = safetensors::serialize(views, Some(info))?;
    canonicalize_header(&mut bytes);
    Ok(bytes)
}

/// Rewrites the JSON header with its keys sorted: safetensors keeps the metadata in a HashMap,
/// so without this the same checkpoint would serialize to different bytes from run to run.
/// The sorted header has the same length (same entries, reordered); if it somehow does not
/// fit, the original (valid, merely unordered) header is kept.
fn canonicalize_header(bytes: &mut [u8]) {
    type Header = BTreeMap<String, serde_json::Value>;
    let Some(len) = bytes.get(..8).map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
    else {
        return;
    };
    let Some(region) = usize::try_from(len).ok().and_then(|n| bytes.get_mut(8..8 + n)) else {
        return;
    };
    let Ok(mut header) = serde_json::from_slice::<Header>(region) else { return };
    let metadata = header
        .remove("__metadata__")
        .and_then(|m| serde_json::from_value::<BTreeMap<String, String>>(m).ok());
    let tensors = serde_json::to_string(&header).expect("map");
    let tensors = &tensors[1..tensors.len() - 1];
    let text = match metadata {
        None => format!("{{{tensors}}}"),
        Some(metadata) => {
            let metadata = serde_json::to_string(&metadata).expect("map");
            let separator = if tensors.is_empty() { "" } else { "," };
            format!("{{\"__metadata__\":{metadata}{separator}{tensors}}}")
        }
    };
    if text.len() <= region.len() {
        region[..text.len()].copy_from_slice(text.as_bytes());
        region[text.len()..].fill(b' ');
    }
}

/// Parses safetensors bytes holding f32, bf16 or f16 tensors (any mix), widened to f32.
pub fn read_tensors(bytes: &[u8]) -> Result<TensorFile, CheckpointError> {
    let file = SafeTensors::deserialize(bytes)?;
    let mut tensors = BTreeMap::new();
    for (name, view) in file.iter() {
        let data = crate::dtype::decode(name, view.dtype(), view.data())?;
        tensors.insert(name.to_string(), TensorData { shape: view.shape().to_vec(), data });
    }
    let (_, header) = SafeTensors::read_metadata(bytes)?;
    let metadata = header
        .metadata()
        .as_ref()
        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default();
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
    let TensorFile { tensors, mut metadata } = read_tensors(bytes)?;
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
    let TensorFile { mut tensors, metadata } = read_tensors(bytes)?;
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
        let v = random_params(&specs, 7);
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
        let future = text.replace("\"format\": 1", "\"format\": 2");
        assert!(TrainState::from_json(&future).unwrap_err().to_string().contains("format 2"));
    }
}
