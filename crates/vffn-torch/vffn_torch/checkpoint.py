"""vffn checkpoints (crates/model/src/checkpoint.rs, crates/cli/src/ckpt_io.rs), read and written.

A run directory RUN holds RUN/config.toml, RUN/metrics.jsonl and the checkpoint RUN/ckpt/:
- model.safetensors: every parameter as F32 under its checkpoint name; metadata `config` (the
  model config as JSON), `temperature` (the depth router's current temperature) and extras
  (`step`, `data_source`);
- optimizer.safetensors: AdamW moments `<name>.adam_m` / `<name>.adam_v`, metadata `step`;
- state.json: format, step, model_rng and data_rng (four u64 as strings), tokens_seen,
  data_source and the `[train]` recipe.
Both safetensors files carry vffn's content checksums (metadata `checksums`, see tensorfile.py),
written here byte for byte as vffn writes them and verified on load, as are finite weights and
second moments >= 0. A new checkpoint is written to RUN/ckpt.tmp-<pid>, fsynced, and renamed into
place (the old one moved to RUN/ckpt.old first), as vffn does; readers fall back to ckpt.old.
Every other file (config.toml, metrics.jsonl) is replaced atomically too, and a writer holds the
run directory's advisory lock RUN/lock (flock, the holder's pid inside) as `vffn train` does.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
from dataclasses import dataclass

import numpy as np
import torch
from safetensors.torch import load as load_safetensors

from .config import Config, TrainConfig, f32_debug, json_text, run_toml
from .model import VffnModel
from .rng import Rng
from .tensorfile import TensorFileError, read_tensors, write_tensors

MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
STATE_FILE = "state.json"
CKPT_DIR = "ckpt"
OLD_DIR = "ckpt.old"
TMP_PREFIX = "ckpt.tmp-"
LOCK_FILE = "lock"
CONFIG_FILE = "config.toml"
TRAIN_STATE_FORMAT = 1
# vffn's salts deriving the noise and data RNG seeds from the run seed (crates/cli/src/train.rs).
NOISE_SALT = 0x6E6F69736521
DATA_SALT = 0x646174612121


class CheckpointError(ValueError):
    pass


def safetensors_bytes(tensors: dict, metadata: dict) -> bytes:
    """F32 tensors and string metadata as the safetensors bytes vffn writes for them: canonical
    header, data laid out by name, content checksums in the metadata."""
    arrays = {name: t.detach().to("cpu", torch.float32).contiguous().numpy() for name, t in tensors.items()}
    return write_tensors(arrays, metadata)


def read_safetensors(path: str, *, require_checksums: bool = True) -> tuple[dict, dict]:
    """(tensors by name, metadata) of a safetensors file vffn wrote, its checksums verified."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as err:
        raise CheckpointError(f"cannot read `{path}`: {err.strerror or err}") from err
    try:
        tensors = load_safetensors(data)
    except Exception as err:  # the reader's own errors are of several types
        raise CheckpointError(f"`{path}`: not a readable safetensors file ({err})") from err
    try:
        _, metadata = read_tensors(data, require_checksums=require_checksums)
    except TensorFileError as err:
        raise CheckpointError(f"`{path}`: {err}") from err
    return tensors, metadata


def _check_values(path: str, tensors: dict, second_moments: bool = False) -> None:
    """Every value finite and, for `.adam_v` tensors of an optimizer file, at least 0."""
    for name in sorted(tensors):
        t = tensors[name]
        if not t.dtype.is_floating_point:
            continue
        bad = (~torch.isfinite(t)).flatten().nonzero()
        if len(bad):
            index = int(bad[0])
            raise CheckpointError(f"`{path}`: tensor `{name}`: value {t.flatten()[index].item()} at index {index} is not finite")
        if second_moments and name.endswith(".adam_v"):
            negative = (t < 0).flatten().nonzero()
            if len(negative):
                index = int(negative[0])
                raise CheckpointError(
                    f"`{path}`: tensor `{name}`: value {t.flatten()[index].item()} at index {index} is negative (must be at least 0)"
                )


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


def load(path: str, dtype: torch.dtype = torch.float32, device="cpu", *, require_checksums: bool = True) -> VffnModel:
    """The model of a vffn checkpoint (run directory, ckpt directory or model.safetensors),
    its parameters cast to `dtype` (float32, bfloat16, float16 or float64), in eval mode (vffn's
    inference; `.train()` for the training forward). The checkpoint's temperature and extra
    metadata are kept on the model (`temperature`, `metadata`). Its content checksums are
    verified; a file without them (an older vffn's, another tool's) is refused unless
    `require_checksums=False`, which reads it as it is (to re-save it with checksums)."""
    file = resolve(path)
    tensors, metadata = read_safetensors(file, require_checksums=require_checksums)
    if "config" not in metadata:
        raise CheckpointError(f"`{file}`: metadata `config` missing")
    if "temperature" not in metadata:
        raise CheckpointError(f"`{file}`: metadata `temperature` missing")
    config = Config.from_json(metadata.pop("config"))
    text = metadata.pop("temperature")
    try:
        temperature = float(np.float32(text))
    except ValueError:
        temperature = float("nan")
    if not (np.isfinite(temperature) and temperature > 0):
        raise CheckpointError(f"`{file}`: metadata `temperature`: `{text}` is not a finite positive number")
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
    _check_values(file, tensors)
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


def load_training(path: str, dtype=torch.float32, device="cpu", *, require_checksums: bool = True) -> TrainingCheckpoint:
    """The model plus AdamW moments, step and state.json when the checkpoint has them
    (`require_checksums` as in `load`, for both safetensors files)."""
    model = load(path, dtype, device, require_checksums=require_checksums)
    ckpt_dir = os.path.dirname(model.checkpoint_file)
    opt_path, state_path = (os.path.join(ckpt_dir, n) for n in (OPTIMIZER_FILE, STATE_FILE))
    if not (os.path.isfile(opt_path) and os.path.isfile(state_path)):
        return TrainingCheckpoint(model, 0, None, None)
    tensors, metadata = read_safetensors(opt_path, require_checksums=require_checksums)
    _check_values(opt_path, tensors, second_moments=True)
    step = int(metadata.get("step", "x")) if metadata.get("step", "").isdigit() else None
    if step is None:
        raise CheckpointError(f"`{opt_path}`: metadata `step` missing or not a number")
    state = read_state(state_path)
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


STATE_KEYS = ("format", "step", "model_rng", "data_rng", "tokens_seen", "data_source", "train")


def read_state(path: str) -> dict:
    """state.json, checked as vffn checks it: exactly its keys, format 1, RNG states of four
    decimal u64 words not all zero, a valid recipe."""
    try:
        with open(path, encoding="utf-8") as f:
            state = json.load(f)
    except (OSError, ValueError) as err:
        raise CheckpointError(f"`{path}`: cannot read it ({err})") from err
    if not isinstance(state, dict) or set(state) != set(STATE_KEYS):
        keys = sorted(set(state) ^ set(STATE_KEYS)) if isinstance(state, dict) else ["(not an object)"]
        raise CheckpointError(f"`{path}`: unexpected or missing field `{keys[0]}`")
    if state["format"] != TRAIN_STATE_FORMAT:
        raise CheckpointError(f"`{path}`: format {state['format']} is not supported (expected {TRAIN_STATE_FORMAT})")
    for key in ("model_rng", "data_rng"):
        words = state[key]
        if not (isinstance(words, list) and len(words) == 4 and all(isinstance(w, str) and w.isdigit() and int(w) < 1 << 64 for w in words)):
            raise CheckpointError(f"`{path}`: `{key}` is not four decimal u64 words")
        if all(int(w) == 0 for w in words):
            raise CheckpointError(f"`{path}`: `{key}` is all zeros, which is not a valid generator state")
    try:
        TrainConfig.from_dict(state["train"])
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"`{path}`: {err}") from err
    return state


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: str, data: bytes) -> None:
    """Replaces one file atomically (as vffn's `write_atomic`): `.NAME.tmp-<pid>` next to it is
    written and fsynced, renamed over `path`, and the directory fsynced."""
    directory = os.path.dirname(path) or "."
    tmp = os.path.join(directory, f".{os.path.basename(path)}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    _fsync_dir(directory)


_held_locks: dict = {}  # real path of a run directory -> [lock file, nesting depth]


@contextlib.contextmanager
def run_lock(run_dir: str):
    """Holds the advisory lock RUN/lock that `vffn train` takes (flock, exclusive, the pid
    written inside) for the `with` block, or raises naming the holder's pid. Nested uses in one
    process share the lock (the outermost releases it)."""
    key = os.path.realpath(run_dir)
    if key not in _held_locks:
        f = open(os.path.join(run_dir, LOCK_FILE), "a+", encoding="utf-8")
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip()
            f.close()
            raise CheckpointError(
                f"`{run_dir}` is in use by another vffn process (pid {holder or 'unknown'}); wait for "
                "it to finish or stop it first"
            ) from None
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        _held_locks[key] = [f, 0]
    held = _held_locks[key]
    held[1] += 1
    try:
        yield
    finally:
        held[1] -= 1
        if held[1] == 0:
            del _held_locks[key]
            held[0].close()  # releases the flock


def check_run_dir(out: str) -> None:
    """Refuses an output that cannot be a run directory (as vffn): a regular file, or a
    checkpoint directory itself (RUN/ckpt, which would nest a checkpoint inside it)."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise CheckpointError(f"--out `{out}` is a file, not a run directory")
    name = os.path.basename(os.path.normpath(out))
    if os.path.exists(os.path.join(out, MODEL_FILE)) or name in (CKPT_DIR, OLD_DIR):
        raise CheckpointError(
            f"--out `{out}` is a checkpoint directory; give its run directory `{os.path.dirname(os.path.normpath(out)) or '.'}` instead"
        )


def write_checkpoint(run_dir: str, files: dict) -> str:
    """Writes {name: bytes} as RUN/ckpt atomically (staging dir, fsync, two renames); the
    caller holds the run directory's lock."""
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
    """state.json as vffn writes it (serde's pretty form, its field order, f32 recipe values)."""
    return json_text({k: state[k] for k in STATE_KEYS}, indent=2)


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
        "temperature": f32_debug(temperature),  # as vffn's `{:?}`: shortest text that reads back
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
    check_run_dir(run_dir)
    os.makedirs(run_dir, exist_ok=True)
    files = {
        MODEL_FILE: safetensors_bytes(tensors, metadata),
        OPTIMIZER_FILE: safetensors_bytes(adam, {"step": str(step)}),
        STATE_FILE: state_json(state).encode(),
    }
    with run_lock(run_dir):
        final = write_checkpoint(run_dir, files)
        write_atomic(os.path.join(run_dir, CONFIG_FILE), run_toml(cfg, train).encode())
    return final
