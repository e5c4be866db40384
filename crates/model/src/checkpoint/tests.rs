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
    assert!(matches!(&err, CheckpointError::MissingTensor { name } if *name == dropped.0), "{err}");
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
    assert!(matches!(&err, CheckpointError::Negative { name, .. } if name == "w.adam_v"), "{err}");
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
