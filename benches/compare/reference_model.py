#!/usr/bin/env python3
"""Fixture writer: the PyTorch model of the repository (crates/vffn-torch, package `vffn_torch`,
written from issue 4 and the VersatileFFN paper, Nie et al. 2025, arXiv 2512.14531) run on
fixed weights and tokens for every block kind; the "exact" answer the Rust model is tested
against in tests/tests/fixtures_pytorch.rs (as llm.c's test_gpt2 does). Run by hand, not in CI:

    pip install -e crates/vffn-torch
    python benches/compare/reference_model.py            # writes tests/fixtures/
    python benches/compare/reference_model.py --out DIR

Everything is computed in float64 and cast to float32 when saved, except RoPE's cos/sin, which
are formed in float32 exactly as PyTorch/HF Llama do (inv_freq, then pos * inv_freq, then cos/sin)
and then widened, so the Rust f32 kernel sees the same angles.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import torch
from safetensors import safe_open

try:
    import vffn_torch
except ImportError:  # not installed: use the package from the source tree
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "crates", "vffn-torch"))
    import vffn_torch
from vffn_torch.checkpoint import safetensors_bytes

DTYPE = torch.float64


# The fixtures' architecture: these keys and the temperature form each fixture's `config`
# metadata, which tests/tests/fixtures_pytorch.rs reads.
FIXTURE_KEYS = ("vocab_size", "d_model", "n_heads", "n_layers", "hidden", "block", "n_experts",
                "top_k", "max_depth", "rope_theta", "norm_eps", "balance_loss_coef")
FIXTURE_TEMPERATURE = 1.0


def fixture_config(block: str) -> vffn_torch.Config:
    return vffn_torch.Config(d_model=16, n_heads=2, n_layers=2, hidden=32, block=block,
                             n_experts=4, top_k=2, max_depth=3, balance_loss_coef=0.01)


def init_params(cfg: vffn_torch.Config, std: float, gen: torch.Generator) -> dict:
    d, h, s, n_exp = cfg.d_model, cfg.hidden, cfg.expert_width, cfg.n_experts

    def normal(*shape):
        t = torch.empty(*shape, dtype=DTYPE)
        torch.nn.init.trunc_normal_(t, mean=0.0, std=std, a=-3 * std, b=3 * std, generator=gen)
        return t

    def norm_weight():
        # Not all ones, so a mix-up between norm weights shows in the outputs and gradients.
        return 1.0 + 0.1 * torch.randn(d, dtype=DTYPE, generator=gen)

    p = {"transformer.wte.weight": normal(cfg.vocab_size, d)}
    for i in range(cfg.n_layers):
        pre = f"transformer.blocks.{i}"
        p[f"{pre}.attn_norm.weight"] = norm_weight()
        p[f"{pre}.ff_norm.weight"] = norm_weight()
        p[f"{pre}.att_proj.weight"] = normal(3 * d, d)
        p[f"{pre}.attn_out.weight"] = normal(d, d)
        p[f"{pre}.ff_proj.weight"] = normal(2 * h, d)
        p[f"{pre}.ff_out.weight"] = normal(d, h)
        if cfg.block in ("moe", "versatile"):
            p[f"{pre}.expert_gate.weight"] = normal(n_exp, d)
        if cfg.block == "moe":
            for e in range(n_exp):
                p[f"{pre}.experts.{e}.ff_proj.weight"] = normal(2 * s, d)
                p[f"{pre}.experts.{e}.ff_out.weight"] = normal(d, s)
        if cfg.block == "versatile":
            p[f"{pre}.depth_predictor.weight"] = normal(cfg.max_depth, d)
    p["transformer.ln_f.weight"] = norm_weight()
    p["transformer.ff_out.weight"] = normal(cfg.vocab_size, d)
    return p


# Smallest logit gap allowed at a routing or depth decision (f32 logits carry ~1e-7 error).
MIN_DECISION_GAP = 1e-4

TEXT = b"VersatileFFN: width and depth from one set of weights.\n"


def make_fixture(block: str, seed: int, std: float, batch: int = 2, seq: int = 12):
    cfg = fixture_config(block)
    gen = torch.Generator().manual_seed(seed)
    # Round weights to f32 first: the stored f32 weights are then exactly the forward's inputs.
    model = vffn_torch.VffnModel(cfg, temperature=FIXTURE_TEMPERATURE).to(DTYPE)
    model.load_state_dict({k: v.float().to(DTYPE) for k, v in init_params(cfg, std, gen).items()})
    params = dict(model.named_parameters())
    tokens = torch.tensor(
        [list(TEXT[b * 7 : b * 7 + seq + 1]) for b in range(batch)], dtype=torch.int64
    )
    out = model(tokens[:, :-1], infer=False)
    loss, ce, _ = model.loss(out, tokens[:, 1:])
    loss.backward()
    logits = out.logits.reshape(-1, cfg.vocab_size)
    records = [{} for _ in range(cfg.n_layers)]
    for i in range(len(out.experts)):
        records[i]["experts"] = out.experts[i]
        records[i]["router_logits"] = out.router_logits[i]
    for i in range(len(out.depth)):
        records[i]["depth"] = out.depth[i]
        records[i]["depth_logits"] = out.depth_logits[i]

    tensors = {name: t.detach().float().contiguous() for name, t in params.items()}
    for name, t in params.items():
        tensors[f"{name}.grad"] = t.grad.float().contiguous()
    tensors["input_tokens"] = tokens.float()
    tensors["logits"] = logits.detach().float().contiguous()
    tensors["loss"] = loss.detach().float().reshape(1)
    tensors["ce_loss"] = ce.detach().float().reshape(1)
    for i, rec in enumerate(records):
        if "experts" in rec:
            experts = rec["experts"]
            # Routing must differ across tokens or the fixture tests nothing about it.
            assert len({tuple(sorted(r)) for r in experts.tolist()}) > 1, f"{block} layer {i}"
            tensors[f"blocks.{i}.experts"] = experts.float().contiguous()
        if "depth" in rec:
            depth = rec["depth"]
            assert len(set(depth.tolist())) > 1, f"{block} layer {i}: one depth for all tokens"
            tensors[f"blocks.{i}.depth"] = depth.float().contiguous()
    for i, rec in enumerate(records):
        # Decisions must not sit near a tie, or f32 rounding in the Rust model could flip them.
        if "router_logits" in rec:
            ranked = rec["router_logits"].sort(dim=-1, descending=True).values
            gap = (ranked[:, cfg.top_k - 1] - ranked[:, cfg.top_k]).min().item()
            assert gap > MIN_DECISION_GAP, f"{block} layer {i}: top-k gap {gap:.2e}"
            rec["top_k_gap"] = gap
        if "depth_logits" in rec:
            ranked = rec["depth_logits"].sort(dim=-1, descending=True).values
            gap = (ranked[:, 0] - ranked[:, 1]).min().item()
            assert gap > MIN_DECISION_GAP, f"{block} layer {i}: depth argmax gap {gap:.2e}"
            rec["depth_gap"] = gap
    for name, t in params.items():
        assert t.grad is not None and t.grad.abs().max() > 0, f"{block}: zero grad for {name}"
    meta_cfg = {k: getattr(cfg, k) for k in FIXTURE_KEYS} | {"temperature": FIXTURE_TEMPERATURE}
    metadata = {"config": json.dumps(meta_cfg, sort_keys=True), "temperature": repr(FIXTURE_TEMPERATURE)}
    return tensors, metadata, records, loss.item(), ce.item()


def save_safetensors(tensors: dict, path: str, metadata: dict) -> None:
    """Writes the safetensors file with the package's writer (vffn's canonical header and
    content checksums; reruns are byte-identical), then reads it back with the reference reader."""
    for t in tensors.values():
        assert t.dtype == torch.float32 and t.is_contiguous()
    with open(path, "wb") as f:
        f.write(safetensors_bytes(tensors, metadata))
    # Read it back with the reference reader.
    with safe_open(path, "pt") as f:
        written = dict(f.metadata())
        assert written.pop("checksums") and written == metadata  # plus vffn's content checksums
        for name, t in tensors.items():
            assert torch.equal(f.get_tensor(name), t), name


def main():
    # One thread and deterministic kernels: reruns then write byte-identical fixtures.
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    here = os.path.dirname(os.path.abspath(__file__))
    parser.add_argument("--out", default=os.path.join(here, "..", "..", "tests", "fixtures"))
    parser.add_argument("--std", type=float, default=0.2, help="init std (truncated at ±3σ)")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    total = 0
    for seed, block in enumerate(["dense", "kloop", "moe", "versatile"]):
        tensors, metadata, records, loss, ce = make_fixture(block, 1000 + seed, args.std)
        path = os.path.join(args.out, f"{block}.safetensors")
        save_safetensors(tensors, path, metadata)
        size = os.path.getsize(path)
        total += size
        routing = ""
        for i, rec in enumerate(records):
            if "depth_gap" in rec:
                routing += f" L{i} min depth gap {rec['depth_gap']:.1e}"
            if "top_k_gap" in rec:
                routing += f" L{i} min top-k gap {rec['top_k_gap']:.1e}"
            if "depth" in rec:
                routing += f" L{i} depths {torch.bincount(rec['depth'], minlength=4)[1:].tolist()}"
            if "experts" in rec:
                routing += f" L{i} expert slots {torch.bincount(rec['experts'].reshape(-1), minlength=4).tolist()}"
        print(f"{path}: loss {loss:.6f} (ce {ce:.6f}), {len(tensors)} tensors, {size} B{routing}")
    print(f"total {total} B")


if __name__ == "__main__":
    main()
