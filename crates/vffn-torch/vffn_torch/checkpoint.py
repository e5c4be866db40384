"""vffn checkpoints (crates/model/src/checkpoint.rs, crates/cli/src/ckpt_io.rs), read and written.

A run directory RUN holds RUN/config.toml, RUN/metrics.jsonl and the checkpoint RUN/ckpt/:
- model.safetensors: every parameter as F32 under its checkpoint name; metadata `config` (the
  model config as JSON), `temperature` (the depth router's current temperature) and extras
  (`step`, `data_source`);
- optimizer.safetensors: AdamW moments `<name>.adam_m` / `<name>.adam_v`, metadata `step`;
- state.json: format, step, model_rng and data_rng (four u64 as strings), tokens_seen,
  data_source and the `[train]` recipe.
A new checkpoint is written to RUN/ckpt.tmp-<pid>, fsynced, and renamed into place (the old one
moved to RUN/ckpt.old first), as vffn does; readers fall back to ckpt.old.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass

import numpy as np
import torch
from safetensors import safe_open

from .config import Config, TrainConfig, run_toml
from .model import VffnModel
from .rng import Rng

MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
STATE_FILE = "state.json"
CKPT_DIR = "ckpt"
OLD_DIR = "ckpt.old"
TMP_PREFIX = "ckpt.tmp-"
TRAIN_STATE_FORMAT = 1
# vffn's salts deriving the noise and data RNG seeds from the run seed (crates/cli/src/train.rs).
NOISE_SALT = 0x6E6F69736521
DATA_SALT = 0x646174612121


class CheckpointError(ValueError):
    pass


def safetensors_bytes(tensors: dict, metadata: dict) -> bytes:
    """F32 tensors and string metadata as safetensors bytes, header keys sorted (so the same
    tensors give the same bytes; safetensors' own writer orders metadata by a hash map)."""
    header: dict = {"__metadata__": dict(sorted(metadata.items()))}
    blobs, offset = [], 0
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu", torch.float32).contiguous()
        blob = t.numpy().astype("<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(t.shape), "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)  # the data section starts 8-byte aligned
    return len(head).to_bytes(8, "little") + head + b"".join(blobs)


def read_safetensors(path: str) -> tuple[dict, dict]:
    """(tensors by name, metadata) of a safetensors file."""
    try:
        with safe_open(path, "pt") as f:
            metadata = dict(f.metadata() or {})
            tensors = {name: f.get_tensor(name) for name in f.keys()}
    except Exception as err:  # the reader's own errors are of several types
        raise CheckpointError(f"`{path}`: not a readable safetensors file ({err})") from err
    return tensors, metadata


def resolve(path: str) -> str:
    """The model file for `path`: a model.safetensors file, a ckpt directory or a run directory."""
    if os.path.isfile(path):
        return path
    if not os.path.isdir(path):
        raise CheckpointError(f"checkpoint `{path}` does not exist")
    for candidate in (path, os.path.join(path, CKPT_DIR), os.path.join(path, OLD_DIR)):
        if os.path.isfile(os.path.join(candidate, MODEL_FILE)):
            return os.path.join(candidate, MODEL_FILE)
    raise CheckpointError(f"`{path}` holds no checkpoint (no {MODEL_FILE} in it or in its {CKPT_DIR}/)")


def load(path: str, dtype: torch.dtype = torch.float32, device="cpu") -> VffnModel:
    """The model of a vffn checkpoint (run directory, ckpt directory or model.safetensors),
    its parameters cast to `dtype` (float32, bfloat16, float16 or float64), in eval mode (vffn's
    inference; `.train()` for the training forward). The checkpoint's temperature and extra
    metadata are kept on the model (`temperature`, `metadata`)."""
    file = resolve(path)
    tensors, metadata = read_safetensors(file)
    if "config" not in metadata:
        raise CheckpointError(f"`{file}`: metadata `config` missing")
    if "temperature" not in metadata:
        raise CheckpointError(f"`{file}`: metadata `temperature` missing")
    config = Config.from_json(metadata.pop("config"))
    temperature = float(np.float32(metadata.pop("temperature")))
    model = VffnModel(config, temperature)
    expected = {name: shape for name, shape, _ in config.param_specs()}
    for name, shape in expected.items():
        if name not in tensors:
            raise CheckpointError(f"`{file}`: tensor `{name}` missing")
        if tuple(tensors[name].shape) != shape:
            raise CheckpointError(
                f"`{file}`: tensor `{name}` has shape {list(tensors[name].shape)}, expected {list(shape)}"
            )
        if tensors[name].dtype != torch.float32:
            raise CheckpointError(f"`{file}`: tensor `{name}` is {tensors[name].dtype}, expected F32")
    extra = sorted(set(tensors) - set(expected))
    if extra:
        raise CheckpointError(f"`{file}`: tensor `{extra[0]}` is not a parameter of the model")
    model.load_state_dict(tensors, strict=True)
    model.metadata = metadata
    model.checkpoint_file = file
    return model.to(device=device, dtype=dtype).eval()


@dataclass
class TrainingCheckpoint:
    """A checkpoint with what resuming needs; optimizer/state are None for a bare model file."""

    model: VffnModel
    step: int
    moments: dict | None  # name -> (adam_m, adam_v) f32 tensors
    state: dict | None  # state.json


def load_training(path: str, dtype=torch.float32, device="cpu") -> TrainingCheckpoint:
    """The model plus AdamW moments, step and state.json when the checkpoint has them."""
    model = load(path, dtype, device)
    ckpt_dir = os.path.dirname(model.checkpoint_file)
    opt_path, state_path = (os.path.join(ckpt_dir, n) for n in (OPTIMIZER_FILE, STATE_FILE))
    if not (os.path.isfile(opt_path) and os.path.isfile(state_path)):
        return TrainingCheckpoint(model, 0, None, None)
    tensors, metadata = read_safetensors(opt_path)
    step = int(metadata.get("step", "x")) if metadata.get("step", "").isdigit() else None
    if step is None:
        raise CheckpointError(f"`{opt_path}`: metadata `step` missing or not a number")
    with open(state_path, encoding="utf-8") as f:
        state = json.load(f)
    if state.get("format") != TRAIN_STATE_FORMAT:
        raise CheckpointError(f"`{state_path}`: format {state.get('format')} is not supported")
    if state["step"] != step:
        raise CheckpointError(
            f"`{ckpt_dir}` is inconsistent: optimizer at step {step}, {STATE_FILE} at step {state['step']}"
        )
    moments = {}
    for name, shape, _ in model.config.param_specs():
        m, v = tensors.get(f"{name}.adam_m"), tensors.get(f"{name}.adam_v")
        if m is None or v is None:
            raise CheckpointError(f"`{opt_path}`: no AdamW moments for `{name}`")
        if tuple(m.shape) != shape or tuple(v.shape) != shape:
            raise CheckpointError(f"`{opt_path}`: moments of `{name}` have the wrong shape")
        moments[name] = (m, v)
    return TrainingCheckpoint(model, step, moments, state)


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_checkpoint(run_dir: str, files: dict) -> str:
    """Writes {name: bytes} as RUN/ckpt atomically (staging dir, fsync, two renames)."""
    os.makedirs(run_dir, exist_ok=True)
    for entry in os.listdir(run_dir):
        if entry.startswith(TMP_PREFIX):
            shutil.rmtree(os.path.join(run_dir, entry))
    staging = os.path.join(run_dir, f"{TMP_PREFIX}{os.getpid()}")
    os.mkdir(staging)
    for name, data in files.items():
        with open(os.path.join(staging, name), "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    _fsync_dir(staging)
    final, old = os.path.join(run_dir, CKPT_DIR), os.path.join(run_dir, OLD_DIR)
    if os.path.exists(final):
        if os.path.exists(old):
            shutil.rmtree(old)
        os.rename(final, old)
    os.rename(staging, final)
    _fsync_dir(run_dir)
    if os.path.exists(old):
        shutil.rmtree(old)
    return final


def state_json(state: dict) -> str:
    """state.json in vffn's field order (serde's pretty form)."""
    order = ["format", "step", "model_rng", "data_rng", "tokens_seen", "data_source", "train"]
    return json.dumps({k: state[k] for k in order}, indent=2)


def save(
    model: VffnModel,
    run_dir: str,
    *,
    step: int = 0,
    moments: dict | None = None,
    train: TrainConfig | None = None,
    temperature: float | None = None,
    data_source: str = "builtin",
    data_rng=None,
    model_rng=None,
    tokens_seen: int = 0,
) -> str:
    """Writes `model` as the vffn checkpoint RUN/ckpt (plus RUN/config.toml) that `vffn eval`,
    `generate`, `inspect` and `train --resume` read. Weights are written as F32 whatever the
    model's dtype. `moments` (name -> (adam_m, adam_v)) default to zeros, `train` to the default
    recipe, the RNG states to the ones a fresh vffn run of `train.seed` starts from."""
    cfg = model.config
    train = train or TrainConfig()
    if temperature is None:
        temperature = cfg.temperature_at(step, train.steps, train.temperature_floor_frac)
    params = dict(model.state_dict())
    tensors = {name: params[name] for name, _, _ in cfg.param_specs()}
    metadata = {
        "config": cfg.to_json(),
        "temperature": str(np.float32(temperature)),  # shortest text that parses back exactly
        "step": str(step),
        "data_source": data_source,
    }
    adam = {}
    for name, t in tensors.items():
        m, v = moments[name] if moments is not None else (torch.zeros_like(t), torch.zeros_like(t))
        adam[f"{name}.adam_m"], adam[f"{name}.adam_v"] = m, v
    seed = train.seed
    state = {
        "format": TRAIN_STATE_FORMAT,
        "step": step,
        "model_rng": [str(w) for w in (model_rng or Rng(seed ^ NOISE_SALT).state)],
        "data_rng": [str(w) for w in (data_rng or Rng(seed ^ DATA_SALT).state)],
        "tokens_seen": tokens_seen,
        "data_source": data_source,
        "train": train.to_dict(),
    }
    final = write_checkpoint(
        run_dir,
        {
            MODEL_FILE: safetensors_bytes(tensors, metadata),
            OPTIMIZER_FILE: safetensors_bytes(adam, {"step": str(step)}),
            STATE_FILE: state_json(state).encode(),
        },
    )
    with open(os.path.join(run_dir, "config.toml"), "w", encoding="utf-8") as f:
        f.write(run_toml(cfg, train))
    return final
