//! One training step, the only one: `vffn train`, `vffn bench train` and the criterion model
//! bench all run [`Training::step`].
//!
//! A step: the next batch of random training windows; the temperature τ and the learning rate
//! of this step ([`crate::schedule`]); the gradients of the objective (mean CE + the balance
//! loss, `balance.rs`) over the batch run as [`TRAIN_GROUPS`] groups of sequences; the
//! global gradient-norm clip; AdamW; then the non-finite checks, in this order: the loss before
//! any update, the gradient norm before AdamW, the weights and moments after it. A step that
//! fails a check leaves nothing of itself saved (the caller saves only after a good step).
//!
//! The RNG streams derive from the run seed: parameters from `seed`, the training windows from
//! `seed ^ DATA_SALT`, the Gumbel noise from `seed ^ NOISE_SALT`.

use thiserror::Error;
use vffn_autograd::{clip_grad_norm, AdamW, AdamWConfig, Rng};

use crate::config::{RunConfig, TrainConfig};
use crate::data::{Batch, Batcher, DataError, Split};
use crate::model::{Model, ModelError, TRAIN_GROUPS};
use crate::versatile::DepthAgreement;

/// Salt of the Gumbel-noise RNG seed: `seed ^ NOISE_SALT`.
pub const NOISE_SALT: u64 = 0x6E6F_6973_6521; // "noise!"
/// Salt of the training-window RNG seed: `seed ^ DATA_SALT`.
pub const DATA_SALT: u64 = 0x6461_7461_2121; // "data!!"

/// Why a training step stopped.
#[derive(Debug, Error)]
pub enum TrainError {
    #[error("training step {step}: {source}")]
    Model { step: u64, source: ModelError },
    #[error("loss is {loss} at step {step} (lr {lr:.3e}): training stopped")]
    Loss { step: u64, loss: f32, lr: f32 },
    #[error("gradient norm is {grad_norm} at step {step} (loss {loss}): training stopped")]
    GradNorm { step: u64, grad_norm: f32, loss: f32 },
    #[error("optimizer step: {0}")]
    Optimizer(vffn_autograd::Error),
    #[error("after step {step}: parameter `{name}` is {value} at index {index}: training stopped")]
    Weight { step: u64, name: String, value: f32, index: usize },
    #[error("after step {step}: the optimizer state of `{name}` is not finite: training stopped")]
    Moments { step: u64, name: String },
    #[error("training data: {0}")]
    Data(#[from] DataError),
}

/// The AdamW hyper-parameters of a recipe (the learning rate comes with each step).
pub fn adamw_config(train: &TrainConfig) -> AdamWConfig {
    AdamWConfig {
        beta1: train.beta1,
        beta2: train.beta2,
        eps: train.eps,
        weight_decay: train.weight_decay,
    }
}

/// What one step did (the metrics of `vffn train`).
#[derive(Clone, Debug)]
pub struct StepReport {
    /// Steps done, this one included.
    pub step: u64,
    /// The objective, its mean CE and Σ_layers balance loss (before the coefficient).
    pub loss: f32,
    pub ce: f32,
    pub balance: f32,
    pub lr: f32,
    pub temperature: f32,
    /// Global gradient norm before clipping.
    pub grad_norm: f32,
    /// Tokens of the step's batch.
    pub tokens: usize,
    /// Per layer: the depth router's training picks against its argmax.
    pub depth_agreement: Vec<DepthAgreement>,
}

/// A model in training: everything a step reads and changes (what a checkpoint saves).
pub struct Training {
    pub run: RunConfig,
    pub model: Model,
    pub optimizer: AdamW,
    /// Random training windows.
    pub batcher: Batcher,
    /// Gumbel noise of the depth routers.
    pub noise_rng: Rng,
    /// Steps done.
    pub step: u64,
}

impl Training {
    /// Step 0 of `run` with `model` (freshly initialized, or initialized from another
    /// checkpoint), fresh AdamW moments, RNGs from `run.train.seed`, windows of `train`.
    pub fn start(run: RunConfig, model: Model, train: Split) -> Result<Self, TrainError> {
        let seed = run.train.seed;
        let optimizer = AdamW::new(adamw_config(&run.train), &model.params);
        let (seq_len, batch_size) = (run.model.seq_len, run.model.batch_size);
        let batcher = Batcher::new(train, seq_len, batch_size, seed ^ DATA_SALT)?;
        let noise_rng = Rng::new(seed ^ NOISE_SALT);
        Ok(Training { run, model, optimizer, batcher, noise_rng, step: 0 })
    }

    /// One step on the next batch of training windows.
    pub fn step(&mut self) -> Result<StepReport, TrainError> {
        let batch = self.batcher.next_batch();
        self.step_on(&batch)
    }

    /// One step on `batch` (see the module doc for the order of its parts).
    pub fn step_on(&mut self, batch: &Batch) -> Result<StepReport, TrainError> {
        let step = self.step;
        let lr = self.run.train.lr_at(step);
        let temperature = self.run.temperature_at(step);
        let out = self
            .model
            .train_step_grads(batch, temperature, Some(&mut self.noise_rng), TRAIN_GROUPS)
            .map_err(|source| TrainError::Model { step: step + 1, source })?;
        let loss = out.loss;
        if !loss.is_finite() {
            return Err(TrainError::Loss { step: step + 1, loss, lr });
        }
        let params = &mut self.model.params;
        params.zero_grad();
        for grads in out.grads {
            params.accumulate_grads(grads);
        }
        let clip = self.run.train.grad_clip;
        let grad_norm = clip_grad_norm(params, if clip > 0.0 { clip } else { f32::INFINITY });
        if !grad_norm.is_finite() {
            return Err(TrainError::GradNorm { step: step + 1, grad_norm, loss });
        }
        self.optimizer.step(params, lr).map_err(TrainError::Optimizer)?;
        params.zero_grad();
        self.step += 1;
        self.check_weights()?;
        Ok(StepReport {
            step: self.step,
            loss,
            ce: out.ce,
            balance: out.balance,
            lr,
            temperature,
            grad_norm,
            tokens: batch.batch_size * batch.seq_len,
            depth_agreement: out.depth_agreement,
        })
    }

    /// Every parameter and optimizer moment finite, second moments ≥ 0: checked after each
    /// update, so a bad update stops the run before anything of it is saved.
    pub fn check_weights(&self) -> Result<(), TrainError> {
        let step = self.step;
        for tensor in self.model.tensor_refs() {
            if !all_finite(tensor.data) {
                let index = tensor.data.iter().position(|x| !x.is_finite()).expect("one");
                let (name, value) = (tensor.name.to_string(), tensor.data[index]);
                return Err(TrainError::Weight { step, name, value, index });
            }
        }
        let adam = self.optimizer.state();
        for (i, name) in adam.names.iter().enumerate() {
            let bad_m = !all_finite(&adam.m[i]);
            let bad_v = !all_finite(&adam.v[i]) || !all_non_negative(&adam.v[i]);
            if bad_m || bad_v {
                return Err(TrainError::Moments { step, name: name.clone() });
            }
        }
        Ok(())
    }
}

/// Whether every value is finite (magnitude bits below infinity's). Written as an or of
/// 32-bit compares, which the compiler vectorizes even for baseline x86-64 (SSE2 has no 32-bit
/// max); an early-exit search does not vectorize, and this runs over every weight and moment
/// after each step.
fn all_finite(data: &[f32]) -> bool {
    !data.iter().fold(false, |bad, x| bad | ((x.to_bits() & 0x7FFF_FFFF) as i32 >= 0x7F80_0000))
}

/// Whether no value is below zero (−0.0 allowed): as an i32, a float's bits are negative exactly
/// when its sign is set; −0.0's pattern is i32::MIN.
fn all_non_negative(data: &[f32]) -> bool {
    !data.iter().fold(false, |bad, x| {
        let b = x.to_bits() as i32;
        bad | ((b < 0) & (b != i32::MIN))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::data::Dataset;

    #[test]
    fn all_non_negative_rejects_any_negative_value_but_not_negative_zero() {
        assert!(all_non_negative(&[0.0, -0.0, 1.0, f32::MAX, 1e-45]));
        for bad in [-1e-45, -1.0, f32::MIN, f32::NEG_INFINITY] {
            assert!(!all_non_negative(&[1.0, bad, 2.0]), "{bad}");
        }
    }

    #[test]
    fn all_finite_rejects_nan_and_infinities_anywhere_and_accepts_every_finite_value() {
        let finite = [0.0, -0.0, f32::MAX, f32::MIN, f32::MIN_POSITIVE, 1e-45, -1e-45, 3.5];
        assert!(all_finite(&finite));
        assert!(all_finite(&[]));
        for bad in [f32::NAN, -f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            for at in 0..finite.len() {
                let mut v = finite.to_vec();
                v[at] = bad;
                assert!(!all_finite(&v), "{bad} at {at}");
            }
        }
    }

    fn tiny_run(seed: u64) -> RunConfig {
        let model = Config {
            d_model: 16,
            n_heads: 2,
            hidden: 32,
            n_layers: 1,
            seq_len: 8,
            batch_size: 2,
            ..Config::tiny()
        };
        let train = TrainConfig { steps: 4, warmup_steps: 1, seed, ..TrainConfig::default() };
        RunConfig { model, train }
    }

    fn start(seed: u64) -> Training {
        let run = tiny_run(seed);
        let data = Dataset::builtin(1, 4096, 512, run.model.seq_len).unwrap();
        let model = Model::new(run.model.clone(), seed).unwrap();
        Training::start(run, model, data.train).unwrap()
    }

    #[test]
    fn a_step_reports_the_schedules_and_moves_the_weights() {
        let mut training = start(5);
        let before: Vec<f32> = training.model.tensor_refs()[0].data.to_vec();
        let report = training.step().unwrap();
        assert_eq!((report.step, training.step), (1, 1));
        assert_eq!(report.lr, training.run.train.lr_at(0));
        assert_eq!(report.temperature, training.run.temperature_at(0));
        assert_eq!(report.tokens, 16);
        assert!(report.loss.is_finite() && report.grad_norm > 0.0);
        assert_ne!(training.model.tensor_refs()[0].data, &before[..]);
    }

    #[test]
    fn the_same_seed_gives_the_same_steps_bit_for_bit() {
        let (mut a, mut b) = (start(9), start(9));
        for _ in 0..3 {
            let (ra, rb) = (a.step().unwrap(), b.step().unwrap());
            assert_eq!(ra.loss.to_bits(), rb.loss.to_bits());
            assert_eq!(ra.grad_norm.to_bits(), rb.grad_norm.to_bits());
        }
    }

    #[test]
    fn the_windows_are_drawn_with_the_data_salt() {
        let mut training = start(7);
        let data = Dataset::builtin(1, 4096, 512, 8).unwrap();
        let mut salted = Batcher::new(data.train, 8, 2, 7 ^ DATA_SALT).unwrap();
        assert_eq!(training.batcher.next_batch().inputs, salted.next_batch().inputs);
    }

    #[test]
    fn a_non_finite_weight_stops_the_run_naming_the_tensor() {
        let mut training = start(3);
        let id = training.model.params.iter().next().unwrap().0;
        training.model.params.get_mut(id).data_mut()[2] = f32::NAN;
        let err = training.check_weights().unwrap_err().to_string();
        assert!(err.contains("training stopped") && err.contains("index 2"), "{err}");
    }
}
