#!/usr/bin/env python3
"""PyTorch reference of the vffn transformer (dense, kloop, moe, versatile blocks) and fixture writer.

Written from issue 4 and the VersatileFFN paper (Nie et al. 2025, arXiv 2512.14531); it is the
"exact" answer the Rust model is tested against (as llm.c's test_gpt2 does). Run by hand, not in CI:

    /work/venv-torch/bin/python benches/compare/reference_model.py            # writes tests/fixtures/
    /work/venv-torch/bin/python benches/compare/reference_model.py --out DIR

Everything is computed in float64 and cast to float32 when saved, except RoPE's cos/sin, which
are formed in float32 exactly as PyTorch/HF Llama do (inv_freq, then pos * inv_freq, then cos/sin)
and then widened, so the Rust f32 kernel sees the same angles.
"""
from __future__ import annotations

import argparse
import json
import math
import os
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from safetensors import safe_open

DTYPE = torch.float64


@dataclass
class Config:
    vocab_size: int = 256
    d_model: int = 16
    n_heads: int = 2
    n_layers: int = 2
    hidden: int = 32
    block: str = "dense"  # dense | kloop | moe | versatile
    n_experts: int = 4
    top_k: int = 2
    max_depth: int = 3
    rope_theta: float = 10000.0
    norm_eps: float = 1e-6
    balance_loss_coef: float = 0.01
    temperature: float = 1.0

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def expert_hidden(self) -> int:
        return self.hidden // self.n_experts


# ---------------------------------------------------------------------------------------------
# Building blocks
# ---------------------------------------------------------------------------------------------

def rms_norm(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    # x [..., d] -> x / sqrt(mean(x^2) + eps) * w
    return x / torch.sqrt(x.pow(2).mean(dim=-1, keepdim=True) + eps) * w


def rope_cos_sin(seq: int, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    # f32 exactly as HF Llama: inv_freq = 1/theta^(arange(0,hd,2)/hd); angle = pos*inv_freq (f32)
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    positions = torch.arange(seq, dtype=torch.int64).float()
    freqs = torch.outer(positions, inv_freq)  # [T, hd/2] f32
    emb = torch.cat((freqs, freqs), dim=-1)  # rotate-half layout: same angle in both halves
    return emb.cos().to(DTYPE), emb.sin().to(DTYPE)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    # x [B, T, H, hd]; x1' = x1 cos - x2 sin, x2' = x2 cos + x1 sin
    return x * cos[None, :, None, :] + rotate_half(x) * sin[None, :, None, :]


def attention(cfg: Config, p: dict, prefix: str, x: torch.Tensor) -> torch.Tensor:
    # x [B, T, d] -> attn_out(causal_softmax(rope(q) rope(k)^T / sqrt(hd)) v) [B, T, d]
    bsz, seq, d = x.shape
    hd = cfg.head_dim
    qkv = rms_norm(x, p[f"{prefix}.attn_norm.weight"], cfg.norm_eps) @ p[f"{prefix}.att_proj.weight"].T
    q, k, v = qkv.split(d, dim=-1)  # rows of att_proj: q | k | v
    q, k, v = (t.reshape(bsz, seq, cfg.n_heads, hd) for t in (q, k, v))  # head j = cols j*hd..
    cos, sin = rope_cos_sin(seq, hd, cfg.rope_theta)
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    scores = torch.einsum("bihp,bjhp->bhij", q, k) / math.sqrt(hd)
    mask = torch.ones(seq, seq, dtype=torch.bool).tril()
    scores = scores.masked_fill(~mask, float("-inf"))
    probs = scores.softmax(dim=-1)
    out = torch.einsum("bhij,bjhp->bihp", probs, v).reshape(bsz, seq, d)
    return out @ p[f"{prefix}.attn_out.weight"].T


def swiglu(z: torch.Tensor, proj: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    # z [N, d], proj [2w, d] (value rows 0..w, gate rows w..2w), out [d, w] -> [N, d]
    w = proj.shape[0] // 2
    u = z @ proj.T
    return (u[:, :w] * F.silu(u[:, w:])) @ out.T


def ffn(cfg: Config, p: dict, prefix: str, x: torch.Tensor) -> torch.Tensor:
    # x [N, d] -> FFN(ff_norm x) [N, d]
    z = rms_norm(x, p[f"{prefix}.ff_norm.weight"], cfg.norm_eps)
    return swiglu(z, p[f"{prefix}.ff_proj.weight"], p[f"{prefix}.ff_out.weight"])


def top_k_routing(cfg: Config, logits: torch.Tensor):
    # logits [N, E] -> gates [N, E] (softmax over the k selected, 0 elsewhere), chosen [N, k],
    # balance loss E * sum_e f_e P_e
    n_tok, n_exp = logits.shape
    top_logits, chosen = logits.topk(cfg.top_k, dim=-1)  # sorted by logit, descending
    gates = torch.zeros_like(logits).scatter(1, chosen, top_logits.softmax(dim=-1))
    counts = torch.zeros(n_exp, dtype=DTYPE).scatter_add(
        0, chosen.reshape(-1), torch.ones(chosen.numel(), dtype=DTYPE)
    )
    frac_slots = counts / (n_tok * cfg.top_k)  # f_e, no gradient
    mean_prob = logits.softmax(dim=-1).mean(dim=0)  # P_e
    balance = n_exp * (frac_slots * mean_prob).sum()
    return gates, chosen, balance


def ffn_part(cfg: Config, p: dict, prefix: str, x: torch.Tensor, record: dict):
    # x [N, d] post-attention residual -> (block output [N, d], balance loss or None)
    if cfg.block == "dense":
        return x + ffn(cfg, p, prefix, x), None
    if cfg.block == "kloop":
        for _ in range(cfg.max_depth):
            x = x + ffn(cfg, p, prefix, x)
        return x, None
    if cfg.block == "moe":
        z = rms_norm(x, p[f"{prefix}.ff_norm.weight"], cfg.norm_eps)
        shared = swiglu(z, p[f"{prefix}.ff_proj.weight"], p[f"{prefix}.ff_out.weight"])
        router_logits = z @ p[f"{prefix}.expert_gate.weight"].T
        gates, chosen, balance = top_k_routing(cfg, router_logits)
        record["router_logits"] = router_logits.detach()
        routed = sum(
            gates[:, e : e + 1]
            * swiglu(z, p[f"{prefix}.experts.{e}.ff_proj.weight"], p[f"{prefix}.experts.{e}.ff_out.weight"])
            for e in range(cfg.n_experts)
        )
        record["experts"] = chosen
        return x + shared + routed, balance
    if cfg.block == "versatile":
        h, s = cfg.hidden, cfg.expert_hidden
        proj, out = p[f"{prefix}.ff_proj.weight"], p[f"{prefix}.ff_out.weight"]
        # Width: virtual experts are slices of the one FFN; the router reads the raw residual x.
        router_logits = x @ p[f"{prefix}.expert_gate.weight"].T
        gates, chosen, balance = top_k_routing(cfg, router_logits)
        record["router_logits"] = router_logits.detach()
        z = rms_norm(x, p[f"{prefix}.ff_norm.weight"], cfg.norm_eps)
        width = x.clone()
        for e in range(cfg.n_experts):
            e_proj = torch.cat((proj[e * s : (e + 1) * s], proj[h + e * s : h + (e + 1) * s]))
            width = width + gates[:, e : e + 1] * swiglu(z, e_proj, out[:, e * s : (e + 1) * s])
        # Depth: x_l = x_{l-1} + FFN(ff_norm x_{l-1}); hard Gumbel-softmax (noise 0) over l = 1..D.
        logits = x @ p[f"{prefix}.depth_predictor.weight"].T  # [N, D]
        soft = (logits / cfg.temperature).softmax(dim=-1)
        index = soft.argmax(dim=-1)
        hard = F.one_hot(index, cfg.max_depth).to(DTYPE)
        probs = hard - soft.detach() + soft  # straight-through
        depth_out = torch.zeros_like(x)
        x_l = x
        for ell in range(1, cfg.max_depth + 1):
            x_l = x_l + ffn(cfg, p, prefix, x_l)
            depth_out = depth_out + probs[:, ell - 1 : ell] * x_l
        loops = torch.arange(1, cfg.max_depth + 1, dtype=DTYPE)
        lam = (cfg.max_depth - (probs * loops).sum(dim=-1, keepdim=True)) / cfg.max_depth
        record["experts"] = chosen
        record["depth"] = index + 1
        record["depth_logits"] = logits.detach()
        return (1 - lam) * depth_out + lam * width, balance
    raise ValueError(f"unknown block kind {cfg.block}")


def forward(cfg: Config, p: dict, tokens: torch.Tensor):
    # tokens [B, T+1] -> logits [B*T, V], total loss, ce loss, per-layer routing records
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    bsz, seq = inputs.shape
    x = p["transformer.wte.weight"][inputs]  # [B, T, d]
    balance_total = torch.zeros((), dtype=DTYPE)
    records = []
    for i in range(cfg.n_layers):
        prefix = f"transformer.blocks.{i}"
        x = x + attention(cfg, p, prefix, x)
        record: dict = {}
        flat, balance = ffn_part(cfg, p, prefix, x.reshape(bsz * seq, -1), record)
        x = flat.reshape(bsz, seq, -1)
        if balance is not None:
            balance_total = balance_total + balance
        records.append(record)
    x = rms_norm(x, p["transformer.ln_f.weight"], cfg.norm_eps)
    logits = x.reshape(bsz * seq, -1) @ p["transformer.ff_out.weight"].T
    ce = F.cross_entropy(logits, targets.reshape(-1))  # mean over B*T positions
    return logits, ce + cfg.balance_loss_coef * balance_total, ce, records


# ---------------------------------------------------------------------------------------------
# Parameters and fixtures
# ---------------------------------------------------------------------------------------------

def init_params(cfg: Config, std: float, gen: torch.Generator) -> dict:
    d, h, s, n_exp = cfg.d_model, cfg.hidden, cfg.expert_hidden, cfg.n_experts

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
    cfg = Config(block=block)
    gen = torch.Generator().manual_seed(seed)
    # Round weights to f32 first: the stored f32 weights are then exactly the forward's inputs.
    params = {
        k: v.float().to(DTYPE).requires_grad_() for k, v in init_params(cfg, std, gen).items()
    }
    tokens = torch.tensor(
        [list(TEXT[b * 7 : b * 7 + seq + 1]) for b in range(batch)], dtype=torch.int64
    )
    logits, loss, ce, records = forward(cfg, params, tokens)
    loss.backward()

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
    meta_cfg = {k: v for k, v in asdict(cfg).items()}
    metadata = {"config": json.dumps(meta_cfg, sort_keys=True), "temperature": repr(cfg.temperature)}
    return tensors, metadata, records, loss.item(), ce.item()


def save_safetensors(tensors: dict, path: str, metadata: dict) -> None:
    """Writes the safetensors format with a sorted header (safetensors' own writer orders
    `__metadata__` through a hash map, so reruns would not be byte-identical)."""
    header: dict = {"__metadata__": dict(sorted(metadata.items()))}
    blobs, offset = [], 0
    for name in sorted(tensors):
        t = tensors[name]
        assert t.dtype == torch.float32 and t.is_contiguous()
        blob = t.numpy().astype("<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(t.shape), "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)  # the data section starts 8-byte aligned
    with open(path, "wb") as f:
        f.write(len(head).to_bytes(8, "little"))
        f.write(head)
        for blob in blobs:
            f.write(blob)
    # Read it back with the reference reader.
    with safe_open(path, "pt") as f:
        assert f.metadata() == metadata
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
