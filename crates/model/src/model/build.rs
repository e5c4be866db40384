//! Building a model whose matrices are held in f32 or bf16 (`--weights`, see
//! [`crate::weights`]): fresh or from a checkpoint, one tensor at a time, so a bf16 model never
//! holds an f32 copy of itself.

use vffn_autograd::{ParamId, ParamStore, Rng, Tape};
use vffn_kernels::bf16::{selected_bf16_path, Bf16Path};

use super::{Model, ModelError};
use crate::checkpoint::ModelCheckpoint;
use crate::config::{Config, ParamKind, ParamSpec};
use crate::dtype::WeightDtype;
use crate::weights::{HalfMatrix, HalfStore, Weight};

impl Model {
    /// A fresh model ([`Model::new`]: same draws, same order) whose matrices are held as
    /// `weights`: each drawn in f32, then rounded, one tensor at a time.
    pub fn new_as(config: Config, seed: u64, weights: WeightDtype) -> Result<Model, ModelError> {
        config.validate()?;
        let mut rng = Rng::new(seed);
        let init_std = config.init_std;
        build(config, weights, |spec, _, chunk| match spec.kind {
            ParamKind::Matrix => chunk.iter_mut().for_each(|v| *v = rng.truncated_normal(init_std)),
            ParamKind::Norm => chunk.fill(1.0),
        })
    }

    /// The checkpoint's model (as [`Model::from_checkpoint`]) with its matrices held as
    /// `weights` (bf16: rounded to nearest even; exact for a file stored in bf16).
    pub fn from_checkpoint_as(
        ckpt: &ModelCheckpoint,
        weights: WeightDtype,
    ) -> Result<Model, ModelError> {
        let config = ckpt.config.clone();
        config.validate()?;
        ckpt.check_exact(&config.param_specs())?;
        build(config, weights, |spec, offset, chunk| {
            chunk.copy_from_slice(&ckpt.tensors[&spec.name].data[offset..offset + chunk.len()]);
        })
    }

    /// How the model holds its matrices: f32 or bf16.
    pub fn weights(&self) -> WeightDtype {
        if self.half.is_empty() {
            WeightDtype::F32
        } else {
            WeightDtype::Bf16
        }
    }

    /// Parameter `id` as a [`Weight`] on `tape`.
    pub(crate) fn weight(&self, tape: &mut Tape, id: ParamId) -> Weight {
        self.half.weight(tape, &self.params, id)
    }
}

/// A model of `config` whose tensors `fill(spec, offset, chunk)` writes in param_specs order,
/// each front to back in chunks (`offset`: the index of `chunk[0]` in the tensor); its matrices
/// held as `weights`. A bf16 matrix is converted chunk by chunk, so building it never holds
/// more than one chunk of it in f32.
fn build(
    config: Config,
    weights: WeightDtype,
    mut fill: impl FnMut(&ParamSpec, usize, &mut [f32]),
) -> Result<Model, ModelError> {
    if weights == WeightDtype::F16 {
        return Err(ModelError::UnsupportedWeights(weights));
    }
    // The bf16 path `VFFN_BF16` or the CPU selects (decided once per process).
    let path = match weights {
        WeightDtype::Bf16 => selected_bf16_path()?,
        _ => Bf16Path::Widen,
    };
    let mut params = ParamStore::new();
    let mut half = HalfStore::default();
    for spec in config.param_specs() {
        let numel = spec.numel();
        if weights == WeightDtype::Bf16 && spec.kind == ParamKind::Matrix {
            let (rows, cols) = (spec.shape[0], numel / spec.shape[0].max(1));
            let matrix = HalfMatrix::from_chunks(rows, cols, path, |offset, chunk| {
                fill(&spec, offset, chunk)
            });
            half.push(Some(matrix));
            params.add(&spec.name, &[0], Vec::new(), !spec.decays())?;
        } else {
            let mut data = vec![0.0f32; numel];
            fill(&spec, 0, &mut data);
            half.push(None);
            params.add(&spec.name, &spec.shape, data, !spec.decays())?;
        }
    }
    let mut model = Model::from_store(config, params)?;
    model.half = half;
    Ok(model)
}
