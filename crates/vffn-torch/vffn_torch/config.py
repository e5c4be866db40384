"""The model and recipe configuration of vffn (crates/model/src/config.rs), every key.

Values keep the form they have in the checkpoint's JSON (so a save writes back the same text);
`f32()` gives the value vffn computes with (its fields are f32).
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields

import numpy as np

BLOCKS = ("dense", "kloop", "moe", "versatile")
PATHS = ("both", "width", "depth")
FUSIONS = ("gated", "average")
DEPTH_NOISES = ("unit", "scaled")


def f32(value: float) -> float:
    """The float32 value vffn holds for a config number."""
    return float(np.float32(value))


def _f32_digits(value: float, kind=np.float32) -> tuple[str, str, int]:
    """(sign, shortest digits that read back to the same f32 (or `kind`), exponent of the
    first digit)."""
    x = kind(value)
    if not np.isfinite(x):
        raise ValueError(f"{value} is not a finite number (JSON has no form for it)")
    sign = "-" if np.signbit(x) else ""
    if x == 0:
        return sign, "0", 0
    mantissa, exponent = np.format_float_scientific(abs(x), unique=True, trim="-").split("e")
    return sign, mantissa.replace(".", ""), int(exponent)


def _fixed(digits: str, exp: int) -> str:
    """digits·10^(exp - len + 1) in fixed notation, with at least one decimal."""
    if len(digits) - 1 <= exp:
        return digits + "0" * (exp + 1 - len(digits)) + ".0"
    if exp >= 0:
        return digits[: exp + 1] + "." + digits[exp + 1 :]
    return "0." + "0" * (-exp - 1) + digits


def _scientific(digits: str, exp: int, plus: str) -> str:
    return digits[0] + ("." + digits[1:] if len(digits) > 1 else "") + "e" + ("-" if exp < 0 else plus) + str(abs(exp))


def f32_text(value: float) -> str:
    """An f32 as serde_json writes it: the shortest digits that read back to the same f32, in
    fixed notation when the first digit's exponent is in -6..=12 ("0.000001", "10000.0"),
    otherwise as "1e-8" / "1.5e+13"."""
    sign, digits, exp = _f32_digits(value)
    return sign + (_fixed(digits, exp) if -6 <= exp <= 12 else _scientific(digits, exp, "+"))


def f64_text(value: float) -> str:
    """An f64 as serde_json writes it (metrics' tokens_per_s, depth_agree, depth_margin): the
    shortest digits that read back to the same f64, in fixed notation when the first digit's
    exponent is in -5..=15, otherwise as "1e-6" / "1.5e+16"."""
    sign, digits, exp = _f32_digits(value, np.float64)
    return sign + (_fixed(digits, exp) if -5 <= exp <= 15 else _scientific(digits, exp, "+"))


def f32_debug(value: float) -> str:
    """An f32 as Rust's `{:?}` writes it (the checkpoint's `temperature`): the same digits, in
    fixed notation from 1e-4 up to 1e16, otherwise as "1e-5" / "1.5e16"."""
    sign, digits, exp = _f32_digits(value)
    return sign + (_fixed(digits, exp) if -4 <= exp < 16 or digits == "0" else _scientific(digits, exp, ""))


def json_text(value, indent: int | None = None, level: int = 0) -> str:
    """JSON as serde_json writes vffn's structs: compact (`to_string`) or, with `indent`, its
    pretty form; floats are f32 fields (`f32_text`), keys keep their order."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f32_text(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, dict):
        items = [json.dumps(str(k), ensure_ascii=False) + (": " if indent else ":")
                 + json_text(v, indent, level + 1) for k, v in value.items()]
        open_, close = "{", "}"
    else:
        items = [json_text(v, indent, level + 1) for v in value]
        open_, close = "[", "]"
    if not items:
        return open_ + close
    if not indent:
        return open_ + ",".join(items) + close
    inner, outer = "\n" + " " * (indent * (level + 1)), "\n" + " " * (indent * level)
    return open_ + inner + ("," + inner).join(items) + outer + close


@dataclass
class Config:
    """`[model]`: the architecture, in config.rs's key order (defaults: the tiny preset)."""

    vocab_size: int = 256
    d_model: int = 128
    n_heads: int = 4
    n_layers: int = 4
    hidden: int = 512
    block: str = "versatile"  # dense | kloop | moe | versatile
    n_experts: int = 8
    top_k: int = 2
    max_depth: int = 4
    paths: str = "both"  # both | width | depth (versatile ablation)
    fusion: str = "gated"  # gated | average (versatile ablation)
    # Width-only versatile: the whole FFN kept active beside the routed virtual experts,
    # x + FFN(z) + Σ_k g_k·FFN_k(z). None (unset) = on for paths = "width", off otherwise;
    # True only with block = "versatile" and paths = "width". See `has_shared_expert`.
    shared_expert: bool | None = None
    # Noise of the depth router's training pick: unit = argmax(logits + g) (the paper's),
    # scaled = argmax(logits + τ·g) (opt-in, issue 19).
    depth_noise: str = "unit"
    rope_theta: float = 10000.0
    norm_eps: float = 1e-6
    init_std: float = 0.02
    temperature_start: float = 5.0
    temperature_end: float = 0.1
    balance_loss_coef: float = 1e-5
    seq_len: int = 128
    batch_size: int = 16

    def __post_init__(self):
        self.validate()

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def expert_width(self) -> int:
        return self.hidden // self.n_experts

    @property
    def has_shared_expert(self) -> bool:
        """Whether the width path keeps the whole FFN beside its routed virtual experts: the
        `shared_expert` key, unset meaning on for width-only versatile blocks."""
        width_only = self.block == "versatile" and self.paths == "width"
        return width_only and self.shared_expert is not False

    def validate(self) -> None:
        def fail(key, reason):
            value = getattr(self, key)
            shown = json.dumps(value) if isinstance(value, bool) else value
            raise ValueError(f"`model.{key}` = {shown}: {reason}")

        for key in ("vocab_size", "d_model", "n_heads", "n_layers", "hidden", "n_experts",
                    "top_k", "max_depth", "seq_len", "batch_size"):
            if getattr(self, key) < 1:
                fail(key, "must be at least 1")
        if self.block not in BLOCKS:
            fail("block", f"expected one of {', '.join(BLOCKS)}")
        if self.paths not in PATHS:
            fail("paths", f"expected one of {', '.join(PATHS)}")
        if self.fusion not in FUSIONS:
            fail("fusion", f"expected one of {', '.join(FUSIONS)}")
        if not (self.shared_expert is None or isinstance(self.shared_expert, bool)):
            fail("shared_expert", "expected true or false")
        if self.depth_noise not in DEPTH_NOISES:
            fail("depth_noise", f"expected one of {', '.join(DEPTH_NOISES)}")
        if self.d_model % self.n_heads or self.head_dim % 2:
            fail("n_heads", "must divide d_model into an even head_dim")
        if self.top_k > self.n_experts:
            fail("top_k", f"must be at most n_experts = {self.n_experts}")
        if self.block in ("moe", "versatile") and self.hidden % self.n_experts:
            fail("hidden", f"must be a multiple of n_experts = {self.n_experts}")
        if self.shared_expert is True and not self.has_shared_expert:
            fail("shared_expert", 'needs block = "versatile" and paths = "width"')

    def to_json(self) -> str:
        """The form stored in model.safetensors' `config` metadata (vffn's key order)."""
        return json_text(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "Config":
        """The checkpoint's JSON form. As vffn: a width-only checkpoint without `shared_expert`
        predates the key and had no shared expert, so it reads as False, not as the default."""
        data = json.loads(text)
        _refuse_unknown_keys(cls, data, "config")
        config = cls(**data)
        if "shared_expert" not in data and config.has_shared_expert:
            config.shared_expert = False
        return config

    def temperature_at(self, step: int, total_steps: int, floor_frac: float) -> float:
        """Gumbel-softmax temperature at `step` of a `total_steps` run, as vffn computes it:
        exponential decay from temperature_start to temperature_end at floor_frac·total_steps."""
        floor_step = f32(floor_frac) * float(total_steps)
        start, end = f32(self.temperature_start), f32(self.temperature_end)
        if not math.isfinite(floor_step) or floor_step < 1.0 or step >= floor_step:
            return end
        return f32(start * (end / start) ** (step / floor_step))

    def param_specs(self) -> list[tuple[str, tuple[int, ...], bool]]:
        """(checkpoint name, shape, decays) of every parameter, in vffn's order."""
        d, h, v = self.d_model, self.hidden, self.vocab_size
        specs = [("transformer.wte.weight", (v, d), True)]
        for layer in range(self.n_layers):
            p = f"transformer.blocks.{layer}"
            specs += [
                (f"{p}.attn_norm.weight", (d,), False),
                (f"{p}.att_proj.weight", (3 * d, d), True),
                (f"{p}.attn_out.weight", (d, d), True),
                (f"{p}.ff_norm.weight", (d,), False),
                (f"{p}.ff_proj.weight", (2 * h, d), True),
                (f"{p}.ff_out.weight", (d, h), True),
            ]
            if self.block == "versatile":
                specs.append((f"{p}.expert_gate.weight", (self.n_experts, d), True))
                specs.append((f"{p}.depth_predictor.weight", (self.max_depth, d), True))
            if self.block == "moe":
                specs.append((f"{p}.expert_gate.weight", (self.n_experts, d), True))
                s = self.expert_width
                for e in range(self.n_experts):
                    specs.append((f"{p}.experts.{e}.ff_proj.weight", (2 * s, d), True))
                    specs.append((f"{p}.experts.{e}.ff_out.weight", (d, s), True))
        specs.append(("transformer.ln_f.weight", (d,), False))
        specs.append(("transformer.ff_out.weight", (v, d), True))
        return specs


@dataclass
class TrainConfig:
    """`[train]`: the recipe, in config.rs's key order and with its defaults."""

    lr: float = 1e-3
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0
    steps: int = 2000
    eval_every: int = 200
    eval_batches: int = 20
    log_every: int = 10
    seed: int = 1337
    temperature_floor_frac: float = 0.96

    def lr_at(self, step: int) -> float:
        """Linear warm-up lr·(step+1)/warmup_steps, then cosine to min_lr_ratio·lr at the last
        step (as vffn: f64 arithmetic on the f32 values, the result rounded to f32)."""
        lr = f32(self.lr)
        if step < self.warmup_steps:
            return f32(lr * (step + 1) / self.warmup_steps)
        min_lr = lr * f32(self.min_lr_ratio)
        last = max(self.steps - 1, 0)
        if last <= self.warmup_steps:
            progress = 1.0
        else:
            progress = min((step - self.warmup_steps) / (last - self.warmup_steps), 1.0)
        cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
        return f32(min_lr + (lr - min_lr) * cosine)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        _refuse_unknown_keys(cls, data, "train")
        return cls(**data)


def _refuse_unknown_keys(cls, data: dict, what: str) -> None:
    """ValueError naming the first key (in sorted order) of `data` that is no field of `cls`."""
    unknown = sorted(set(data) - {f.name for f in fields(cls)})
    if unknown:
        raise ValueError(f"{what}: unknown key `{unknown[0]}`")


def _toml_value(value) -> str:
    """A config value as vffn's config.toml has it (floats: f32 digits, never an exponent)."""
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        sign, digits, exp = _f32_digits(value)
        return sign + _fixed(digits, exp)
    return str(value)


def run_toml(model: Config, train: TrainConfig) -> str:
    """config.toml of a run directory (`[model]` and `[train]` with every key; an unset
    optional key such as `shared_expert` is left out, as TOML has no null)."""
    lines = ["[model]"]
    lines += [f"{k} = {_toml_value(v)}" for k, v in asdict(model).items() if v is not None]
    lines += ["", "[train]"]
    lines += [f"{k} = {_toml_value(v)}" for k, v in asdict(train).items()]
    return "\n".join(lines) + "\n"
