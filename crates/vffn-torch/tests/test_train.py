"""The hand-off: a vffn run continued by `torchrun -m vffn_torch.train` on two CPU processes
and read back by vffn (eval, generate, inspect, train --resume)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from conftest import PACKAGE, copy_run
from vffn_torch.checkpoint import run_lock


def torchrun(*args, procs: int = 2) -> dict:
    """Runs the trainer under torchrun; returns its JSON result line."""
    launcher = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or shutil.which("torchrun")
    if launcher is None:
        pytest.skip("torchrun not found")
    env = dict(os.environ, PYTHONPATH=PACKAGE + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [launcher, "--nproc_per_node", str(procs), "-m", "vffn_torch.train", *map(str, args)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def state(run) -> dict:
    with open(os.path.join(run, "ckpt", "state.json"), encoding="utf-8") as f:
        return json.load(f)


def test_two_process_run_is_read_back_by_vffn_eval_generate_inspect_and_resume(trained, vffn, tmp_path):
    run = trained("versatile")
    run2 = tmp_path / "run2"
    result = torchrun("--init", run, "--steps", 10, "--out", run2)
    assert result["step"] == 50
    assert state(run2)["step"] == 50 and state(run2)["train"]["steps"] == 50
    assert load_file(run2 / "ckpt" / "optimizer.safetensors") is not None
    # vffn's rows up to step 40, then the trainer's: both with the depth router's columns.
    rows = [json.loads(line) for line in open(run2 / "metrics.jsonl", encoding="utf-8")]
    assert [r["step"] for r in rows] == [10, 20, 30, 40, 50]
    for row in rows:
        assert len(row["depth_agree"]) == len(row["depth_margin"]) == 2, row
        assert all(0.0 <= a <= 1.0 for a in row["depth_agree"]) and min(row["depth_margin"]) >= 0.0, row
    evaluated = json.loads(vffn("eval", "--checkpoint", run2, "--json"))
    assert evaluated["tokens"] == result["tokens"]
    assert abs(evaluated["loss"] - result["val_loss"]) <= 1e-4, (evaluated, result)
    assert len(vffn("generate", "--checkpoint", run2, "--prompt", "copy ab > ", "--max-new", 20)) > 0
    assert "layer 1" in vffn("inspect", "--checkpoint", run2)
    vffn("train", "--resume", "--out", run2, "--steps", 60, "--sample-bytes", 0)
    assert state(run2)["step"] == 60
    steps = [json.loads(line)["step"] for line in open(run2 / "metrics.jsonl", encoding="utf-8")]
    assert steps == sorted(steps) and steps[-1] == 60 and 50 in steps


@pytest.mark.parametrize("block", ["dense", "moe"])
def test_torch_continuing_a_run_without_noise_follows_vffn_continuing_it(block, trained, vffn, tmp_path):
    # Dense and moe blocks draw no Gumbel noise: both continuations see the same batches (the
    # data position is handed over) under the same recipe and objective (moe: f_e of the whole
    # batch over both ranks; an expert no token chose still decays), so they differ only by
    # float rounding (measured ≤ 5e-7 of each tensor's largest entry).
    run = trained(block)
    by_vffn = copy_run(run, tmp_path / "by-vffn")
    vffn("train", "--resume", "--out", by_vffn, "--steps", 48, "--sample-bytes", 0)
    by_torch = tmp_path / "by-torch"
    torchrun("--init", run, "--steps", 8, "--out", by_torch, "--eval-windows", 8)
    a, b = state(by_vffn), state(by_torch)
    for key in ("step", "data_rng", "tokens_seen", "data_source", "train"):
        assert a[key] == b[key], key
    # Rows with the same fields as vffn's (no depth router: no depth_agree / depth_margin).
    fields = [[sorted(json.loads(line)) for line in open(os.path.join(r, "metrics.jsonl"), encoding="utf-8")]
              for r in (by_vffn, by_torch)]
    assert fields[0] == fields[1] and "depth_agree" not in fields[0][-1]
    worst = {}
    for file in ("model.safetensors", "optimizer.safetensors"):
        worst[file] = 0.0
        want = load_file(os.path.join(by_vffn, "ckpt", file))
        got = load_file(by_torch / "ckpt" / file)
        assert want.keys() == got.keys()
        for name in want:
            scale = want[name].abs().max().item()
            err = (got[name] - want[name]).abs().max().item() / scale
            assert err <= 1e-5, f"{file} {name}: {err:.2e}"
            worst[file] = max(worst[file], err)
    print(f"{block}: torch vs vffn continuation, worst relative difference: {worst}")
    moved = load_file(os.path.join(run, "ckpt", "model.safetensors"))
    torch_weights = load_file(by_torch / "ckpt" / "model.safetensors")
    assert any(not torch.equal(moved[n], torch_weights[n]) for n in moved), "weights did not move"


def test_the_trainer_refuses_an_out_directory_another_process_is_writing(trained, tmp_path):
    run, out = trained("dense"), tmp_path / "busy"
    out.mkdir()
    env = dict(os.environ, PYTHONPATH=PACKAGE + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, "-m", "vffn_torch.train", "--init", run, "--steps", "1", "--out", out]
    with run_lock(out):  # as a `vffn train` on that directory would hold it
        done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"error: `{out}` is in use by another vffn process (pid {os.getpid()}); wait for it to finish or stop it first"
    ]
    assert not (out / "ckpt").exists()
