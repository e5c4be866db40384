"""The vffn transformer as torch.nn modules, with exactly vffn's math
(crates/model/src/{model.rs,blocks.rs,versatile.rs}).

Parameter names are the checkpoint names (OLMo's): `model.state_dict()` keys are exactly the
tensors of `ckpt/model.safetensors`.

- Block: x + attn(attn_norm x) (causal, RoPE on q and k), then the FFN part of the block kind:
  dense x + FFN(ff_norm x); kloop that step max_depth times; moe x + FFN(z) + Σ_k g_k·FFN_k(z)
  with z = ff_norm x and the router reading z; versatile: width path (virtual experts = slices
  of the one FFN, router reading x; width-only runs keep the whole FFN beside them by default,
  `shared_expert`) and depth path (the FFN looped, a hard Gumbel-softmax over the loop count),
  fused by λ = 1 − Σ_ℓ (ℓ/D)·p_ℓ (gated) or 1/2 (average).
- Training mode computes every loop for every token; the depth choice is straight-through
  (forward the one-hot, gradient of the soft sample at temperature τ); the pick is
  argmax(logits + g), or argmax(logits + τ·g) with `depth_noise = "scaled"`.
- Inference mode (`infer=True`): argmax loop count per token, each token runs exactly its loops
  (per-token early exit, the running set compacted after each loop), the width path only for
  tokens with λ > 0.
- Loss: mean next-byte CE + balance_loss_coef · Σ_layers E·Σ_e f_e·P_e (f_e: share of the top-k
  slots, no gradient, of the whole batch; P_e: mean router softmax).

Half dtypes: parameters may be bf16/f16; norms, softmaxes and the loss are computed in f32.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .config import Config, f32

HALF = (torch.float16, torch.bfloat16)


def _wide(x: torch.Tensor) -> torch.Tensor:
    return x.float() if x.dtype in HALF else x


def const(value: float, dtype: torch.dtype) -> float:
    """A config number as the computation sees it: exact in float64 (the fixtures' reference
    math), vffn's f32 value otherwise."""
    return float(value) if dtype == torch.float64 else f32(value)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    # x [..., d] -> x / sqrt(mean(x²) + eps) · w
    xw = _wide(x)
    out = xw / torch.sqrt(xw.pow(2).mean(dim=-1, keepdim=True) + eps) * _wide(weight)
    return out.to(x.dtype)


def rope_cos_sin(seq: int, head_dim: int, theta: float, dtype, device):
    # angles in f32 as HF Llama (inv_freq, then pos·inv_freq), rotate-half layout -> [T, hd]
    inv_freq = 1.0 / (
        theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64, device=device).float() / head_dim)
    )
    positions = torch.arange(seq, dtype=torch.int64, device=device).float()
    freqs = torch.outer(positions, inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def swiglu(z: torch.Tensor, proj: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    # z [N, d], proj [2w, d] (value rows 0..w | gate rows w..2w), out [d, w] -> [N, d]
    w = proj.shape[0] // 2
    u = z @ proj.T
    return (u[:, :w] * F.silu(u[:, w:])) @ out.T


@dataclass
class BalanceTerm:
    """One router's balance loss before f_e is known (f_e may need the whole batch)."""

    mean_probs: torch.Tensor  # P_e [E], f32, on the graph
    counts: torch.Tensor  # top-k slots given to each expert [E], f64, no gradient

    def loss(self, counts: torch.Tensor) -> torch.Tensor:
        """Σ_e E·f_e·P_e with f_e from `counts` (the batch's, e.g. all-reduced over ranks)."""
        n_experts = counts.numel()
        shares = (n_experts * counts / counts.sum().clamp(min=1.0)).to(self.mean_probs.dtype)
        return (self.mean_probs * shares).sum()


@dataclass
class Output:
    logits: torch.Tensor  # [B, T, V]
    balance: list = field(default_factory=list)  # BalanceTerm per routed layer (training)
    depth: list = field(default_factory=list)  # per layer: loop count 1..D per token [B·T]
    experts: list = field(default_factory=list)  # per layer: chosen experts [B·T, k]
    router_logits: list = field(default_factory=list)  # per routed layer [B·T, E], detached
    depth_logits: list = field(default_factory=list)  # per depth-routed layer [B·T, D], detached


def depth_agreement(out: Output) -> torch.Tensor:
    """Per depth-routed layer of a training forward, vffn's DepthAgreement: [tokens, tokens
    whose pick equals the noise-free argmax (ties: lower index), Σ of the top-1 − top-2 logit
    margin (0 when D = 1)] as f64 [L, 3] on the CPU (sums, so ranks can add them)."""
    rows = []
    for depth, logits in zip(out.depth, out.depth_logits):
        logits = logits.detach().float().cpu()
        agree = (logits.argmax(dim=-1) + 1 == depth.cpu()).sum().item()
        margin = 0.0
        if logits.shape[-1] > 1:
            top = logits.topk(2, dim=-1).values.double()
            margin = (top[:, 0] - top[:, 1]).sum().item()
        rows.append([float(logits.shape[0]), float(agree), margin])
    return torch.tensor(rows, dtype=torch.float64).reshape(len(rows), 3)


def top_k_routing(logits: torch.Tensor, k: int):
    # logits [N, E] -> gates [N, E] (softmax over the k chosen, 0 elsewhere), chosen [N, k]
    top, chosen = logits.topk(k, dim=-1)  # slots by descending logit
    soft = torch.softmax(_wide(top), dim=-1).to(logits.dtype)
    return torch.zeros_like(logits).scatter(1, chosen, soft), chosen


def balance_term(logits: torch.Tensor, chosen: torch.Tensor) -> BalanceTerm:
    # logits [N, E], chosen [N, k] -> P_e and slot counts
    n_experts = logits.shape[-1]
    probs = torch.softmax(_wide(logits), dim=-1)
    counts = torch.bincount(chosen.reshape(-1), minlength=n_experts).to(torch.float64)
    return BalanceTerm(probs.mean(dim=0), counts)


class Expert(nn.Module):
    """A routed MoE expert: its own SwiGLU FFN of width s."""

    def __init__(self, d: int, s: int):
        super().__init__()
        self.ff_proj = nn.Linear(d, 2 * s, bias=False)
        self.ff_out = nn.Linear(s, d, bias=False)


class Norm(nn.Module):
    def __init__(self, d: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))


class Block(nn.Module):
    """One transformer layer of any block kind (the config decides which FFN part runs)."""

    def __init__(self, cfg: Config):
        super().__init__()
        d, h = cfg.d_model, cfg.hidden
        self.cfg = cfg
        self.attn_norm = Norm(d)
        self.att_proj = nn.Linear(d, 3 * d, bias=False)
        self.attn_out = nn.Linear(d, d, bias=False)
        self.ff_norm = Norm(d)
        self.ff_proj = nn.Linear(d, 2 * h, bias=False)
        self.ff_out = nn.Linear(h, d, bias=False)
        if cfg.block in ("moe", "versatile"):
            self.expert_gate = nn.Linear(d, cfg.n_experts, bias=False)
        if cfg.block == "versatile":
            self.depth_predictor = nn.Linear(d, cfg.max_depth, bias=False)
        if cfg.block == "moe":
            self.experts = nn.ModuleList(
                Expert(d, cfg.expert_width) for _ in range(cfg.n_experts)
            )

    def eps(self, x: torch.Tensor) -> float:
        return const(self.cfg.norm_eps, x.dtype)

    # -- attention ------------------------------------------------------------------------
    def attention(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        # x [B, T, d] -> attn_out(causal_softmax(rope(q)·rope(k)ᵀ/√hd)·v) [B, T, d]
        bsz, seq, d = x.shape
        heads, hd = self.cfg.n_heads, self.cfg.head_dim
        qkv = rms_norm(x, self.attn_norm.weight, self.eps(x)) @ self.att_proj.weight.T
        q, k, v = (t.reshape(bsz, seq, heads, hd).transpose(1, 2) for t in qkv.split(d, dim=-1))
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return out.transpose(1, 2).reshape(bsz, seq, d) @ self.attn_out.weight.T

    # -- FFN pieces -----------------------------------------------------------------------
    def ffn_step(self, x: torch.Tensor) -> torch.Tensor:
        # x [N, d] -> x + FFN(ff_norm x): one dense block, one loop of the depth path
        z = rms_norm(x, self.ff_norm.weight, self.eps(x))
        return x + swiglu(z, self.ff_proj.weight, self.ff_out.weight)

    def width_path(self, x: torch.Tensor):
        # x [N, d] -> (x + Σ_k g_k·FFN_k(ff_norm x) [N, d], router logits [N, E], chosen [N, k])
        # Virtual expert e = value rows e·s.., gate rows h+e·s.. of ff_proj, columns e·s.. of
        # ff_out; the gated sum over experts is the full SwiGLU with each hidden unit scaled by
        # its expert's gate (0 for experts not chosen). With the shared expert (width-only
        # default) the whole FFN stays active beside them: (x + FFN(z)) + Σ_k g_k·FFN_k(z).
        cfg = self.cfg
        logits = x @ self.expert_gate.weight.T
        gates, chosen = top_k_routing(logits, cfg.top_k)
        z = rms_norm(x, self.ff_norm.weight, self.eps(x))
        u = z @ self.ff_proj.weight.T
        h = cfg.hidden
        act = u[:, :h] * F.silu(u[:, h:])
        routed = (act * gates.repeat_interleave(cfg.expert_width, dim=1)) @ self.ff_out.weight.T
        base = x + act @ self.ff_out.weight.T if cfg.has_shared_expert else x
        return base + routed, logits, chosen

    def depth_path_train(self, x: torch.Tensor, temperature: float, noise):
        # x [N, d] -> (Σ_ℓ p_ℓ·x_ℓ [N, d], p [N, D] one-hot straight-through, loop count [N],
        #              predictor logits [N, D])
        # The pick is argmax(logits + g), g ~ Gumbel(0, 1), or argmax(logits + τ·g) with
        # depth_noise = "scaled"; the soft sample is softmax((logits + noise)/τ) either way.
        logits = x @ self.depth_predictor.weight.T
        z = _wide(logits)
        if noise is not None:
            u = torch.rand(z.shape, generator=noise, dtype=torch.float64, device="cpu")
            g = -torch.log(-torch.log(u.clamp(1e-12, 1.0 - 1e-12)))
            g = g.to(device=z.device, dtype=z.dtype)
            if self.cfg.depth_noise == "scaled":
                g = temperature * g
            z = z + g
        soft = torch.softmax(z / temperature, dim=-1)
        index = z.argmax(dim=-1)  # ties: the lower index, as vffn
        hard = F.one_hot(index, self.cfg.max_depth).to(soft.dtype)
        probs = (hard + (soft - soft.detach())).to(x.dtype)  # forward exactly the one-hot
        out, x_l = torch.zeros_like(x), x
        for ell in range(self.cfg.max_depth):
            x_l = self.ffn_step(x_l)
            out = out + probs[:, ell : ell + 1] * x_l
        return out, probs, index + 1, logits

    def depth_path_early_exit(self, x: torch.Tensor, depth: torch.Tensor) -> torch.Tensor:
        # x [N, d], loop count per token [N] -> x_{depth[t]} per token; each token runs exactly
        # its loops (the running rows are compacted after every loop)
        out = torch.empty_like(x)
        running = torch.arange(x.shape[0], device=x.device)
        x_run = x
        for loop_count in range(1, self.cfg.max_depth + 1):
            if running.numel() == 0:
                break
            x_run = self.ffn_step(x_run)
            done = depth[running] <= loop_count
            out = out.index_copy(0, running[done], x_run[done])
            keep = ~done
            running, x_run = running[keep], x_run[keep]
        return out

    def fusion_lambda(self, probs: torch.Tensor) -> torch.Tensor:
        # p [N, D] -> λ [N, 1]: 1 − Σ_ℓ (ℓ/D)·p_ℓ (gated) or 1/2 (average)
        n, depth = probs.shape
        if self.cfg.fusion == "average":
            return torch.full((n, 1), 0.5, dtype=probs.dtype, device=probs.device)
        # ℓ/D divided in the working dtype (vffn: in f32)
        steps = torch.arange(1, depth + 1, dtype=probs.dtype, device=probs.device) / depth
        return 1.0 - probs @ steps[:, None]

    # -- FFN part of each kind ------------------------------------------------------------
    def ffn_part(self, x: torch.Tensor, infer: bool, temperature: float, noise, out: Output):
        # x [N, d] post-attention residual -> block output [N, d]; routing and balance to `out`
        cfg = self.cfg
        if cfg.block in ("dense", "kloop"):
            for _ in range(cfg.max_depth if cfg.block == "kloop" else 1):
                x = self.ffn_step(x)
            return x
        if cfg.block == "moe":
            z = rms_norm(x, self.ff_norm.weight, self.eps(x))
            shared = swiglu(z, self.ff_proj.weight, self.ff_out.weight)
            logits = z @ self.expert_gate.weight.T
            gates, chosen = top_k_routing(logits, cfg.top_k)
            routed = torch.zeros_like(x)
            for e, expert in enumerate(self.experts):
                # An expert no token chose still runs (on no rows): its gradient is then zero,
                # not absent, so AdamW decays it as vffn's fused MoE kernel has it do.
                rows = (chosen == e).any(dim=-1).nonzero().squeeze(1)
                y = swiglu(z[rows], expert.ff_proj.weight, expert.ff_out.weight)
                routed = routed.index_add(0, rows, gates[rows, e : e + 1] * y)
            out.experts.append(chosen)
            out.router_logits.append(logits.detach())
            if not infer:
                out.balance.append(balance_term(logits, chosen))
            return (x + shared) + routed
        if infer:
            return self.versatile_infer(x, out)
        return self.versatile_train(x, temperature, noise, out)

    def versatile_train(self, x, temperature, noise, out: Output):
        cfg = self.cfg
        if cfg.paths != "depth":
            out_w, logits, chosen = self.width_path(x)
            out.experts.append(chosen)
            out.router_logits.append(logits.detach())
            out.balance.append(balance_term(logits, chosen))
            if cfg.paths == "width":
                return out_w
        out_d, probs, depth, logits = self.depth_path_train(x, temperature, noise)
        out.depth.append(depth)
        out.depth_logits.append(logits.detach())
        if cfg.paths == "depth":
            return out_d
        lam = self.fusion_lambda(probs)
        return out_d + lam * (out_w - out_d)

    def versatile_infer(self, x, out: Output):
        cfg = self.cfg
        if cfg.paths == "width":
            out_w, _, chosen = self.width_path(x)
            out.experts.append(chosen)
            return out_w
        depth = (x @ self.depth_predictor.weight.T).argmax(dim=-1) + 1
        out.depth.append(depth)
        out_d = self.depth_path_early_exit(x, depth)
        if cfg.paths == "depth":
            return out_d
        out.experts.append((x @ self.expert_gate.weight.T).topk(cfg.top_k, dim=-1).indices)
        if cfg.fusion == "average":
            lam = torch.full((x.shape[0],), 0.5, dtype=x.dtype, device=x.device)
        else:
            lam = 1.0 - depth.to(x.dtype) / cfg.max_depth
        rows = (lam != 0).nonzero().squeeze(1)
        if rows.numel() == 0:
            return out_d
        out_w, _, _ = self.width_path(x[rows])
        fused = out_d[rows] + lam[rows, None] * (out_w - out_d[rows])
        return out_d.index_copy(0, rows, fused)

    def forward(self, x, cos, sin, infer: bool, temperature: float, noise, out: Output):
        bsz, seq, d = x.shape
        x = x + self.attention(x, cos, sin)
        flat = self.ffn_part(x.reshape(bsz * seq, d), infer, temperature, noise, out)
        return flat.reshape(bsz, seq, d)


class Transformer(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        self.wte = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.ln_f = Norm(cfg.d_model)
        self.ff_out = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)


class VffnModel(nn.Module):
    """The whole model: byte embedding → blocks → final RMSNorm → untied LM head."""

    def __init__(self, cfg: Config, temperature: float | None = None):
        super().__init__()
        self.config = cfg
        self.transformer = Transformer(cfg)
        # The depth predictor's temperature saved with the checkpoint (vffn's `temperature`).
        self.temperature = cfg.temperature_end if temperature is None else temperature
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """vffn's init scheme: matrices N(0, init_std) truncated at ±3σ, norm gains 1 (torch's
        random stream, not vffn's: the same distribution, other numbers)."""
        std = f32(self.config.init_std)
        for name, param in self.named_parameters():
            if param.dim() == 1:
                param.fill_(1.0)
            else:
                nn.init.trunc_normal_(param, 0.0, std, -3 * std, 3 * std, generator=generator)

    def forward(
        self,
        tokens: torch.Tensor,
        infer: bool | None = None,
        temperature: float | None = None,
        noise: torch.Generator | None = None,
    ) -> Output:
        """tokens [B, T] -> Output (logits [B, T, V], balance terms, routing).

        infer: None = `not self.training`. temperature: of the depth router in training mode
        (default: the checkpoint's). noise: generator of the Gumbel noise (None = zero noise)."""
        if infer is None:
            infer = not self.training
        temperature = f32(self.temperature if temperature is None else temperature)
        cfg, t = self.config, self.transformer
        x = t.wte(tokens)
        cos, sin = rope_cos_sin(tokens.shape[1], cfg.head_dim, f32(cfg.rope_theta), x.dtype, x.device)
        out = Output(logits=x)
        for block in t.blocks:
            x = block(x, cos, sin, infer, temperature, noise, out)
        x = rms_norm(x, t.ln_f.weight, const(cfg.norm_eps, x.dtype))
        out.logits = x @ t.ff_out.weight.T
        return out

    def loss(self, out: Output, targets: torch.Tensor, counts: list | None = None):
        """(mean CE + coef·Σ balance, CE, Σ balance). `counts`: per routed layer the slot counts
        to take f_e from (default: this forward's own)."""
        logits = out.logits
        ce = F.cross_entropy(_wide(logits).reshape(-1, logits.shape[-1]), targets.reshape(-1))
        if not out.balance:
            return ce, ce, torch.zeros((), dtype=ce.dtype, device=ce.device)
        counts = counts if counts is not None else [term.counts for term in out.balance]
        balance = sum(term.loss(c.to(term.mean_probs.device)) for term, c in zip(out.balance, counts))
        coef = const(self.config.balance_loss_coef, balance.dtype)
        return ce + coef * balance, ce, balance

    @torch.no_grad()
    def eval_loss_sum(self, windows: torch.Tensor, batch_size: int) -> tuple[float, int]:
        """Σ of next-byte CE (nats, f64) in inference mode over windows [W, T+1], and the token
        count; batched `batch_size` windows at a time as `vffn eval`."""
        total, count = 0.0, 0
        for first in range(0, windows.shape[0], batch_size):
            chunk = windows[first : first + batch_size]
            out = self.forward(chunk[:, :-1], infer=True)
            logits = _wide(out.logits).reshape(-1, out.logits.shape[-1])
            ce = F.cross_entropy(logits, chunk[:, 1:].reshape(-1), reduction="sum")
            total += float(ce.double())
            count += chunk[:, 1:].numel()
        return total, count
