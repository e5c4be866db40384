"""vffn_torch against vffn on trained checkpoints, every block kind and ablation: logits and
routing of the inference forward (per-token early exit in both), and logits, loss, routing and
every parameter's gradient of the training forward with zero Gumbel noise.

Bounds (f32 in both): logits max |Δ| ≤ 1e-4 · max |logit|; each gradient max |Δ| ≤ 1e-3 ·
max |gradient of that tensor|."""
from __future__ import annotations

import os

import pytest
import torch
from safetensors.torch import load_file

import vffn_torch
from conftest import VARIANTS

TEXT = (
    "copy qhzkw > qhzkw\n4821+937=5758\nnest ([]{<>}(< | >))\nthe old cat sees a map.\n"
    "copy abc > abc\n12+345=357\n"
)


def relative(got: torch.Tensor, want: torch.Tensor) -> float:
    scale = want.abs().max().item()
    err = (got - want).abs().max().item()
    return err / scale if scale > 0 else err


def check_variant(variant: str, cfg) -> None:
    """The checkpoint holds the switch its variant is about (so its parity test covers it)."""
    if variant.startswith("versatile-width"):
        assert cfg.has_shared_expert == (variant == "versatile-width"), variant
    assert (cfg.depth_noise == "scaled") == (variant == "versatile-depth-noise"), variant


def routing_equal(out, dump, layers):
    for i in range(layers):
        if f"blocks.{i}.depth" in dump:
            assert torch.equal(out.depth[i].float().cpu(), dump[f"blocks.{i}.depth"]), f"layer {i} depth"
        if f"blocks.{i}.experts" in dump:
            assert torch.equal(out.experts[i].float().cpu(), dump[f"blocks.{i}.experts"]), f"layer {i} experts"


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_inference_forward_matches_vffn(variant, trained, vffn, tmp_path):
    run = trained(variant)
    vffn("forward", "--checkpoint", run, "--text", TEXT, "--out", tmp_path / "infer.safetensors")
    dump = load_file(tmp_path / "infer.safetensors")
    model = vffn_torch.load(run).eval()
    check_variant(variant, model.config)
    tokens = torch.tensor([list(TEXT.encode())])
    with torch.no_grad():
        out = model(tokens)
    routing_equal(out, dump, model.config.n_layers)
    assert any(k.endswith(".depth") or k.endswith(".experts") for k in dump) == (
        model.config.block in ("moe", "versatile")
    )
    err = relative(out.logits[0], dump["logits"])
    assert err <= 1e-4, f"{variant}: logits relative error {err:.2e}"
    print(f"{variant} inference: logits error {err:.2e} of the largest")


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_training_forward_and_every_gradient_match_vffn(variant, trained, vffn, tmp_path):
    run = trained(variant)
    path = tmp_path / "train.safetensors"
    vffn("forward", "--checkpoint", run, "--text", TEXT, "--out", path, "--train-mode", "--zero-noise")
    dump = load_file(path)
    model = vffn_torch.load(run).train()
    check_variant(variant, model.config)
    tokens = torch.tensor([list(TEXT.encode())])
    out = model(tokens[:, :-1], noise=None)  # at the checkpoint's temperature, as vffn forward
    loss, ce, _ = model.loss(out, tokens[:, 1:])
    loss.backward()
    routing_equal(out, dump, model.config.n_layers)
    logits_err = relative(out.logits[0].detach(), dump["logits"])
    assert logits_err <= 1e-4, f"{variant}: logits relative error {logits_err:.2e}"
    assert abs(ce.item() - dump["loss"].item()) <= 1e-5 * abs(dump["loss"].item())
    worst = 0.0
    for name, param in model.named_parameters():
        want = dump[f"{name}.grad"]
        # A router the ablation switches off gets no gradient in either.
        got = param.grad if param.grad is not None else torch.zeros_like(param)
        err = relative(got, want)
        worst = max(worst, err)
        assert err <= 1e-3, f"{variant}: {name} gradient relative error {err:.2e}"
    print(f"{variant} training: logits error {logits_err:.2e}, worst gradient error {worst:.2e} "
          "of the tensor's largest")


def test_fixture_writer_reproduces_the_committed_fixtures_byte_for_byte(tmp_path):
    # benches/compare/reference_model.py writes tests/fixtures/ (checked by the Rust tests in
    # tests/tests/fixtures_pytorch.rs) with this package's model.
    import subprocess
    import sys

    from conftest import REPO

    script = os.path.join(REPO, "benches", "compare", "reference_model.py")
    done = subprocess.run([sys.executable, script, "--out", str(tmp_path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    for block in ("dense", "kloop", "moe", "versatile"):
        with open(os.path.join(REPO, "tests", "fixtures", f"{block}.safetensors"), "rb") as f:
            assert (tmp_path / f"{block}.safetensors").read_bytes() == f.read(), block
