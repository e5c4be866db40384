//! `model.safetensors`: the parameters with the config and temperature, loaded exactly or
//! across block kinds ([`LoadPlan`]).

use super::*;

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

pub(super) fn load_model_checked(
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
pub(super) fn check_shape(spec: &ParamSpec, found: &TensorData) -> Result<(), CheckpointError> {
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
pub(super) fn is_block_specific(name: &str) -> bool {
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
