//! `optimizer.safetensors`: the AdamW moments of every parameter and the optimizer step.

use super::*;

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
