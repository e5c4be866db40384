#!/usr/bin/env python3
"""PyTorch CPU throughput on the configs `vffn bench train` / `vffn bench forward` measure.

Run by hand (not in CI, not in the cargo workspace), e.g.

    /work/venv-torch/bin/python benches/compare/torch_bench.py --preset tiny --block versatile \
        --mode train --threads 2 --steps 5 --warmup 2 --json

Prints one JSON line: tokens_per_s, step_ms, threads, block, preset, mode, torch_version,
peak_rss_mb (+ a few descriptive fields). The model is vffn_torch's (crates/vffn-torch: same
parameter names, shapes, RMSNorm/RoPE/SwiGLU/top-k routing code), run in float32 with:

- experts (moe) and virtual experts (versatile width path) dispatched sparsely: a Python loop
  over experts, gather of the routed tokens, index_add of the gated outputs (as HF Mixtral);
  `--impl reference` runs vffn_torch's VffnModel itself instead (training-mode graph: the width
  path as the whole FFN with per-expert gates, moe experts gathered), to show what that costs;
- attention through F.scaled_dot_product_attention(is_causal=True), RoPE tables built once;
- train = one full step: training forward (all D loops and the width path for every token, hard
  Gumbel-softmax at τ = temperature_start = 5), backward, clip_grad_norm_(1.0), AdamW (lr 1e-3,
  betas (0.9, 0.95), eps 1e-8, weight decay 0.1 on matrices only); median of --steps steps;
- forward = inference forward (logits, no loss) of the fresh model under torch.no_grad().
  `--infer paper` (default): argmax depth, every token runs the batch's deepest chosen loop
  count (x_ℓ kept per loop, each token takes its own), width path for every token, then
  (1−λ)·out_d + λ·out_w. `--infer early-exit`: vffn's algorithm (each token runs exactly its
  loops, running set compacted after each loop; width path only for tokens with λ > 0).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import reference_model as ref  # noqa: E402  (the fixture's Config and init; adds vffn_torch)
import vffn_torch  # noqa: E402
from vffn_torch import model as vm  # noqa: E402

# The reference computes in float64 (fixtures); the benchmark runs float32 like vffn. Its
# functions read the module global at call time, so this switches them all.
ref.DTYPE = torch.float32

PRESETS = {
    # vffn crates/model/src/config.rs: Config::tiny / Config::small
    "tiny": dict(d_model=128, n_heads=4, n_layers=4, hidden=512, seq_len=128, batch_size=16),
    "small": dict(d_model=256, n_heads=8, n_layers=6, hidden=1024, seq_len=256, batch_size=16),
}
COMMON = dict(vocab_size=256, n_experts=8, top_k=2, max_depth=4, rope_theta=10000.0,
              norm_eps=1e-6, balance_loss_coef=1e-5)
TEMPERATURE = 5.0  # temperature_start: the depth router's Gumbel-softmax τ at step 0
INIT_STD = 0.02


def make_config(preset: str, block: str):
    p = PRESETS[preset]
    cfg = vffn_torch.Config(block=block, **COMMON, **p)
    return cfg, p["seq_len"], p["batch_size"]


def init_params(cfg, seed: int) -> dict:
    # reference_model's init (names, shapes, truncated normal) at vffn's std; norm gains = 1.
    gen = torch.Generator().manual_seed(seed)
    params = ref.init_params(cfg, INIT_STD, gen)
    for name, t in params.items():
        if t.dim() == 1:
            t.fill_(1.0)
    return {k: v.float().contiguous().requires_grad_() for k, v in params.items()}


# ---------------------------------------------------------------------------------------------
# Fast float32 model (reference building blocks, sparse expert dispatch, SDPA attention)
# ---------------------------------------------------------------------------------------------

def apply_rope(x, cos, sin):
    # x [B, T, H, hd], cos/sin [T, hd]
    return x * cos[None, :, None, :] + vm.rotate_half(x) * sin[None, :, None, :]


def ffn(cfg, p, prefix, x):
    # x [N, d] -> FFN(ff_norm x) [N, d]
    z = vm.rms_norm(x, p[f"{prefix}.ff_norm.weight"], cfg.norm_eps)
    return vm.swiglu(z, p[f"{prefix}.ff_proj.weight"], p[f"{prefix}.ff_out.weight"])


def top_k_routing(cfg, logits):
    # logits [N, E] -> gates [N, E], chosen [N, k], balance loss E·Σ_e f_e·P_e
    gates, chosen = vm.top_k_routing(logits, cfg.top_k)
    term = vm.balance_term(logits, chosen)
    return gates, chosen, term.loss(term.counts)


def attention(cfg, p, prefix, x, cos, sin):
    bsz, seq, d = x.shape
    hd = cfg.head_dim
    qkv = vm.rms_norm(x, p[f"{prefix}.attn_norm.weight"], cfg.norm_eps) @ p[f"{prefix}.att_proj.weight"].T
    q, k, v = (t.reshape(bsz, seq, cfg.n_heads, hd) for t in qkv.split(d, dim=-1))
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                         is_causal=True)
    return out.transpose(1, 2).reshape(bsz, seq, d) @ p[f"{prefix}.attn_out.weight"].T


def routed(z, gates, chosen, n_experts, expert_fn):
    # Σ_k g_k · FFN_{e_k}(z): per expert gather its tokens, run it, index_add the gated rows.
    out = torch.zeros_like(z)
    mask = F.one_hot(chosen, n_experts).permute(2, 1, 0)  # [E, k, N]
    for e in range(n_experts):
        _, tok = torch.where(mask[e])
        if tok.numel() == 0:
            continue
        y = expert_fn(e, z[tok]) * gates[tok, e, None]
        out.index_add_(0, tok, y)
    return out


def versatile_expert(cfg, proj, outw):
    h, s = cfg.hidden, cfg.expert_width

    def run(e, z_e):
        e_proj = torch.cat((proj[e * s:(e + 1) * s], proj[h + e * s:h + (e + 1) * s]))
        return vm.swiglu(z_e, e_proj, outw[:, e * s:(e + 1) * s])
    return run


def ffn_part(cfg, p, prefix, x, train: bool, infer: str):
    # x [N, d] -> (out [N, d], balance or None, mean depth or None)
    if cfg.block == "dense":
        return x + ffn(cfg, p, prefix, x), None, None
    if cfg.block == "kloop":
        for _ in range(cfg.max_depth):
            x = x + ffn(cfg, p, prefix, x)
        return x, None, None
    if cfg.block == "moe":
        z = vm.rms_norm(x, p[f"{prefix}.ff_norm.weight"], cfg.norm_eps)
        shared = vm.swiglu(z, p[f"{prefix}.ff_proj.weight"], p[f"{prefix}.ff_out.weight"])
        gates, chosen, balance = top_k_routing(cfg, z @ p[f"{prefix}.expert_gate.weight"].T)
        r = routed(z, gates, chosen, cfg.n_experts, lambda e, z_e: vm.swiglu(
            z_e, p[f"{prefix}.experts.{e}.ff_proj.weight"], p[f"{prefix}.experts.{e}.ff_out.weight"]))
        return x + shared + r, balance, None
    assert cfg.block == "versatile"
    D = cfg.max_depth
    proj, outw = p[f"{prefix}.ff_proj.weight"], p[f"{prefix}.ff_out.weight"]
    expert = versatile_expert(cfg, proj, outw)
    depth_logits = x @ p[f"{prefix}.depth_predictor.weight"].T  # [N, D]
    gates, chosen, balance = top_k_routing(cfg, x @ p[f"{prefix}.expert_gate.weight"].T)
    if train:
        z = vm.rms_norm(x, p[f"{prefix}.ff_norm.weight"], cfg.norm_eps)
        width = x + routed(z, gates, chosen, cfg.n_experts, expert)
        probs = F.gumbel_softmax(depth_logits, tau=TEMPERATURE, hard=True)  # straight-through
        states, x_l = [], x
        for _ in range(D):
            x_l = x_l + ffn(cfg, p, prefix, x_l)
            states.append(x_l)
        depth_out = (torch.stack(states, dim=1) * probs[:, :, None]).sum(dim=1)
        loops = torch.arange(1, D + 1, dtype=x.dtype)
        lam = (D - (probs * loops).sum(dim=-1, keepdim=True)) / D
        return (1 - lam) * depth_out + lam * width, balance, None
    depth = depth_logits.argmax(dim=-1) + 1  # [N], 1..D
    lam = ((D - depth).to(x.dtype) / D)[:, None]
    n = x.shape[0]
    if infer == "paper":
        deepest = int(depth.max())
        states, x_l = [], x
        for _ in range(deepest):
            x_l = x_l + ffn(cfg, p, prefix, x_l)
            states.append(x_l)
        depth_out = torch.stack(states, dim=0)[depth - 1, torch.arange(n)]
        z = vm.rms_norm(x, p[f"{prefix}.ff_norm.weight"], cfg.norm_eps)
        width = x + routed(z, gates, chosen, cfg.n_experts, expert)
        out = (1 - lam) * depth_out + lam * width
    else:  # early-exit, as vffn's Model::infer
        out = torch.empty_like(x)
        running = torch.arange(n)
        x_run = x
        for loop in range(1, D + 1):
            if running.numel() == 0:
                break
            x_run = x_run + ffn(cfg, p, prefix, x_run)
            done = depth[running] <= loop
            out[running[done]] = x_run[done]
            keep = ~done
            running, x_run = running[keep], x_run[keep]
        rows = torch.nonzero(depth < D).squeeze(-1)
        if rows.numel() > 0:
            x_w = x[rows]
            z_w = vm.rms_norm(x_w, p[f"{prefix}.ff_norm.weight"], cfg.norm_eps)
            width = x_w + routed(z_w, gates[rows], chosen[rows], cfg.n_experts, expert)
            lam_w = lam[rows]
            out[rows] = (1 - lam_w) * out[rows] + lam_w * width
    return out, None, depth.float().mean().item()


def forward(cfg, p, inputs, cos, sin, train: bool, infer: str = "paper"):
    bsz, seq = inputs.shape
    x = p["transformer.wte.weight"][inputs]
    balance_total = None
    depths = []
    for i in range(cfg.n_layers):
        prefix = f"transformer.blocks.{i}"
        x = x + attention(cfg, p, prefix, x, cos, sin)
        flat, balance, mean_depth = ffn_part(cfg, p, prefix, x.reshape(bsz * seq, -1), train, infer)
        x = flat.reshape(bsz, seq, -1)
        if balance is not None:
            balance_total = balance if balance_total is None else balance_total + balance
        if mean_depth is not None:
            depths.append(mean_depth)
    x = vm.rms_norm(x, p["transformer.ln_f.weight"], cfg.norm_eps)
    logits = x.reshape(bsz * seq, -1) @ p["transformer.ff_out.weight"].T
    return logits, balance_total, depths


# ---------------------------------------------------------------------------------------------
# Benchmark
# ---------------------------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    ap.add_argument("--block", choices=["dense", "kloop", "moe", "versatile"], default="versatile")
    ap.add_argument("--mode", choices=["train", "forward"], default="train")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--steps", type=int, default=5, help="timed steps / forwards (median)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps / forwards first")
    ap.add_argument("--impl", choices=["sparse", "reference"], default="sparse")
    ap.add_argument("--infer", choices=["paper", "early-exit"], default="paper")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.steps < 1 or args.threads < 1 or args.warmup < 0:
        ap.error("--steps and --threads must be at least 1, --warmup at least 0")

    torch.set_num_interop_threads(1)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    cfg, seq, bsz = make_config(args.preset, args.block)
    params = init_params(cfg, args.seed)
    if args.impl == "reference":
        model = vm.VffnModel(cfg, temperature=TEMPERATURE).float()
        model.load_state_dict({k: v.detach() for k, v in params.items()})
        params = dict(model.named_parameters())
    cos, sin = vm.rope_cos_sin(seq, cfg.head_dim, cfg.rope_theta, torch.float32, "cpu")
    gen = torch.Generator().manual_seed(args.seed + 1)
    batches = [torch.randint(0, cfg.vocab_size, (bsz, seq + 1), generator=gen) for _ in range(4)]

    mean_depths = []
    if args.mode == "train":
        decay = [t for t in params.values() if t.dim() == 2]
        no_decay = [t for t in params.values() if t.dim() != 2]
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                                 {"params": no_decay, "weight_decay": 0.0}],
                                lr=1e-3, betas=(0.9, 0.95), eps=1e-8)
        plist = list(params.values())

        def step(i):
            tokens = batches[i % len(batches)]
            if args.impl == "reference":
                out = model(tokens[:, :-1], infer=False, temperature=TEMPERATURE)
                loss = model.loss(out, tokens[:, 1:])[0]
            else:
                logits, balance, _ = forward(cfg, params, tokens[:, :-1], cos, sin, train=True)
                loss = F.cross_entropy(logits, tokens[:, 1:].reshape(-1))
                if balance is not None:
                    loss = loss + cfg.balance_loss_coef * balance
            opt.zero_grad(set_to_none=True)
            loss.backward()
            norm = torch.nn.utils.clip_grad_norm_(plist, 1.0)
            opt.step()
            if not torch.isfinite(norm):
                raise SystemExit(f"non-finite gradient norm at step {i}")
    else:

        def step(i):
            tokens = batches[i % len(batches)]
            with torch.no_grad():
                if args.impl == "reference":
                    # training-mode graph without noise: all loops, the width path for every token
                    logits = model(tokens[:, :-1], infer=False, temperature=TEMPERATURE).logits
                else:
                    logits, _, depths = forward(cfg, params, tokens[:, :-1], cos, sin,
                                                train=False, infer=args.infer)
                    mean_depths.extend(depths)
            if not torch.isfinite(logits).all():
                raise SystemExit("non-finite logits")

    for i in range(args.warmup):
        step(i)
    times = []
    for i in range(args.steps):
        t0 = time.perf_counter()
        step(args.warmup + i)
        times.append(time.perf_counter() - t0)
    times.sort()
    ms = times[len(times) // 2] * 1e3  # upper median, as vffn's
    result = {
        "tokens_per_s": bsz * seq / (ms / 1e3),
        "step_ms": ms,
        "threads": torch.get_num_threads(),
        "block": args.block,
        "preset": args.preset,
        "mode": args.mode,
        "torch_version": torch.__version__,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        "batch_tokens": bsz * seq,
        "steps": args.steps,
        "impl": args.impl,
    }
    if args.mode == "forward" and args.impl == "sparse":
        result["infer"] = args.infer
        if mean_depths:
            result["mean_depth"] = statistics.fmean(mean_depths)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"torch {args.mode} {args.preset}/{args.block} ({args.impl}), {result['threads']} threads, "
              f"{bsz}x{seq} tokens, median of {args.steps}")
        print(f"  step        {ms:10.1f} ms")
        print(f"  throughput  {result['tokens_per_s']:10.0f} tokens/s")
        print(f"  peak RSS    {result['peak_rss_mb']:10.0f} MB")


if __name__ == "__main__":
    main()
