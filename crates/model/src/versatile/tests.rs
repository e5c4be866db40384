//! Inference early exit against a run-everything reference, and central finite differences
//! of whole blocks (attention + FFN part) against the tape's gradients.

use vffn_autograd::{ParamId, Rng, Tape, Tensor};

use super::*;
use crate::blocks::{attention, moe_part};
use crate::config::BlockKind;
use crate::model::Model;

fn tiny(block: BlockKind, paths: Paths) -> Config {
    Config {
        vocab_size: 16,
        d_model: 8,
        n_heads: 2,
        n_layers: 1,
        hidden: 16,
        block,
        n_experts: 4,
        top_k: 2,
        max_depth: 3,
        paths,
        init_std: 0.5,
        seq_len: 6,
        batch_size: 1,
        ..Config::default()
    }
}

#[test]
fn early_exit_equals_running_everyone_to_the_max_and_gathering() {
    let cfg = Config { hidden: 32, d_model: 16, ..tiny(BlockKind::Versatile, Paths::Both) };
    let model = Model::new(cfg.clone(), 3).unwrap();
    let mut tape = Tape::no_grad();
    let w = model.layers[0].load(&mut tape, &model.params);
    let n = 40;
    let x = Tensor::randn(&[n, 16], 1.0, &mut Rng::new(8));
    let depth = argmax_depth(&mut tape, &w, &x);
    let distinct: std::collections::BTreeSet<u8> = depth.iter().copied().collect();
    assert_eq!(distinct.len(), 3, "every loop count should occur: {depth:?}");
    let got = depth_path_early_exit(&mut tape, &cfg, &w, &x, &depth);
    // Reference: all tokens run the batch maximum of loops; pick x_{depth[t]} per token.
    let max = *depth.iter().max().unwrap() as usize;
    let mut states = Vec::new();
    let mut x_l = x.clone();
    for _ in 0..max {
        x_l = ffn_step(&mut tape, &cfg, &w, &x_l);
        states.push(x_l.to_vec());
    }
    for (t, &c) in depth.iter().enumerate() {
        let want = &states[c as usize - 1][t * 16..(t + 1) * 16];
        let row = &got.data()[t * 16..(t + 1) * 16];
        // Row-wise ops on gathered rows give bit-identical rows.
        assert_eq!(row, want, "token {t} (depth {c})");
    }
}

#[test]
fn depth_agreement_counts_argmax_matches_and_margins() {
    // 3 tokens, D = 3: argmax 2 (margin 1.5), 1 (tie with 3: lower index, margin 0), 3.
    let logits =
        Tensor::from_vec(&[3, 3], vec![0.5, 2.0, -1.0, 4.0, 1.0, 4.0, 0.0, 0.25, 3.0]).unwrap();
    let stats = DepthAgreement::measure(&logits, &[2, 3, 3]);
    assert_eq!((stats.tokens, stats.agree), (3, 2));
    assert_eq!(stats.margin_sum, 1.5 + 0.0 + 2.75);
    assert_eq!(stats.agree_fraction(), Some(2.0 / 3.0));
    let mut sum = stats;
    sum.merge(&DepthAgreement::measure(&logits, &[1, 1, 1]));
    assert_eq!((sum.tokens, sum.agree), (6, 3));
    assert_eq!(DepthAgreement::default().mean_margin(), None);
}

/// `depth_noise = "scaled"` draws the same noise as the paper's op and multiplies it by τ:
/// at τ = 1 it is the paper's pick bit for bit; at a small τ it is the noise-free argmax,
/// where unit noise still flips picks.
#[test]
fn scaled_depth_noise_is_unit_noise_at_tau_one_and_the_argmax_at_small_tau() {
    let unit = Config { init_std: 0.1, ..tiny(BlockKind::Versatile, Paths::Both) };
    let scaled = Config { depth_noise: DepthNoise::Scaled, ..unit.clone() };
    let model = Model::new(unit.clone(), 9).unwrap();
    let mut tape = Tape::new();
    let w = model.layers[0].load(&mut tape, &model.params);
    let x = Tensor::randn(&[64, unit.d_model], 1.0, &mut Rng::new(2));
    let mut run = |cfg: &Config, tau: f32| {
        let (out, probs, depth, agreement) = {
            let pick = GumbelPick { temperature: tau, noise: Some(&mut Rng::new(21)) };
            depth_path(&mut tape, cfg, &w, &x, pick)
        };
        (out.to_vec(), probs.to_vec(), depth, agreement)
    };
    let (out_u, probs_u, depth_u, agree_u) = run(&unit, 1.0);
    let (out_s, probs_s, depth_s, agree_s) = run(&scaled, 1.0);
    assert_eq!((out_u, probs_u, &depth_u, agree_u), (out_s, probs_s, &depth_s, agree_s));
    let (_, _, _, small_unit) = run(&unit, 1e-3);
    let (_, _, _, small_scaled) = run(&scaled, 1e-3);
    assert_eq!(small_scaled.agree, 64, "τ·g → 0: the pick is the argmax");
    assert!(small_unit.agree < 48, "unit noise flips picks: {small_unit:?}");
    // The agreement is against the argmax of the predictor's logits, computed apart.
    let argmax = argmax_depth(&mut Tape::no_grad(), &w, &x);
    let agree = depth_u.iter().zip(&argmax).filter(|(a, b)| a == b).count() as u64;
    assert_eq!(agree_u.agree, agree);
    assert!(agree_u.mean_margin().unwrap() > 0.0);
}

#[test]
fn inference_experts_read_in_place_equal_the_transposed_training_path() {
    let cfg = Config { hidden: 32, d_model: 16, ..tiny(BlockKind::Versatile, Paths::Both) };
    let model = Model::new(cfg.clone(), 4).unwrap();
    let x = Tensor::randn(&[9, 16], 1.0, &mut Rng::new(5));
    let run = |mut tape: Tape| {
        let w = model.layers[0].load(&mut tape, &model.params);
        let in_place = !tape.wants_grad(&[&w.ff_proj, &w.ff_out]);
        let z = tape.rms_norm(&x, &w.ff_norm, cfg.norm_eps);
        let (out, _, experts) = width_path(&mut tape, &cfg, &w, &x, &z);
        (in_place, out.to_vec(), experts)
    };
    let (in_place, got, experts) = run(Tape::no_grad());
    let (transposed, want, want_experts) = run(Tape::new());
    assert!(in_place && !transposed, "one run of each path");
    assert_eq!(experts, want_experts);
    let err = got.iter().zip(&want).fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(err <= 1e-5, "in place vs transposed: {err:.2e}");
}

/// One whole block (attention + FFN part) in training mode with fixed noise; the loss is
/// Σ out ⊙ r (f64) + coef·balance. Returns (loss, routing signature, ‖out ⊙ r‖₂).
fn block_loss(
    model: &Model,
    x: &[f32],
    r: &[f32],
    grads: Option<&mut Vec<(ParamId, Vec<f32>)>>,
    grad_x: Option<&mut Vec<f32>>,
) -> (f64, Vec<u32>, f64) {
    let cfg = &model.config;
    let (n, d) = (cfg.seq_len, cfg.d_model);
    let mut tape = if grads.is_some() { Tape::new() } else { Tape::no_grad() };
    let x0 = tape.watch(&Tensor::from_vec(&[n, d], x.to_vec()).unwrap());
    let mut w = model.layers[0].load(&mut tape, &model.params);
    // Fused kernels when they accept the widths (as in `Model`), else the composed path.
    w.pack(&tape, cfg);
    let positions: Vec<usize> = (0..n).collect();
    let a = attention(&mut tape, cfg, &w, &x0, 1, n, &positions);
    let xa = tape.add(&x0, &a);
    let mut noise = Rng::new(77);
    let coef = 0.1;
    let (out, balance, signature) = match cfg.block {
        BlockKind::Moe => {
            let (out, logits, experts) = moe_part(&mut tape, cfg, &w, &xa);
            let term = balance_term(&mut tape, &logits, &experts);
            let balance = term.loss(&mut tape, &BalanceTerm::shares(&term.counts));
            (out, Some(balance), experts)
        }
        _ => {
            let (out, term, routing) = {
                let pick = GumbelPick { temperature: 0.7, noise: Some(&mut noise) };
                versatile_train(&mut tape, cfg, &w, &xa, pick)
            };
            let balance = term.map(|t| t.loss(&mut tape, &BalanceTerm::shares(&t.counts)));
            let mut sig = routing.experts;
            sig.extend(routing.depth.iter().map(|&c| u32::from(c) + 100));
            (out, balance, sig)
        }
    };
    let sc = out
        .data()
        .iter()
        .zip(r)
        .map(|(&o, &q)| (f64::from(o) * f64::from(q)).powi(2))
        .sum::<f64>()
        .sqrt();
    eprintln!("SCALE {sc}");
    let terms = || out.data().iter().zip(r).map(|(&o, &q)| f64::from(o) * f64::from(q));
    let magnitude = terms().map(|t| t * t).sum::<f64>().sqrt();
    let value = terms().sum::<f64>() + balance.as_ref().map_or(0.0, |b| coef * f64::from(b.item()));
    if let (Some(grads), Some(grad_x)) = (grads, grad_x) {
        let rt = Tensor::from_vec(&[n, d], r.to_vec()).unwrap();
        let prod = tape.mul(&out, &rt);
        let mut loss = tape.sum(&prod);
        if let Some(b) = balance {
            let scaled = tape.scale(&b, coef as f32);
            loss = tape.add(&loss, &scaled);
        }
        let g = tape.backward(&loss).unwrap();
        *grad_x = g.get(&x0).unwrap().to_vec();
        for (id, _) in model.params.iter() {
            if let Some(p) = g.param(id) {
                grads.push((id, p.to_vec()));
            }
        }
    }
    (value, signature, magnitude)
}

/// Central differences (step h, f64) of `block_loss` against the tape's gradients for every
/// entry of x and a spread of entries of each parameter named in `checked`.
fn check_block(cfg: Config, checked: &[&str], check_x: bool) {
    check_block_step(cfg, checked, check_x, 1e-2);
}

/// [`check_block`] with finite-difference step `h`.
fn check_block_step(cfg: Config, checked: &[&str], check_x: bool, h: f32) {
    let mut model = Model::new(cfg.clone(), 12).unwrap();
    let (n, d) = (cfg.seq_len, cfg.d_model);
    let mut rng = Rng::new(5);
    let x: Vec<f32> = (0..n * d).map(|_| rng.normal()).collect();
    let r: Vec<f32> = (0..n * d).map(|_| rng.normal()).collect();
    let mut grads = Vec::new();
    let mut grad_x = Vec::new();
    let (_, base_sig, magnitude) = block_loss(&model, &x, &r, Some(&mut grads), Some(&mut grad_x));
    // Error model of a central difference of an f32 forward: O(h²) truncation (relative,
    // measured worst ≈ 3e-4·|g|) plus rounding: every output carries an f32 rounding error
    // that changes pseudo-randomly between the evaluations at x ± h, so their difference
    // has noise of order ε₃₂·‖out ⊙ r‖₂, divided by 2h. The worst seen (Intel Xeon,
    // AVX-512) is 3.3 of these units; 5 are allowed. This depends on the loss being checked,
    // not on which kernels or CPU computed it.
    let noise = 5.0 * f64::from(f32::EPSILON) * magnitude / (2.0 * f64::from(h));
    let tol = |fd: f64, an: f64| (fd - an).abs() <= 5e-4 + noise + 5e-3 * an.abs();
    let mut checked_count = 0;
    if check_x {
        for i in 0..n * d {
            let mut xp = x.clone();
            xp[i] += h;
            let (lp, sp, _) = block_loss(&model, &xp, &r, None, None);
            xp[i] -= 2.0 * h;
            let (lm, sm, _) = block_loss(&model, &xp, &r, None, None);
            assert!(sp == base_sig && sm == base_sig, "routing flipped at x[{i}]");
            let fd = (lp - lm) / (2.0 * f64::from(h));
            let an = f64::from(grad_x[i]);
            eprintln!("ERR {:.3e} an {an:.3e}", (fd - an).abs());
            assert!(tol(fd, an), "{:?} x[{i}]: fd {fd:.6} vs tape {an:.6}", cfg.block);
            checked_count += 1;
        }
    }
    for (id, g) in &grads {
        let name = model.params.get(*id).name().to_string();
        if !checked.iter().any(|c| name.contains(c)) {
            continue;
        }
        let len = g.len();
        for i in (0..len).step_by((len / 7).max(1)) {
            let orig = model.params.get(*id).data()[i];
            model.params.get_mut(*id).data_mut()[i] = orig + h;
            let (lp, sp, _) = block_loss(&model, &x, &r, None, None);
            model.params.get_mut(*id).data_mut()[i] = orig - h;
            let (lm, sm, _) = block_loss(&model, &x, &r, None, None);
            model.params.get_mut(*id).data_mut()[i] = orig;
            assert!(sp == base_sig && sm == base_sig, "routing flipped at {name}[{i}]");
            let fd = (lp - lm) / (2.0 * f64::from(h));
            let an = f64::from(g[i]);
            eprintln!("ERR {:.3e} an {an:.3e}", (fd - an).abs());
            assert!(tol(fd, an), "{name}[{i}]: fd {fd:.6} vs tape {an:.6}");
            checked_count += 1;
        }
    }
    assert!(checked_count > 20, "only {checked_count} entries checked");
}

/// Both paths: every weight of the FFN part. (The depth predictor and x get a
/// straight-through gradient, which is by design not the derivative of the hard forward;
/// it is checked against PyTorch in tests/tests/fixtures_pytorch.rs.)
#[test]
fn versatile_block_gradients_match_finite_differences() {
    let names = ["ff_norm", "ff_proj", "ff_out", "expert_gate"];
    check_block(tiny(BlockKind::Versatile, Paths::Both), &names, false);
}

/// Width path alone has no straight-through part: check x and the attention weights too.
#[test]
fn versatile_width_block_gradients_match_finite_differences() {
    let names = ["attn_norm", "att_proj", "attn_out", "ff_norm", "ff_proj", "ff_out", "gate"];
    let cfg = tiny(BlockKind::Versatile, Paths::Width);
    check_block(Config { shared_expert: Some(false), ..cfg }, &names, true);
}

/// Width-only with the shared expert (its default): x + FFN(z) + routed, every weight.
#[test]
fn versatile_width_block_with_shared_expert_gradients_match_finite_differences() {
    let names = ["attn_norm", "att_proj", "attn_out", "ff_norm", "ff_proj", "ff_out", "gate"];
    let cfg = tiny(BlockKind::Versatile, Paths::Width);
    assert!(cfg.has_shared_expert());
    check_block(cfg, &names, true);
}

/// The shared-expert width block is the moe block's sum with virtual experts: x + FFN(z) +
/// Σ_k g_k·FFN_k(z), FFN_k the k-th slice of the same FFN; built here from the composed
/// pieces by hand and compared with the block (composed and fused).
#[test]
fn shared_expert_width_block_is_the_whole_ffn_plus_the_routed_slices() {
    for cfg in
        [tiny(BlockKind::Versatile, Paths::Width), fused_cfg(BlockKind::Versatile, Paths::Width)]
    {
        let model = Model::new(cfg.clone(), 4).unwrap();
        let mut tape = Tape::no_grad();
        let mut w = model.layers[0].load(&mut tape, &model.params);
        w.pack(&tape, &cfg);
        let x = Tensor::randn(&[24, cfg.d_model], 1.0, &mut Rng::new(6));
        let z = tape.rms_norm(&x, &w.ff_norm, cfg.norm_eps);
        let (got, logits, experts) = width_path(&mut tape, &cfg, &w, &x, &z);
        let alone = Config { shared_expert: Some(false), ..cfg.clone() };
        let (routed_only, _, experts_alone) = width_path(&mut tape, &alone, &w, &x, &z);
        assert_eq!(experts, experts_alone, "the shared expert does not change routing");
        // By hand: each token's top-k slices and the whole FFN, from the raw weights.
        let (d, h, s, k) = (cfg.d_model, cfg.hidden, cfg.expert_width(), cfg.top_k);
        let (proj, out) = (w.ff_proj.data(), w.ff_out.data());
        let silu = |v: f64| v / (1.0 + (-v).exp());
        let unit = |zt: &[f32], j: usize| {
            let dot = |row: usize| {
                (0..d).map(|c| f64::from(proj[row * d + c]) * f64::from(zt[c])).sum::<f64>()
            };
            dot(j) * silu(dot(h + j))
        };
        let mut max_err = 0.0f64;
        for t in 0..24 {
            let zt = &z.data()[t * d..(t + 1) * d];
            let row_logits = &logits.data()[t * cfg.n_experts..(t + 1) * cfg.n_experts];
            let chosen = &experts[t * k..(t + 1) * k];
            let top: Vec<f64> = chosen.iter().map(|&e| f64::from(row_logits[e as usize])).collect();
            let norm: f64 = top.iter().map(|v| (v - top[0]).exp()).sum();
            let mut weight = vec![1.0f64; h]; // the shared expert: every unit once
            for (slot, &e) in chosen.iter().enumerate() {
                let gate = (top[slot] - top[0]).exp() / norm;
                (0..s).for_each(|j| weight[e as usize * s + j] += gate);
            }
            let acts: Vec<f64> = (0..h).map(|j| weight[j] * unit(zt, j)).collect();
            for c in 0..d {
                let ffn: f64 = (0..h).map(|j| f64::from(out[c * h + j]) * acts[j]).sum();
                let want = f64::from(x.data()[t * d + c]) + ffn;
                max_err = max_err.max((f64::from(got.data()[t * d + c]) - want).abs());
            }
            // Without the shared expert the block is that minus the whole FFN.
            for c in 0..d {
                let whole: f64 = (0..h).map(|j| f64::from(out[c * h + j]) * unit(zt, j)).sum();
                let want = f64::from(got.data()[t * d + c]) - whole;
                let alone = f64::from(routed_only.data()[t * d + c]);
                max_err = max_err.max((alone - want).abs());
            }
        }
        // f32 block vs f64 reference: measured ≤ 2.2e-6 on both paths.
        assert!(max_err < 1e-4, "max error {max_err:e}");
    }
}

/// d 16, h 64, E 4: expert width 16, so the fused kernels run (checked here). init_std 0.25
/// and a step of 3e-3 (with 0.5 / 1e-2 the O(h²) term of this wider FFN exceeds the
/// tolerance on the composed path just the same; larger steps flip routings).
fn fused_cfg(block: BlockKind, paths: Paths) -> Config {
    let cfg = Config { d_model: 16, hidden: 64, init_std: 0.25, ..tiny(block, paths) };
    let model = Model::new(cfg.clone(), 12).unwrap();
    let mut tape = Tape::new();
    let mut w = model.layers[0].load(&mut tape, &model.params);
    w.pack(&tape, &cfg);
    assert!(w.packed().is_some(), "fused path not taken");
    cfg
}

#[test]
fn fused_versatile_block_gradients_match_finite_differences() {
    let names = ["ff_norm", "ff_proj", "ff_out", "expert_gate"];
    check_block_step(fused_cfg(BlockKind::Versatile, Paths::Both), &names, false, 3e-3);
}

#[test]
fn fused_versatile_width_block_gradients_match_finite_differences() {
    let names = ["attn_norm", "ff_norm", "ff_proj", "ff_out", "gate"];
    let cfg = fused_cfg(BlockKind::Versatile, Paths::Width);
    check_block_step(Config { shared_expert: Some(false), ..cfg }, &names, true, 3e-3);
}

#[test]
fn fused_versatile_width_block_with_shared_expert_gradients_match_finite_differences() {
    let names = ["attn_norm", "ff_norm", "ff_proj", "ff_out", "gate"];
    check_block_step(fused_cfg(BlockKind::Versatile, Paths::Width), &names, true, 3e-3);
}

#[test]
fn fused_moe_block_gradients_match_finite_differences() {
    let names = ["attn_norm", "ff_norm", "ff_proj", "ff_out", "gate"];
    check_block_step(fused_cfg(BlockKind::Moe, Paths::Both), &names, true, 3e-3);
}

#[test]
fn moe_block_gradients_match_finite_differences() {
    let names = ["attn_norm", "att_proj", "attn_out", "ff_norm", "ff_proj", "ff_out", "gate"];
    check_block(tiny(BlockKind::Moe, Paths::Both), &names, true);
}
