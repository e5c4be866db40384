//! Byte data for training and validation: splits, random training windows, ordered validation
//! windows.
//!
//! - A data file is split by position: the first 90 % of its bytes train, the last 10 %
//!   validate ([`Dataset::from_bytes`]). The built-in corpus is generated as two streams from
//!   different seeds instead ([`Dataset::builtin`]), with per-byte difficulty labels.
//! - Training ([`Batcher`]): each batch is B windows of T+1 bytes starting at uniformly random
//!   offsets of the train split (drawn with a [`Rng`] whose state is the checkpoint's "data
//!   position"); inputs are the first T bytes, targets the last T.
//! - Validation ([`validation_batches`]): window w has inputs `bytes[w·T .. w·T+T]` and targets
//!   `bytes[w·T+1 .. w·T+T+1]` (stride T, so every byte but the first is a target exactly once
//!   up to the tail), for w = 0 .. (len − 1)/T, in order, B windows per batch (the last batch
//!   may hold fewer).

use thiserror::Error;
use vffn_autograd::Rng;

use crate::corpus::{generate, Difficulty};

/// Bytes of built-in training corpus (2 MiB: generated in well under a second).
pub const BUILTIN_TRAIN_BYTES: usize = 2 << 20;
/// Bytes of built-in validation corpus.
pub const BUILTIN_VAL_BYTES: usize = 256 << 10;
/// Mixed into the seed of the built-in validation stream so it differs from the train stream.
const VAL_SEED_SALT: u64 = 0x7661_6C69_6461_7465; // "validate"

/// Errors about data that cannot feed the model.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum DataError {
    #[error("data is empty")]
    Empty,
    #[error(
        "the {split} split has {len} bytes but at least seq_len + 1 = {needed} are needed \
         (a data file is split 90/10 into train/validation)"
    )]
    TooShort { split: &'static str, len: usize, needed: usize },
    #[error("seq_len and batch_size must be at least 1")]
    ZeroSize,
    #[error("{labels} difficulty labels for {bytes} bytes")]
    LabelLength { bytes: usize, labels: usize },
}

/// One split's bytes, with difficulty labels when the data is the built-in corpus.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Split {
    pub bytes: Vec<u8>,
    pub difficulty: Option<Vec<Difficulty>>,
}

impl Split {
    /// An unlabelled split.
    pub fn unlabelled(bytes: Vec<u8>) -> Self {
        Split { bytes, difficulty: None }
    }

    fn check(&self, name: &'static str, seq_len: usize) -> Result<(), DataError> {
        if seq_len == 0 {
            return Err(DataError::ZeroSize);
        }
        if let Some(labels) = &self.difficulty {
            if labels.len() != self.bytes.len() {
                return Err(DataError::LabelLength {
                    bytes: self.bytes.len(),
                    labels: labels.len(),
                });
            }
        }
        let needed = seq_len.saturating_add(1);
        if self.bytes.len() < needed {
            return Err(DataError::TooShort { split: name, len: self.bytes.len(), needed });
        }
        Ok(())
    }
}

/// Train and validation splits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dataset {
    pub train: Split,
    pub val: Split,
}

impl Dataset {
    /// Splits a data file: first 90 % train, last 10 % validation; each must hold a window.
    pub fn from_bytes(data: Vec<u8>, seq_len: usize) -> Result<Self, DataError> {
        if data.is_empty() {
            return Err(DataError::Empty);
        }
        let cut = data.len() / 10 * 9 + data.len() % 10 * 9 / 10;
        let mut train = data;
        let val = train.split_off(cut);
        let dataset = Dataset { train: Split::unlabelled(train), val: Split::unlabelled(val) };
        dataset.train.check("train", seq_len)?;
        dataset.val.check("validation", seq_len)?;
        Ok(dataset)
    }

    /// The built-in corpus: `train_bytes` generated from `seed`, `val_bytes` from a derived seed.
    pub fn builtin(
        seed: u64,
        train_bytes: usize,
        val_bytes: usize,
        seq_len: usize,
    ) -> Result<Self, DataError> {
        let labelled = |seed, n| {
            let corpus = generate(seed, n);
            Split { bytes: corpus.bytes, difficulty: Some(corpus.difficulty) }
        };
        let dataset = Dataset {
            train: labelled(seed, train_bytes),
            val: labelled(seed ^ VAL_SEED_SALT, val_bytes),
        };
        dataset.train.check("train", seq_len)?;
        dataset.val.check("validation", seq_len)?;
        Ok(dataset)
    }
}

/// B sequences of T tokens, row-major `[B, T]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Batch {
    /// Rows in this batch (a last validation batch may be short).
    pub batch_size: usize,
    pub seq_len: usize,
    /// `[B, T]` input tokens.
    pub inputs: Vec<u32>,
    /// `[B, T]` next-token targets: `targets[b, t]` follows `inputs[b, t]`.
    pub targets: Vec<u32>,
    /// `[B, T]` difficulty of each target byte, for the labelled built-in corpus.
    pub target_difficulty: Option<Vec<Difficulty>>,
}

impl Batch {
    fn with_capacity(rows: usize, seq_len: usize, labelled: bool) -> Self {
        Batch {
            batch_size: 0,
            seq_len,
            inputs: Vec::with_capacity(rows * seq_len),
            targets: Vec::with_capacity(rows * seq_len),
            target_difficulty: labelled.then(|| Vec::with_capacity(rows * seq_len)),
        }
    }

    /// Appends the window whose inputs start at `start` (T inputs, T targets one later).
    fn push_window(&mut self, split: &Split, start: usize) {
        let t = self.seq_len;
        self.inputs.extend(split.bytes[start..start + t].iter().map(|&b| u32::from(b)));
        self.targets.extend(split.bytes[start + 1..start + t + 1].iter().map(|&b| u32::from(b)));
        if let (Some(out), Some(labels)) = (&mut self.target_difficulty, &split.difficulty) {
            out.extend_from_slice(&labels[start + 1..start + t + 1]);
        }
        self.batch_size += 1;
    }
}

/// Draws training batches of random windows; its RNG state is the resumable data position.
#[derive(Clone, Debug)]
pub struct Batcher {
    split: Split,
    seq_len: usize,
    batch_size: usize,
    rng: Rng,
}

impl Batcher {
    /// A batcher over `split` seeded with `seed`.
    pub fn new(
        split: Split,
        seq_len: usize,
        batch_size: usize,
        seed: u64,
    ) -> Result<Self, DataError> {
        Batcher::from_rng_state(split, seq_len, batch_size, Rng::new(seed).state())
    }

    /// A batcher resuming from a saved [`Batcher::rng_state`].
    pub fn from_rng_state(
        split: Split,
        seq_len: usize,
        batch_size: usize,
        state: [u64; 4],
    ) -> Result<Self, DataError> {
        if batch_size == 0 {
            return Err(DataError::ZeroSize);
        }
        split.check("train", seq_len)?;
        Ok(Batcher { split, seq_len, batch_size, rng: Rng::from_state(state) })
    }

    /// The data position to save in a checkpoint.
    pub fn rng_state(&self) -> [u64; 4] {
        self.rng.state()
    }

    /// The split being sampled.
    pub fn split(&self) -> &Split {
        &self.split
    }

    /// B windows of T+1 bytes at uniformly random starts in `0 ..= len − T − 1`.
    pub fn next_batch(&mut self) -> Batch {
        let starts = self.split.bytes.len() - self.seq_len;
        let mut batch =
            Batch::with_capacity(self.batch_size, self.seq_len, self.split.difficulty.is_some());
        for _ in 0..self.batch_size {
            let start = self.rng.below(starts);
            batch.push_window(&self.split, start);
        }
        batch
    }
}

/// Number of validation windows of a split: (len − 1) / T.
pub fn validation_windows(split: &Split, seq_len: usize) -> usize {
    if seq_len == 0 {
        return 0;
    }
    split.bytes.len().saturating_sub(1) / seq_len
}

/// All validation windows (stride T) in order, `batch_size` per batch; the last may be short.
pub fn validation_batches(
    split: &Split,
    seq_len: usize,
    batch_size: usize,
) -> Result<impl Iterator<Item = Batch> + '_, DataError> {
    if batch_size == 0 {
        return Err(DataError::ZeroSize);
    }
    split.check("validation", seq_len)?;
    let windows = validation_windows(split, seq_len);
    Ok((0..windows).step_by(batch_size).map(move |first| {
        let rows = batch_size.min(windows - first);
        let mut batch = Batch::with_capacity(rows, seq_len, split.difficulty.is_some());
        for window in first..first + rows {
            batch.push_window(split, window * seq_len);
        }
        batch
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_split_is_ninety_ten() {
        let data: Vec<u8> = (0..1000u32).map(|i| (i % 251) as u8).collect();
        let dataset = Dataset::from_bytes(data.clone(), 16).unwrap();
        assert_eq!(dataset.train.bytes, data[..900]);
        assert_eq!(dataset.val.bytes, data[900..]);
        let odd = Dataset::from_bytes(vec![1; 1009], 8).unwrap();
        assert_eq!((odd.train.bytes.len(), odd.val.bytes.len()), (908, 101));
    }

    #[test]
    fn short_or_empty_data_is_an_error() {
        assert_eq!(Dataset::from_bytes(vec![], 8), Err(DataError::Empty));
        // 100 bytes: validation gets 10 < 17.
        assert_eq!(
            Dataset::from_bytes(vec![0; 100], 16),
            Err(DataError::TooShort { split: "validation", len: 10, needed: 17 })
        );
        assert!(matches!(
            Dataset::from_bytes(vec![0; 12], 16),
            Err(DataError::TooShort { split: "train", .. })
        ));
        assert_eq!(Dataset::from_bytes(vec![0; 100], 0), Err(DataError::ZeroSize));
        let tiny = Split::unlabelled(vec![0; 9]);
        assert!(Batcher::new(tiny.clone(), 8, 2, 1).is_ok(), "exactly T+1 bytes: one window");
        assert!(Batcher::new(Split::unlabelled(vec![0; 8]), 8, 2, 1).is_err());
        assert_eq!(Batcher::new(tiny, 8, 0, 1).unwrap_err(), DataError::ZeroSize);
        let mislabelled = Split { bytes: vec![0; 20], difficulty: Some(vec![Difficulty::Easy]) };
        assert!(matches!(
            Batcher::new(mislabelled, 4, 1, 0),
            Err(DataError::LabelLength { bytes: 20, labels: 1 })
        ));
    }

    #[test]
    fn training_windows_are_shifted_by_one_and_resumable() {
        let bytes: Vec<u8> = (0..=255u8).cycle().take(5000).collect();
        let split = Split::unlabelled(bytes);
        let mut batcher = Batcher::new(split.clone(), 32, 4, 7).unwrap();
        let first = batcher.next_batch();
        assert_eq!((first.batch_size, first.inputs.len(), first.targets.len()), (4, 128, 128));
        for row in 0..4 {
            for t in 0..32 {
                let (x, y) = (first.inputs[row * 32 + t], first.targets[row * 32 + t]);
                assert_eq!(y, (x + 1) % 256, "target is the next byte");
            }
        }
        assert!(first.target_difficulty.is_none());
        // Resume from the saved state: the same batches follow.
        let saved = batcher.rng_state();
        let expected: Vec<Batch> = (0..3).map(|_| batcher.next_batch()).collect();
        let mut resumed = Batcher::from_rng_state(split.clone(), 32, 4, saved).unwrap();
        let got: Vec<Batch> = (0..3).map(|_| resumed.next_batch()).collect();
        assert_eq!(got, expected);
        assert_ne!(expected[0], expected[1]);
        // Every start offset is reachable, including the last one (len − T − 1).
        let small = Split::unlabelled((0..40u8).collect());
        let mut batcher = Batcher::new(small, 30, 1, 3).unwrap();
        let mut seen = [false; 10];
        for _ in 0..500 {
            seen[batcher.next_batch().inputs[0] as usize] = true;
        }
        assert!(seen.iter().all(|&s| s), "{seen:?}");
    }

    #[test]
    fn validation_covers_every_window_in_order() {
        let split = Split::unlabelled((0..=200u8).collect()); // 201 bytes, T 16: 12 windows
        assert_eq!(validation_windows(&split, 16), 12);
        let batches: Vec<Batch> = validation_batches(&split, 16, 5).unwrap().collect();
        assert_eq!(batches.iter().map(|b| b.batch_size).collect::<Vec<_>>(), vec![5, 5, 2]);
        let inputs: Vec<u32> = batches.iter().flat_map(|b| b.inputs.clone()).collect();
        let targets: Vec<u32> = batches.iter().flat_map(|b| b.targets.clone()).collect();
        assert_eq!(inputs, (0..192).collect::<Vec<u32>>());
        assert_eq!(targets, (1..193).collect::<Vec<u32>>());
        // 193 bytes: the last window ends exactly at the end.
        let exact = Split::unlabelled(vec![0; 193]);
        assert_eq!(validation_windows(&exact, 16), 12);
        assert!(validation_batches(&Split::unlabelled(vec![0; 16]), 16, 1).is_err());
    }

    #[test]
    fn builtin_dataset_is_labelled_and_seeded() {
        let dataset = Dataset::builtin(3, 20_000, 4_000, 64).unwrap();
        assert_eq!(dataset, Dataset::builtin(3, 20_000, 4_000, 64).unwrap());
        assert_ne!(dataset.train.bytes[..4000], dataset.val.bytes[..]);
        let labels = dataset.train.difficulty.as_ref().unwrap();
        let mut batcher = Batcher::new(dataset.train.clone(), 64, 2, 1).unwrap();
        let batch = batcher.next_batch();
        let difficulty = batch.target_difficulty.as_ref().unwrap();
        // Labels travel with their target bytes: find each row's window and compare.
        for row in 0..2 {
            let window = &batch.inputs[row * 64..row * 64 + 64];
            let start = dataset
                .train
                .bytes
                .windows(64)
                .position(|w| w.iter().zip(window).all(|(&a, &b)| u32::from(a) == b))
                .unwrap();
            assert_eq!(&difficulty[row * 64..row * 64 + 64], &labels[start + 1..start + 65]);
        }
        let val: Vec<Batch> = validation_batches(&dataset.val, 64, 8).unwrap().collect();
        assert!(val.iter().all(|b| b.target_difficulty.is_some()));
        assert!(matches!(
            Dataset::builtin(3, 10, 4000, 64),
            Err(DataError::TooShort { split: "train", .. })
        ));
    }
}
