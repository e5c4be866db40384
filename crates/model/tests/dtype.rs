//! Model files in f32, bf16 and f16: export round trips equal the RNE rounding of the original
//! (checked against `half`), files of mixed dtypes load, non-finite half values are refused.

use std::collections::BTreeMap;

use half::{bf16, f16};
use safetensors::tensor::{Dtype, TensorView};
use vffn_model::{
    load_model, read_tensors, save_model, save_model_as, write_tensors_mixed, BlockKind,
    CheckpointError, Config, Model, WeightDtype,
};

fn versatile_model() -> Model {
    let config = Config {
        vocab_size: 40,
        d_model: 16,
        n_heads: 2,
        n_layers: 2,
        hidden: 32,
        block: BlockKind::Versatile,
        n_experts: 4,
        top_k: 2,
        max_depth: 3,
        seq_len: 9,
        init_std: 0.3,
        ..Config::default()
    };
    Model::new(config, 5).unwrap()
}

/// `x` stored as `dtype` and read back, by `half` alone.
fn rounded(x: f32, dtype: WeightDtype) -> f32 {
    match dtype {
        WeightDtype::F32 => x,
        WeightDtype::Bf16 => bf16::from_f32(x).to_f32(),
        WeightDtype::F16 => f16::from_f32(x).to_f32(),
    }
}

#[test]
fn exported_weights_are_the_nearest_even_rounding_of_the_original() {
    let model = versatile_model();
    let refs = model.tensor_refs();
    let f32_bytes = save_model(&model.config, 0.5, &BTreeMap::new(), &refs).unwrap();
    for dtype in WeightDtype::ALL {
        let bytes = save_model_as(&model.config, 0.5, &BTreeMap::new(), &refs, dtype).unwrap();
        let ckpt = load_model(&bytes).unwrap();
        assert_eq!((&ckpt.config, ckpt.temperature), (&model.config, 0.5));
        let loaded = Model::from_checkpoint(&ckpt).unwrap();
        let mut changed = 0;
        for ((_, a), (_, b)) in model.params.iter().zip(loaded.params.iter()) {
            assert_eq!(a.name(), b.name());
            for (&x, &y) in a.data().iter().zip(b.data()) {
                assert_eq!(y.to_bits(), rounded(x, dtype).to_bits(), "{dtype}: {}", a.name());
                changed += usize::from(x != y);
            }
        }
        // Rounding happened for the half formats (the test would pass vacuously otherwise).
        assert_eq!(changed > 0, dtype != WeightDtype::F32, "{dtype}");
        // Values take 2 bytes instead of 4: the tensor data is half the f32 file's.
        let values: usize = refs.iter().map(|t| t.data.len()).sum();
        assert_eq!(data_len(&bytes), values * dtype.size(), "{dtype}");
        assert_eq!(data_len(&f32_bytes), values * 4);
    }
}

/// Bytes of a safetensors file after its 8-byte length and JSON header.
fn data_len(file: &[u8]) -> usize {
    let header = u64::from_le_bytes(file[..8].try_into().unwrap()) as usize;
    file.len() - 8 - header
}

/// `data` stored as `dtype`: the safetensors tag and little-endian bytes (encoded by `half`).
fn stored(data: &[f32], dtype: WeightDtype) -> (Dtype, Vec<u8>) {
    match dtype {
        WeightDtype::F32 => (Dtype::F32, data.iter().flat_map(|x| x.to_le_bytes()).collect()),
        WeightDtype::Bf16 => {
            (Dtype::BF16, data.iter().flat_map(|&x| bf16::from_f32(x).to_le_bytes()).collect())
        }
        WeightDtype::F16 => {
            (Dtype::F16, data.iter().flat_map(|&x| f16::from_f32(x).to_le_bytes()).collect())
        }
    }
}

/// A tensor to write: name, shape, dtype tag and bytes.
type Entry<'a> = (&'a str, &'a [usize], (Dtype, Vec<u8>));

/// A safetensors file of the given tensors with the model's metadata.
fn serialize(tensors: &[Entry<'_>], model: &Model) -> Vec<u8> {
    let views: Vec<(&str, TensorView<'_>)> = tensors
        .iter()
        .map(|(name, shape, (dtype, bytes))| {
            (*name, TensorView::new(*dtype, shape.to_vec(), bytes).unwrap())
        })
        .collect();
    safetensors::serialize(views, Some(metadata(model))).unwrap()
}

fn metadata(model: &Model) -> HashMap {
    HashMap::from([
        ("config".to_string(), model.config.to_json()),
        ("temperature".to_string(), "1.0".to_string()),
    ])
}

type HashMap = std::collections::HashMap<String, String>;

#[test]
fn a_file_of_mixed_dtypes_loads_and_runs() {
    let model = versatile_model();
    let refs = model.tensor_refs();
    let dtype_of = |i: usize| WeightDtype::ALL[i % 3];
    // Written as vffn writes files (checksummed), each tensor in its own dtype.
    let dtypes: Vec<WeightDtype> = (0..refs.len()).map(dtype_of).collect();
    let metadata: BTreeMap<String, String> = metadata(&model).into_iter().collect();
    let bytes = write_tensors_mixed(&refs, &dtypes, &metadata).unwrap();
    let loaded = Model::from_checkpoint(&load_model(&bytes).unwrap()).unwrap();
    for (i, ((_, a), (_, b))) in model.params.iter().zip(loaded.params.iter()).enumerate() {
        let want: Vec<u32> = a.data().iter().map(|&x| rounded(x, dtype_of(i)).to_bits()).collect();
        let got: Vec<u32> = b.data().iter().map(|y| y.to_bits()).collect();
        assert_eq!(got, want, "{}", a.name());
    }
    let tokens: Vec<u32> = (0..9).map(|i| (i * 5 + 1) % 40).collect();
    let out = loaded.infer(&tokens, 1, tokens.len()).unwrap();
    assert!(out.logits.iter().all(|v| v.is_finite()));
}

#[test]
fn a_half_tensor_with_nan_or_infinity_is_refused_by_name() {
    let model = versatile_model();
    let refs = model.tensor_refs();
    let bad = "transformer.blocks.1.ff_out.weight";
    for (dtype, poison) in [(WeightDtype::Bf16, f32::NAN), (WeightDtype::F16, f32::INFINITY)] {
        let tensors: Vec<_> = refs
            .iter()
            .map(|t| {
                let mut data = t.data.to_vec();
                if t.name == bad {
                    data[3] = poison;
                }
                (t.name, t.shape, stored(&data, dtype))
            })
            .collect();
        // A file from another tool (no checksums, which `load_model` requires): the plain
        // reader decodes it and refuses the non-finite half value by the tensor's name.
        let bytes = serialize(&tensors, &model);
        match read_tensors(&bytes) {
            Err(err @ CheckpointError::NonFinite { .. }) => {
                assert!(err.to_string().contains(bad), "{err}");
            }
            other => panic!("{dtype}: expected NonFinite, got {:?}", other.map(|_| ())),
        }
    }
}
