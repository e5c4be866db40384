//! The Rust model against PyTorch fixtures written by `benches/compare/reference_model.py`
//! (tests/fixtures/{dense,kloop,moe,versatile}.safetensors): same weights and tokens, then the
//! training-mode forward with zero Gumbel noise must give the same logits, loss, routing and
//! gradient of every parameter.
//!
//! Tolerances (f32 here vs float64 in the reference, whose results are rounded to f32):
//! logits max |Δ| ≤ 1e-4 · max |logit|; loss and CE relative 1e-5; each parameter's gradient
//! max |Δ| ≤ 1e-5 · max |grad|. Measured: logits ≤ 9e-7, gradients ≤ 2e-6 (relative).

use std::collections::BTreeMap;
use std::path::PathBuf;

use vffn_autograd::Tape;
use vffn_model::{
    read_tensors, Batch, BlockKind, Config, Fusion, Model, ModelCheckpoint, Paths, TensorData,
};

fn fixture_path(block: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures").join(format!("{block}.safetensors"))
}

/// Builds the config from the fixture's `config` metadata (the keys the reference defines).
fn config_from_metadata(json: &str) -> (Config, f32) {
    let v: serde_json::Value = serde_json::from_str(json).expect("config JSON");
    let int = |k: &str| v[k].as_u64().unwrap_or_else(|| panic!("config key {k}")) as usize;
    let float = |k: &str| v[k].as_f64().unwrap_or_else(|| panic!("config key {k}")) as f32;
    let block = match v["block"].as_str().expect("block") {
        "dense" => BlockKind::Dense,
        "kloop" => BlockKind::Kloop,
        "moe" => BlockKind::Moe,
        "versatile" => BlockKind::Versatile,
        other => panic!("unknown block {other}"),
    };
    let config = Config {
        vocab_size: int("vocab_size"),
        d_model: int("d_model"),
        n_heads: int("n_heads"),
        n_layers: int("n_layers"),
        hidden: int("hidden"),
        block,
        n_experts: int("n_experts"),
        top_k: int("top_k"),
        max_depth: int("max_depth"),
        paths: Paths::Both,
        fusion: Fusion::Gated,
        rope_theta: float("rope_theta"),
        norm_eps: float("norm_eps"),
        balance_loss_coef: float("balance_loss_coef"),
        ..Config::default()
    };
    (config, float("temperature"))
}

/// max |a − b| / max |b|, asserting equal lengths.
fn rel_max_err(name: &str, got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len(), "{name}: length");
    let scale = want.iter().fold(0.0f64, |m, &x| m.max(f64::from(x.abs())));
    let err = got.iter().zip(want).fold(0.0f64, |m, (&a, &b)| m.max(f64::from((a - b).abs())));
    if scale == 0.0 {
        err
    } else {
        err / scale
    }
}

fn check_fixture(block: &str) {
    let path = fixture_path(block);
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let file = read_tensors(&bytes).expect("fixture parses");
    let (config, temperature) = config_from_metadata(&file.metadata["config"]);
    let t = |name: &str| -> &TensorData {
        file.tensors.get(name).unwrap_or_else(|| panic!("{block}: fixture lacks {name}"))
    };

    // Weights: every parameter under its exact name (init_from copies all of them; none left).
    let specs = config.param_specs();
    let tensors: BTreeMap<String, TensorData> =
        specs.iter().map(|s| (s.name.clone(), t(&s.name).clone())).collect();
    let ckpt =
        ModelCheckpoint { config: config.clone(), temperature, extra: BTreeMap::new(), tensors };
    let model = Model::from_checkpoint(&ckpt).expect("fixture weights load exactly");

    let tokens = t("input_tokens");
    let (b, t1) = (tokens.shape[0], tokens.shape[1]);
    let seq = t1 - 1;
    let ids: Vec<u32> = tokens.data.iter().map(|&x| x as u32).collect();
    let mut inputs = Vec::new();
    let mut targets = Vec::new();
    for row in ids.chunks_exact(t1) {
        inputs.extend_from_slice(&row[..seq]);
        targets.extend_from_slice(&row[1..]);
    }
    let batch = Batch { batch_size: b, seq_len: seq, inputs, targets, target_difficulty: None };

    let mut tape = Tape::new();
    let out = model.train_forward(&mut tape, &batch, temperature, None).expect("forward");

    let logit_err = rel_max_err("logits", out.logits.data(), &t("logits").data);
    assert!(logit_err <= 1e-4, "{block}: logits relative error {logit_err:.2e}");
    let (loss, ce) = (out.loss.item(), out.ce);
    let (want_loss, want_ce) = (t("loss").data[0], t("ce_loss").data[0]);
    assert!(((loss - want_loss) / want_loss).abs() <= 1e-5, "{block}: loss {loss} vs {want_loss}");
    assert!(((ce - want_ce) / want_ce).abs() <= 1e-5, "{block}: ce {ce} vs {want_ce}");

    for layer in 0..config.n_layers {
        if let Some(depth) = file.tensors.get(&format!("blocks.{layer}.depth")) {
            let want: Vec<u8> = depth.data.iter().map(|&x| x as u8).collect();
            assert_eq!(out.routing.depth[layer], want, "{block}: layer {layer} depth");
        }
        if let Some(experts) = file.tensors.get(&format!("blocks.{layer}.experts")) {
            let want: Vec<u32> = experts.data.iter().map(|&x| x as u32).collect();
            assert_eq!(out.routing.experts[layer], want, "{block}: layer {layer} experts");
        }
    }

    let grads = tape.backward(&out.loss).expect("backward");
    for (id, param) in model.params.iter() {
        let got =
            grads.param(id).unwrap_or_else(|| panic!("{block}: no grad for {}", param.name()));
        let want = &t(&format!("{}.grad", param.name())).data;
        let err = rel_max_err(param.name(), got, want);
        assert!(err <= 1e-5, "{block}: grad of {} relative error {err:.2e}", param.name());
    }
}

#[test]
fn dense_matches_pytorch() {
    check_fixture("dense");
}

#[test]
fn kloop_matches_pytorch() {
    check_fixture("kloop");
}

#[test]
fn moe_matches_pytorch() {
    check_fixture("moe");
}

#[test]
fn versatile_matches_pytorch() {
    check_fixture("versatile");
}
