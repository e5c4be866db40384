"""Shared fixtures: the vffn binary (tests that need it skip when it is not built) and small
checkpoints trained by it, one per block kind / ablation, made once per session."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", "..", ".."))
PACKAGE = os.path.abspath(os.path.join(HERE, ".."))
sys.path.insert(0, PACKAGE)

# A model small enough to train in seconds, big enough to route: d 64, 2 layers, E 4 (s 64), D 3.
SMALL_MODEL = """
[model]
d_model = 64
n_heads = 4
n_layers = 2
hidden = 256
n_experts = 4
max_depth = 3
seq_len = 64
batch_size = 8
{extra}
[train]
steps = {steps}
warmup_steps = 10
eval_every = {steps}
eval_batches = 2
log_every = 10
"""

VARIANTS = {
    "dense": 'block = "dense"',
    "kloop": 'block = "kloop"',
    "moe": 'block = "moe"',
    "versatile": 'block = "versatile"',
    # Width-only with the shared expert (unset: on for width-only), and without it.
    "versatile-width": 'block = "versatile"\npaths = "width"',
    "versatile-width-routed": 'block = "versatile"\npaths = "width"\nshared_expert = false',
    "versatile-depth": 'block = "versatile"\npaths = "depth"',
    "versatile-average": 'block = "versatile"\nfusion = "average"',
    "versatile-depth-noise": 'block = "versatile"\ndepth_noise = "scaled"',
}


def vffn_binary() -> str | None:
    path = os.environ.get("VFFN_BIN", os.path.join(REPO, "target", "release", "vffn"))
    return path if os.path.isfile(path) and os.access(path, os.X_OK) else None


@pytest.fixture(scope="session")
def vffn():
    """Runs the vffn binary: vffn(*args) -> stdout; skips the test when it is not built."""
    binary = vffn_binary()
    if binary is None:
        pytest.skip("target/release/vffn is not built (cargo build --release)")

    def run(*args, cwd=None):
        done = subprocess.run(
            [binary, *map(str, args)], capture_output=True, text=True, errors="replace", cwd=cwd
        )
        if done.returncode != 0:
            raise AssertionError(f"vffn {' '.join(map(str, args))} failed:\n{done.stderr}")
        return done.stdout

    return run


@pytest.fixture(scope="session")
def trained(vffn, tmp_path_factory):
    """trained(variant, steps=40) -> run directory of a small model vffn trained that long."""
    made = {}
    root = tmp_path_factory.mktemp("runs")

    def get(variant: str, steps: int = 40) -> str:
        key = (variant, steps)
        if key not in made:
            config = root / f"{variant}-{steps}.toml"
            config.write_text(SMALL_MODEL.format(extra=VARIANTS[variant], steps=steps))
            run = root / f"{variant}-{steps}"
            vffn("train", "--config", config, "--out", run, "--sample-bytes", 0, "--threads", 2)
            made[key] = str(run)
        return made[key]

    return get


def copy_run(src: str, dst) -> str:
    shutil.copytree(src, dst)
    return str(dst)
