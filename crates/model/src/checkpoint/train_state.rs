//! `state.json`: step, RNG states, data position and recipe of a training run.

use super::*;

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
