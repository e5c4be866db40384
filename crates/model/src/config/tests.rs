use super::*;
use proptest::prelude::*;

#[test]
fn presets_match_the_issue_and_validate() {
    let tiny = Config::tiny();
    assert_eq!(
        (tiny.d_model, tiny.n_layers, tiny.n_heads, tiny.hidden, tiny.seq_len),
        (128, 4, 4, 512, 128)
    );
    assert_eq!((tiny.batch_size, tiny.vocab_size, tiny.n_experts, tiny.top_k), (16, 256, 8, 2));
    let small = Config::small();
    assert_eq!(
        (small.d_model, small.n_layers, small.n_heads, small.hidden, small.seq_len),
        (256, 6, 8, 1024, 256)
    );
    tiny.validate().unwrap();
    small.validate().unwrap();
    TrainConfig::default().validate().unwrap();
    assert!(matches!(Config::preset("huge"), Err(ConfigError::UnknownPreset(_))));
}

#[test]
fn key_lists_match_serde_fields() {
    // JSON, not TOML: TOML leaves out the unset `shared_expert`.
    let model = serde_json::to_value(Config::default()).unwrap();
    let mut keys: Vec<&str> = model.as_object().unwrap().keys().map(String::as_str).collect();
    let mut expected = MODEL_KEYS.to_vec();
    keys.sort_unstable();
    expected.sort_unstable();
    assert_eq!(keys, expected);
    let train = toml::Table::try_from(TrainConfig::default()).unwrap();
    let mut keys: Vec<&str> = train.keys().map(String::as_str).collect();
    let mut expected = TRAIN_KEYS.to_vec();
    keys.sort_unstable();
    expected.sort_unstable();
    assert_eq!(keys, expected);
}

#[test]
fn toml_file_with_preset_and_overrides() {
    let text = r#"
        preset = "small"
        [model]
        block = "moe"
        d_model = 192
        n_heads = 6
        rope_theta = 500000
        [train]
        steps = 40
        lr = 3e-4
    "#;
    let run = RunConfig::from_toml(text).unwrap();
    assert_eq!(run.model.block, BlockKind::Moe);
    assert_eq!(run.model.d_model, 192);
    assert_eq!(run.model.n_layers, 6, "small preset kept where not overridden");
    assert_eq!(run.model.rope_theta, 500000.0);
    assert_eq!(run.train.steps, 40);
    assert_eq!(run.train.lr, 3e-4);
    assert_eq!(run.train.beta2, 0.95);
    // An empty file is the defaults.
    assert_eq!(RunConfig::from_toml("").unwrap(), RunConfig::default());
}

#[test]
fn toml_round_trip() {
    let mut run = RunConfig::default();
    run.model.block = BlockKind::Kloop;
    run.model.paths = Paths::Depth;
    run.model.fusion = Fusion::Average;
    run.train.seed = u64::MAX >> 2;
    run.train.lr = 7.5e-4;
    let text = run.to_toml();
    assert_eq!(RunConfig::from_toml(&text).unwrap(), run, "{text}");
    let json = run.model.to_json();
    assert_eq!(Config::from_json(&json).unwrap(), run.model);
}

#[test]
fn shared_expert_defaults_on_for_width_only_and_is_validated() {
    let width = RunConfig::from_toml("[model]\npaths = \"width\"\n").unwrap().model;
    assert_eq!(width.shared_expert, None);
    assert!(width.has_shared_expert(), "unset: on for width-only");
    assert!(!Config::tiny().has_shared_expert(), "unset: off for both paths");
    let off = "[model]\npaths = \"width\"\nshared_expert = false\n";
    assert!(!RunConfig::from_toml(off).unwrap().model.has_shared_expert());
    // Set before paths on the command line, the unset default follows paths.
    let mut run = RunConfig::default();
    run.set("paths", "width").unwrap();
    assert!(run.model.has_shared_expert());
    for text in [
        "[model]\nshared_expert = true\n",
        "[model]\nblock = \"moe\"\nshared_expert = true\n",
        "[model]\npaths = \"depth\"\nshared_expert = true\n",
    ] {
        match RunConfig::from_toml(text) {
            Err(ConfigError::Constraint { key, .. }) => assert_eq!(key, "model.shared_expert"),
            other => panic!("{text}: {other:?}"),
        }
    }
    // Checkpoint JSON: unset round-trips as null; a width-only checkpoint from before the
    // key reads as no shared expert, any other keeps the unset default.
    assert_eq!(Config::from_json(&width.to_json()).unwrap(), width);
    let legacy = |c: &Config| c.to_json().replace(",\"shared_expert\":null", "");
    assert!(!width.to_json().contains("shared_expert\":true"));
    let old_width = Config::from_json(&legacy(&width)).unwrap();
    assert_eq!(old_width.shared_expert, Some(false));
    assert!(!old_width.has_shared_expert());
    let old_both = Config::from_json(&legacy(&Config::tiny())).unwrap();
    assert_eq!(old_both, Config::tiny());
    assert_ne!(legacy(&width), width.to_json(), "the key was removed");
    // The TOML written into a run directory reads back to the same config.
    let run = RunConfig { model: width.clone(), ..RunConfig::default() };
    assert_eq!(RunConfig::from_toml(&run.to_toml()).unwrap(), run);
}

#[test]
fn depth_noise_is_unit_by_default_and_scaled_on_request() {
    assert_eq!(Config::tiny().depth_noise, DepthNoise::Unit);
    let text = "[model]\ndepth_noise = \"scaled\"\n";
    assert_eq!(RunConfig::from_toml(text).unwrap().model.depth_noise, DepthNoise::Scaled);
    match RunConfig::from_toml("[model]\ndepth_noise = \"loud\"\n") {
        Err(ConfigError::InvalidValue { key, .. }) => assert_eq!(key, "model.depth_noise"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn unknown_keys_are_named() {
    let err = RunConfig::from_toml("[model]\nd_modle = 64\n").unwrap_err();
    let message = err.to_string();
    assert!(message.contains("model.d_modle"), "{message}");
    assert!(message.contains("did you mean `d_model`"), "{message}");
    let err = RunConfig::from_toml("[train]\nlearning_rate = 1.0\n").unwrap_err();
    assert!(matches!(&err, ConfigError::UnknownKey { key, .. } if key == "train.learning_rate"));
    let err = RunConfig::from_toml("[optim]\nlr = 1.0\n").unwrap_err();
    assert!(matches!(&err, ConfigError::UnknownKey { key, .. } if key == "optim"));
    let err = Config::from_json(&Config::default().to_json().replace("\"seq_len\"", "\"sl\""));
    assert!(err.unwrap_err().to_string().contains("sl"));
}

#[test]
fn bad_values_are_named() {
    let cases = [
        ("[model]\nd_model = -4", "model.d_model"),
        ("[model]\nd_model = \"big\"", "model.d_model"),
        ("[model]\nblock = \"mlp\"", "model.block"),
        ("[model]\nrope_theta = \"x\"", "model.rope_theta"),
        ("[train]\nsteps = 1.5", "train.steps"),
        ("preset = 3", "preset"),
        ("model = 3", "model"),
    ];
    // (the key the error of a config text names, whether it is a broken constraint)
    let named = |text: &str| match RunConfig::from_toml(text) {
        Err(ConfigError::InvalidValue { key, .. }) => (key, false),
        Err(ConfigError::Constraint { key, .. }) => (key, true),
        other => panic!("{text}: {other:?}"),
    };
    for (text, key) in cases {
        assert_eq!(named(text), (key.to_string(), false), "{text}");
    }
    let constraints = [
        ("[model]\nn_heads = 3", "model.n_heads"),
        ("[model]\nd_model = 96\nn_heads = 32", "model.n_heads"), // head_dim 3 is odd
        ("[model]\nhidden = 500", "model.hidden"),
        ("[model]\ntop_k = 9", "model.top_k"),
        ("[model]\nmax_depth = 0", "model.max_depth"),
        ("[model]\nnorm_eps = nan", "model.norm_eps"),
        ("[model]\nrope_theta = -1.0", "model.rope_theta"),
        ("[model]\ninit_std = inf", "model.init_std"),
        ("[model]\ntemperature_end = 6.0", "model.temperature_end"),
        ("[model]\nbalance_loss_coef = -1e-5", "model.balance_loss_coef"),
        ("[model]\nd_model = 1000000000", "model.d_model"),
        ("[train]\nbeta2 = 1.0", "train.beta2"),
        ("[train]\neps = 0.0", "train.eps"),
        ("[train]\nsteps = 0", "train.steps"),
        ("[train]\ntemperature_floor_frac = 1.5", "train.temperature_floor_frac"),
    ];
    for (text, key) in constraints {
        assert_eq!(named(text), (key.to_string(), true), "{text}");
    }
    // hidden need not divide by n_experts when there are no experts.
    RunConfig::from_toml("[model]\nblock = \"dense\"\nhidden = 500").unwrap();
}

#[test]
fn command_line_overrides() {
    let mut run = RunConfig::default();
    run.set("block", "moe").unwrap();
    run.set("train.lr", "3e-4").unwrap();
    run.set("steps", "77").unwrap();
    run.set("model.fusion", "\"average\"").unwrap();
    assert_eq!(run.model.block, BlockKind::Moe);
    assert_eq!(run.model.fusion, Fusion::Average);
    assert_eq!((run.train.lr, run.train.steps), (3e-4, 77));
    assert!(run.set("model.d_model", "100").is_err(), "100 % 4 heads ok but head_dim 25 odd");
    assert!(matches!(run.set("depth", "3"), Err(ConfigError::UnknownKey { .. })));
    assert!(matches!(run.set("x.lr", "3"), Err(ConfigError::UnknownKey { .. })));
}

#[test]
fn lambda_falls_from_width_to_depth_as_the_loop_count_grows() {
    assert_eq!(Fusion::Gated.lambda(4.0f32, 4.0), 0.0);
    assert_eq!(Fusion::Gated.lambda(1.0f32, 4.0), 0.75);
    assert_eq!(Fusion::Gated.lambda(2.5f64, 4.0), 0.375);
    assert_eq!(Fusion::Average.lambda(4.0f32, 4.0), 0.5);
    assert_eq!(Fusion::Average.lambda(1.0f64, 4.0), 0.5);
}

#[test]
fn parameter_counts_by_block_kind() {
    // Tiny: V 256, d 128, h 512, L 4, E 8, D 4.
    let dense = Config { block: BlockKind::Dense, ..Config::tiny() };
    let (v, d, h, l, e, depth) = (256, 128, 512, 4, 8, 4);
    // Per layer: 2 norms (2d) + att_proj 3d² + attn_out d² + ff_proj 2hd + ff_out hd.
    let per_layer = 2 * d + 4 * d * d + 3 * h * d;
    let dense_count = v * d + l * per_layer + d + v * d;
    assert_eq!(dense.num_params(), dense_count);
    assert_eq!(dense_count, 1_115_264);
    let kloop = Config { block: BlockKind::Kloop, ..Config::tiny() };
    assert_eq!(kloop.num_params(), dense_count);
    let versatile = Config::tiny();
    assert_eq!(versatile.num_params(), dense_count + l * (e + depth) * d);
    // MoE: + E experts of s = h/E (2sd + sd each = 3hd in all) + the E×d gate, per layer.
    let moe = Config { block: BlockKind::Moe, ..Config::tiny() };
    assert_eq!(moe.num_params(), dense_count + l * (3 * h * d + e * d));
    let paths_width = Config { paths: Paths::Width, ..Config::tiny() };
    assert_eq!(paths_width.param_specs(), versatile.param_specs());
}

#[test]
fn param_names_are_exact_and_unique() {
    let moe = Config { block: BlockKind::Moe, n_layers: 2, ..Config::tiny() };
    let specs = moe.param_specs();
    let names: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names[0], "transformer.wte.weight");
    assert_eq!(names[names.len() - 2], "transformer.ln_f.weight");
    assert_eq!(names[names.len() - 1], "transformer.ff_out.weight");
    let unique: BTreeSet<&str> = names.iter().copied().collect();
    assert_eq!(unique.len(), names.len());
    let find = |name: &str| specs.iter().find(|s| s.name == name).unwrap();
    assert_eq!(find("transformer.blocks.1.att_proj.weight").shape, vec![384, 128]);
    assert_eq!(find("transformer.blocks.1.ff_proj.weight").shape, vec![1024, 128]);
    assert_eq!(find("transformer.blocks.1.ff_out.weight").shape, vec![128, 512]);
    assert_eq!(find("transformer.blocks.0.expert_gate.weight").shape, vec![8, 128]);
    assert_eq!(find("transformer.blocks.0.experts.7.ff_proj.weight").shape, vec![128, 128]);
    assert_eq!(find("transformer.blocks.0.experts.7.ff_out.weight").shape, vec![128, 64]);
    assert_eq!(find("transformer.blocks.1.attn_norm.weight").kind, ParamKind::Norm);
    assert!(!find("transformer.ln_f.weight").decays());
    assert!(find("transformer.wte.weight").decays());
    let versatile = Config::tiny().param_specs();
    let predictor =
        versatile.iter().find(|s| s.name == "transformer.blocks.3.depth_predictor.weight").unwrap();
    assert_eq!(predictor.shape, vec![4, 128]);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Arbitrary text never panics the parser.
    #[test]
    fn arbitrary_text_never_panics(text in "\\PC{0,200}") {
        let _ = RunConfig::from_toml(&text);
        let _ = Config::from_toml_table_str(&text);
    }

    /// Well-formed files with arbitrary keys and values: never a panic, and every accepted
    /// config validates; every refusal of a known key names it.
    #[test]
    fn arbitrary_keys_and_values_never_panic(
        section in prop::sample::select(vec!["model", "train", "other"]),
        key in prop::sample::select(
            MODEL_KEYS.iter().chain(TRAIN_KEYS).copied().chain(["x", "d"]).collect::<Vec<_>>()
        ),
        value in prop_oneof![
            any::<i64>().prop_map(|v| v.to_string()),
            (0i64..5000).prop_map(|v| v.to_string()),
            any::<f64>().prop_map(|v| format!("{v:?}")),
            Just("nan".to_string()),
            Just("-inf".to_string()),
            "[a-z]{0,8}".prop_map(|s| format!("\"{s}\"")),
            Just("\"moe\"".to_string()),
            Just("[1, 2]".to_string()),
            Just("{ a = 1 }".to_string()),
            Just("true".to_string()),
        ],
    ) {
        let text = format!("[{section}]\n{key} = {value}\n");
        match RunConfig::from_toml(&text) {
            Ok(run) => prop_assert!(run.validate().is_ok()),
            Err(ConfigError::Syntax { .. }) => {}
            Err(ConfigError::UnknownKey { key: named, .. }) => {
                prop_assert!(named.contains(key) || named == section)
            }
            Err(ConfigError::InvalidValue { key: named, .. })
            | Err(ConfigError::Constraint { key: named, .. }) => {
                prop_assert!(named.starts_with(section));
            }
            Err(other) => prop_assert!(false, "unexpected {other:?}"),
        }
    }
}
