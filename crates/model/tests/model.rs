//! The model's public API: construction and parameter layout, training forward/backward for
//! every block kind, training (zero noise) vs inference, checkpoints, decoding, errors.

use std::collections::BTreeMap;

use vffn_autograd::{Rng, Tape};
use vffn_model::{
    load_model, realized_inference_flops, save_model, Batch, BlockKind, CheckpointError, Config,
    InferOutput, Model, ModelError, TensorData, TrainOutput,
};

const KINDS: [BlockKind; 4] =
    [BlockKind::Dense, BlockKind::Kloop, BlockKind::Moe, BlockKind::Versatile];

fn small_config(block: BlockKind) -> Config {
    Config {
        vocab_size: 40,
        d_model: 16,
        n_heads: 2,
        n_layers: 2,
        hidden: 32,
        block,
        n_experts: 4,
        top_k: 2,
        max_depth: 3,
        seq_len: 9,
        batch_size: 2,
        balance_loss_coef: 0.01,
        ..Config::default()
    }
}

fn random_batch(config: &Config, seed: u64) -> Batch {
    let mut rng = Rng::new(seed);
    let n = config.batch_size * config.seq_len;
    let mut draw = || (0..n).map(|_| rng.below(config.vocab_size) as u32).collect::<Vec<_>>();
    let inputs = draw();
    let targets = draw();
    Batch {
        batch_size: config.batch_size,
        seq_len: config.seq_len,
        inputs,
        targets,
        target_difficulty: None,
    }
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).fold(0.0f32, |m, (x, y)| m.max((x - y).abs()))
}

#[test]
fn params_follow_specs_and_every_kind_trains() {
    for kind in KINDS {
        let config = small_config(kind);
        let model = Model::new(config.clone(), 7).unwrap();
        let specs = config.param_specs();
        let names: Vec<(&str, &[usize], bool)> =
            model.params.iter().map(|(_, p)| (p.name(), p.shape(), p.no_decay())).collect();
        let want: Vec<(&str, &[usize], bool)> =
            specs.iter().map(|s| (s.name.as_str(), s.shape.as_slice(), !s.decays())).collect();
        assert_eq!(names, want, "{kind:?}");
        for (_, p) in model.params.iter() {
            if p.no_decay() {
                assert!(p.data().iter().all(|&x| x == 1.0), "{} not ones", p.name());
            } else {
                let bound = 3.0 * config.init_std;
                assert!(p.data().iter().all(|x| x.abs() <= bound), "{} untruncated", p.name());
                assert!(p.data().iter().any(|&x| x != 0.0), "{} all zero", p.name());
            }
        }

        let batch = random_batch(&config, 1);
        let mut tape = Tape::new();
        let mut noise = Rng::new(3);
        let out = model.train_forward(&mut tape, &batch, 1.0, Some(&mut noise)).unwrap();
        // Near-uniform logits at init: CE close to ln V.
        let ln_v = (config.vocab_size as f32).ln();
        assert!((out.ce - ln_v).abs() < 0.05, "{kind:?}: ce {} vs ln V {ln_v}", out.ce);
        let want_loss = out.ce + config.balance_loss_coef * out.balance;
        assert!((out.loss.item() - want_loss).abs() < 1e-6);
        let routed = matches!(kind, BlockKind::Moe | BlockKind::Versatile);
        assert_eq!(out.balance > 0.0, routed, "{kind:?}: balance {}", out.balance);
        assert_eq!(out.logits.shape(), &[18, config.vocab_size]);
        let grads = tape.backward(&out.loss).unwrap();
        for (id, p) in model.params.iter() {
            let g = grads.param(id).unwrap_or_else(|| panic!("{kind:?}: no grad {}", p.name()));
            assert!(g.iter().all(|x| x.is_finite()), "{}", p.name());
            assert!(g.iter().any(|&x| x != 0.0), "{kind:?}: zero grad for {}", p.name());
        }
    }
}

#[test]
fn parameter_counts_match_the_paper() {
    let dense = small_config(BlockKind::Dense);
    let (d, h, e, depth, layers) = (16, 32, 4, 3, 2);
    let count = |c: &Config| Model::new(c.clone(), 0).unwrap().params.num_elements();
    let base = count(&dense);
    assert_eq!(count(&small_config(BlockKind::Kloop)), base);
    assert_eq!(count(&small_config(BlockKind::Versatile)), base + layers * (e + depth) * d);
    // One more FFN (3·h·d) of experts plus the gate per layer.
    assert_eq!(count(&small_config(BlockKind::Moe)), base + layers * (3 * h * d + e * d));
}

#[test]
fn dense_equals_kloop_with_one_loop() {
    let dense = small_config(BlockKind::Dense);
    let kloop = Config { block: BlockKind::Kloop, max_depth: 1, ..dense.clone() };
    let batch = random_batch(&dense, 2);
    let run = |c: &Config| {
        let model = Model::new(c.clone(), 11).unwrap();
        let mut tape = Tape::new();
        let out = model.train_forward(&mut tape, &batch, 1.0, None).unwrap();
        let logits = out.logits.to_vec();
        let grads = tape.backward(&out.loss).unwrap();
        let g: Vec<Vec<f32>> =
            model.params.iter().map(|(id, _)| grads.param(id).unwrap().to_vec()).collect();
        (logits, g)
    };
    assert_eq!(run(&dense), run(&kloop));
}

/// A versatile model whose depth and expert choices differ across tokens.
fn varied_versatile() -> (Config, Model, Batch) {
    let config =
        Config { init_std: 0.3, seq_len: 12, batch_size: 3, ..small_config(BlockKind::Versatile) };
    let model = Model::new(config.clone(), 5).unwrap();
    let batch = random_batch(&config, 4);
    (config, model, batch)
}

/// A training forward with zero noise and the inference of the same batch, checked to agree:
/// the same logits (within 1e-5) and the same routing. Returns both, with the training tape.
fn train_and_infer(model: &Model, batch: &Batch, what: &str) -> (Tape, TrainOutput, InferOutput) {
    let mut tape = Tape::new();
    let train = model.train_forward(&mut tape, batch, 0.7, None).unwrap();
    let infer = model.infer(&batch.inputs, batch.batch_size, batch.seq_len).unwrap();
    let err = max_abs_diff(train.logits.data(), &infer.logits);
    assert!(err <= 1e-5, "{what}: train vs infer logits differ by {err:.2e}");
    assert_eq!(train.routing, infer.routing, "{what}");
    (tape, train, infer)
}

#[test]
fn training_with_zero_noise_equals_inference() {
    for kind in KINDS {
        let (config, model, batch) = if kind == BlockKind::Versatile {
            varied_versatile()
        } else {
            let c = Config { init_std: 0.3, ..small_config(kind) };
            (c.clone(), Model::new(c.clone(), 5).unwrap(), random_batch(&c, 4))
        };
        let (_, train, infer) = train_and_infer(&model, &batch, &format!("{kind:?}"));
        if kind == BlockKind::Versatile {
            for (layer, depth) in infer.routing.depth.iter().enumerate() {
                let distinct: std::collections::BTreeSet<u8> = depth.iter().copied().collect();
                assert!(distinct.len() > 1, "layer {layer}: one depth for all tokens {depth:?}");
                assert!(depth.iter().all(|&c| (1..=config.max_depth as u8).contains(&c)));
            }
            // Some tokens stop early and some run all loops: both code paths are exercised.
            let all: Vec<u8> = infer.routing.depth.concat();
            assert!(all.contains(&(config.max_depth as u8)) && all.iter().any(|&c| c < 3));
        }
        // eval_loss is the inference CE.
        let eval = model.eval_loss(&batch).unwrap();
        assert!((eval - train.ce).abs() <= 1e-5, "{kind:?}: eval {eval} vs train ce {}", train.ce);
    }
}

#[test]
fn ablation_variants_train_equals_infer() {
    use vffn_model::{Fusion, Paths};
    let (base, _, batch) = varied_versatile();
    let variants = [
        (Paths::Width, Fusion::Gated, None), // the shared expert, on by default
        (Paths::Width, Fusion::Gated, Some(false)),
        (Paths::Depth, Fusion::Gated, None),
        (Paths::Both, Fusion::Average, None),
    ];
    for (paths, fusion, shared_expert) in variants {
        let config = Config { paths, fusion, shared_expert, ..base.clone() };
        let model = Model::new(config.clone(), 5).unwrap();
        let what = format!("{paths:?}/{fusion:?}/{shared_expert:?}");
        let (tape, train, _) = train_and_infer(&model, &batch, &what);
        assert_eq!(train.routing.depth[0].is_empty(), paths == Paths::Width);
        assert_eq!(train.routing.experts[0].is_empty(), paths == Paths::Depth);
        assert_eq!(train.balance > 0.0, paths != Paths::Depth);
        let grads = tape.backward(&train.loss).unwrap();
        for (id, p) in model.params.iter() {
            let unused = (paths == Paths::Width && p.name().contains("depth_predictor"))
                || (paths == Paths::Depth && p.name().contains("expert_gate"));
            assert_eq!(grads.param(id).is_none(), unused, "{paths:?}: {}", p.name());
        }
    }
}

#[test]
fn realized_flops_come_from_the_routing() {
    let (config, model, batch) = varied_versatile();
    let out = model.infer(&batch.inputs, batch.batch_size, batch.seq_len).unwrap();
    let depths: Vec<Vec<usize>> =
        out.routing.depth.iter().map(|l| l.iter().map(|&c| c as usize).collect()).collect();
    let want = realized_inference_flops(&config, 6.5, &depths).unwrap();
    assert_eq!(out.realized_flops(&config, 6.5).unwrap(), want);
    let counts = out.routing.depth_counts(config.max_depth);
    assert_eq!(counts.iter().map(|c| c.iter().sum::<u64>()).collect::<Vec<_>>(), vec![36, 36]);
    let from_counts =
        vffn_model::realized_inference_flops_from_counts(&config, 6.5, &counts).unwrap();
    assert_eq!(from_counts, want);
    // Fewer loops than D everywhere would cost less than the all-D routing.
    let all_max: Vec<Vec<usize>> = depths.iter().map(|l| vec![config.max_depth; l.len()]).collect();
    let max_flops = realized_inference_flops(&config, 6.5, &all_max).unwrap();
    assert_ne!(want, max_flops);
}

#[test]
fn decoder_matches_the_full_forward() {
    for kind in KINDS {
        let config = Config { init_std: 0.3, ..small_config(kind) };
        let model = Model::new(config.clone(), 9).unwrap();
        let tokens: Vec<u32> = (0..11).map(|i| (i * 7 + 3) % 40).collect();
        let full = model.infer(&tokens, 1, tokens.len()).unwrap();
        let mut decoder = model.decoder(tokens.len());
        let v = config.vocab_size;
        for (pos, &tok) in tokens.iter().enumerate() {
            let logits = decoder.push(tok).unwrap();
            let err = max_abs_diff(&logits, &full.logits[pos * v..(pos + 1) * v]);
            assert!(err <= 1e-4, "{kind:?}: position {pos} differs by {err:.2e}");
        }
        assert!(matches!(decoder.push(1), Err(ModelError::DecoderFull { max_len: 11 })));
    }
}

#[test]
fn checkpoint_round_trip_is_bit_exact() {
    let (config, model, batch) = varied_versatile();
    let bytes = save_model(&config, 0.5, &BTreeMap::new(), &model.tensor_refs()).unwrap();
    let ckpt = load_model(&bytes).unwrap();
    let loaded = Model::from_checkpoint(&ckpt).unwrap();
    for ((_, a), (_, b)) in model.params.iter().zip(loaded.params.iter()) {
        assert_eq!(a.name(), b.name());
        let same = a.data().iter().zip(b.data()).all(|(x, y)| x.to_bits() == y.to_bits());
        assert!(same, "{} changed", a.name());
        assert_eq!(a.no_decay(), b.no_decay());
    }
    let x = model.infer(&batch.inputs, 3, 12).unwrap();
    let y = loaded.infer(&batch.inputs, 3, 12).unwrap();
    assert_eq!(x.logits, y.logits);

    // A missing tensor and a misshaped one are errors naming the tensor.
    let name = "transformer.blocks.1.depth_predictor.weight";
    let mut missing = ckpt.clone();
    missing.tensors.remove(name);
    match Model::from_checkpoint(&missing) {
        Err(ModelError::Checkpoint(CheckpointError::MissingTensor { name: n })) => {
            assert_eq!(n, name)
        }
        other => panic!("expected missing {name}, got {:?}", other.map(|_| ())),
    }
    let mut misshaped = ckpt.clone();
    let bad = "transformer.blocks.0.ff_out.weight";
    misshaped.tensors.insert(bad.into(), TensorData { shape: vec![32, 16], data: vec![0.0; 512] });
    let err = Model::from_checkpoint(&misshaped).map(|_| ()).unwrap_err();
    assert!(err.to_string().contains(bad), "{err}");
}

#[test]
fn dense_checkpoint_initializes_a_versatile_model() {
    let dense_cfg = small_config(BlockKind::Dense);
    let dense = Model::new(dense_cfg.clone(), 21).unwrap();
    let ckpt =
        load_model(&save_model(&dense_cfg, 1.0, &BTreeMap::new(), &dense.tensor_refs()).unwrap())
            .unwrap();
    let (versatile, plan) =
        Model::init_from(small_config(BlockKind::Versatile), 22, &ckpt).unwrap();
    assert_eq!(plan.copied.len(), dense.params.len());
    assert_eq!(plan.initialized.len(), 2 * 2, "gate and depth predictor per layer");
    assert!(plan.ignored.is_empty());
    for (_, p) in dense.params.iter() {
        let q = versatile.params.get(versatile.params.id(p.name()).unwrap());
        assert_eq!(p.data(), q.data(), "{} not copied exactly", p.name());
    }
    let fresh = Model::new(small_config(BlockKind::Versatile), 22).unwrap();
    for name in &plan.initialized {
        let a = fresh.params.get(fresh.params.id(name).unwrap()).data();
        let b = versatile.params.get(versatile.params.id(name).unwrap()).data();
        assert_eq!(a, b, "{name} keeps its seeded init");
    }
    // Exact loading of the dense file as versatile is an error naming a missing router.
    let mut as_versatile = ckpt.clone();
    as_versatile.config = small_config(BlockKind::Versatile);
    let err = Model::from_checkpoint(&as_versatile).map(|_| ()).unwrap_err();
    assert!(err.to_string().contains("expert_gate"), "{err}");
}

#[test]
fn bad_inputs_are_errors() {
    let config = small_config(BlockKind::Versatile);
    let model = Model::new(config.clone(), 1).unwrap();
    assert!(matches!(
        model.infer(&[1, 2, 40], 1, 3),
        Err(ModelError::TokenOutOfRange { token: 40, position: 2, vocab_size: 40 })
    ));
    assert!(matches!(model.infer(&[], 0, 3), Err(ModelError::EmptyInput { .. })));
    assert!(matches!(model.infer(&[1, 2], 1, 3), Err(ModelError::InputLength { .. })));
    let mut batch = random_batch(&config, 0);
    batch.targets.pop();
    let mut tape = Tape::new();
    assert!(model.train_forward(&mut tape, &batch, 1.0, None).is_err());
    assert!(matches!(model.decoder(4).push(99), Err(ModelError::TokenOutOfRange { .. })));
    // Longer than the training context is fine (RoPE has no maximum).
    let long: Vec<u32> = (0..40).map(|i| i % 40).collect();
    assert_eq!(model.infer(&long, 1, 40).unwrap().logits.len(), 40 * 40);
    let bad = Config { hidden: 30, ..config };
    assert!(matches!(Model::new(bad, 0), Err(ModelError::Config(_))));
}

#[test]
fn same_seed_same_model() {
    let config = small_config(BlockKind::Moe);
    let a = Model::new(config.clone(), 3).unwrap();
    let b = Model::new(config.clone(), 3).unwrap();
    let c = Model::new(config, 4).unwrap();
    let data = |m: &Model| m.params.iter().map(|(_, p)| p.data().to_vec()).collect::<Vec<_>>();
    assert_eq!(data(&a), data(&b));
    assert_ne!(data(&a), data(&c));
}

#[test]
fn training_step_is_bitwise_deterministic_across_thread_counts() {
    // Large enough that GEMMs and row loops split across threads.
    let config =
        Config { n_layers: 2, seq_len: 64, batch_size: 2, init_std: 0.1, ..Config::tiny() };
    let model = Model::new(config.clone(), 8).unwrap();
    let batch = random_batch(&config, 9);
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        pool.install(|| {
            let mut tape = Tape::new();
            let mut noise = Rng::new(42);
            let out = model.train_forward(&mut tape, &batch, 0.9, Some(&mut noise)).unwrap();
            let loss = out.loss.item().to_bits();
            let grads = tape.backward(&out.loss).unwrap();
            let g: Vec<Vec<u32>> = model
                .params
                .iter()
                .map(|(id, _)| grads.param(id).unwrap().iter().map(|x| x.to_bits()).collect())
                .collect();
            let infer = model.infer(&batch.inputs, config.batch_size, config.seq_len).unwrap();
            let logits: Vec<u32> = infer.logits.iter().map(|x| x.to_bits()).collect();
            (loss, g, logits)
        })
    };
    let one = run(1);
    assert_eq!(one, run(1));
    assert_eq!(one, run(2));
    assert_eq!(one, run(3));
}

/// A batched inference forward runs groups of sequences as parallel tasks; every sequence's
/// logits and routing must be bitwise those of that sequence run alone on one thread.
#[test]
fn batched_inference_equals_each_sequence_alone() {
    for block in [BlockKind::Dense, BlockKind::Moe, BlockKind::Versatile] {
        let config = Config {
            n_layers: 2,
            d_model: 32,
            n_heads: 2,
            hidden: 128,
            seq_len: 16,
            batch_size: 5,
            init_std: 0.1,
            block,
            ..Config::tiny()
        };
        let model = Model::new(config.clone(), 21).unwrap();
        let batch = random_batch(&config, 22);
        let (b, t) = (config.batch_size, config.seq_len);
        let pool = |n: usize| rayon::ThreadPoolBuilder::new().num_threads(n).build().unwrap();
        let all = pool(2).install(|| model.infer(&batch.inputs, b, t).unwrap());
        let vocab = config.vocab_size;
        for s in 0..b {
            let alone =
                pool(1).install(|| model.infer(&batch.inputs[s * t..(s + 1) * t], 1, t).unwrap());
            let rows = &all.logits[s * t * vocab..(s + 1) * t * vocab];
            assert!(
                rows.iter().zip(&alone.logits).all(|(x, y)| x.to_bits() == y.to_bits()),
                "{block:?}: sequence {s} logits differ"
            );
            for (l, depth) in all.routing.depth.iter().enumerate() {
                if !depth.is_empty() {
                    assert_eq!(&depth[s * t..(s + 1) * t], &alone.routing.depth[l][..]);
                }
            }
            for (l, experts) in all.routing.experts.iter().enumerate() {
                let k = experts.len() / (b * t);
                assert_eq!(&experts[s * t * k..(s + 1) * t * k], &alone.routing.experts[l][..]);
            }
        }
        if block == BlockKind::Versatile {
            let depths: std::collections::BTreeSet<u8> =
                all.routing.depth.iter().flatten().copied().collect();
            assert!(depths.len() > 1, "routing should vary across tokens: {depths:?}");
        }
    }
}
