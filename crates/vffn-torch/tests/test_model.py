"""The issue-19 switches without the vffn binary: `shared_expert` and `depth_noise` in the
config (defaults, validation, JSON/TOML forms as vffn's), the shared expert's sum, the
temperature-scaled Gumbel pick, and the depth router's agreement columns of a metrics row."""
from __future__ import annotations

import pytest
import torch

import vffn_torch
from vffn_torch.config import run_toml
from vffn_torch.model import Output, depth_agreement
from vffn_torch.train import depth_router_columns, metrics_line

SMALL = dict(d_model=16, n_heads=2, n_layers=1, hidden=64, n_experts=4, max_depth=3, seq_len=16, batch_size=2)


def small(**keys) -> vffn_torch.Config:
    return vffn_torch.Config(**(SMALL | keys))


def test_shared_expert_is_on_by_default_for_width_only_and_validated():
    assert small(paths="width").has_shared_expert, "unset: on for width-only"
    assert not small().has_shared_expert, "unset: off for both paths"
    assert not small(paths="width", shared_expert=False).has_shared_expert
    for keys in (dict(shared_expert=True), dict(block="moe", shared_expert=True),
                 dict(paths="depth", shared_expert=True)):
        with pytest.raises(ValueError, match="model.shared_expert.*needs block"):
            small(**keys)
    with pytest.raises(ValueError, match="model.shared_expert"):
        small(paths="width", shared_expert=1)


def test_depth_noise_is_unit_by_default_and_scaled_on_request():
    assert small().depth_noise == "unit"
    assert small(depth_noise="scaled").depth_noise == "scaled"
    with pytest.raises(ValueError, match="model.depth_noise"):
        small(depth_noise="loud")


def test_config_json_and_toml_hold_the_new_keys_as_vffn_writes_them():
    width = small(paths="width")
    text = width.to_json()
    assert '"fusion":"gated","shared_expert":null,"depth_noise":"unit","rope_theta"' in text
    assert vffn_torch.Config.from_json(text) == width
    toml = run_toml(width, vffn_torch.TrainConfig())
    assert "shared_expert" not in toml, "TOML has no null: unset is left out"
    assert 'fusion = "gated"\ndepth_noise = "unit"\n' in toml
    off = small(paths="width", shared_expert=False, depth_noise="scaled")
    assert '"shared_expert":false,"depth_noise":"scaled"' in off.to_json()
    assert 'shared_expert = false\ndepth_noise = "scaled"\n' in run_toml(off, vffn_torch.TrainConfig())
    # A width-only checkpoint from before the key had no shared expert; any other keeps unset.
    legacy = vffn_torch.Config.from_json(text.replace(',"shared_expert":null', ""))
    assert legacy.shared_expert is False and not legacy.has_shared_expert
    both = small()
    assert vffn_torch.Config.from_json(both.to_json().replace(',"shared_expert":null', "")) == both


def test_the_shared_expert_adds_the_whole_ffn_to_the_routed_width_path():
    torch.manual_seed(3)
    model = vffn_torch.VffnModel(small(paths="width", init_std=0.2)).double()
    block = model.transformer.blocks[0]
    x = torch.randn(10, 16, dtype=torch.float64)
    with_shared, _, chosen = block.width_path(x)
    block.cfg = small(paths="width", shared_expert=False, init_std=0.2)
    routed_only, _, chosen_alone = block.width_path(x)
    assert torch.equal(chosen, chosen_alone), "the shared expert does not change routing"
    whole = block.ffn_step(x) - x  # FFN(ff_norm x)
    assert (with_shared - (routed_only + whole)).abs().max().item() < 1e-12
    assert whole.abs().max().item() > 1e-2


def depth_picks(cfg: vffn_torch.Config, x: torch.Tensor, temperature: float, seed: int):
    """(loop counts picked in a training forward, the noise-free argmax) of one block."""
    torch.manual_seed(5)
    block = vffn_torch.VffnModel(cfg).transformer.blocks[0]
    with torch.no_grad():
        _, _, depth, logits = block.depth_path_train(x, temperature, torch.Generator().manual_seed(seed))
    return depth, logits.argmax(dim=-1) + 1


def test_scaled_depth_noise_is_unit_noise_at_tau_one_and_the_argmax_at_small_tau():
    x = torch.randn(256, 16, generator=torch.Generator().manual_seed(2))
    unit, scaled = small(init_std=0.1), small(init_std=0.1, depth_noise="scaled")
    picks_unit, argmax = depth_picks(unit, x, 1.0, seed=21)
    picks_scaled, _ = depth_picks(scaled, x, 1.0, seed=21)
    assert torch.equal(picks_unit, picks_scaled), "τ = 1: the same draw, the same picks"
    small_unit, _ = depth_picks(unit, x, 1e-6, seed=21)
    small_scaled, _ = depth_picks(scaled, x, 1e-6, seed=21)
    assert torch.equal(small_scaled, argmax), "τ·g → 0: the pick is the argmax"
    assert (small_unit == argmax).sum().item() < 200, "unit noise still flips picks"
    # At τ = 0.5 the scaled pick is argmax(logits + τ·g) with g the generator's Gumbel draws.
    picks_half, _ = depth_picks(scaled, x, 0.5, seed=21)
    u = torch.rand((256, 3), generator=torch.Generator().manual_seed(21), dtype=torch.float64)
    g = (-torch.log(-torch.log(u.clamp(1e-12, 1.0 - 1e-12)))).float()
    torch.manual_seed(5)
    predictor = vffn_torch.VffnModel(scaled).transformer.blocks[0].depth_predictor.weight
    want = ((x @ predictor.T).detach() + 0.5 * g).argmax(dim=-1) + 1
    assert torch.equal(picks_half, want)
    assert not torch.equal(picks_half, argmax) and not torch.equal(picks_half, picks_unit)


def test_depth_agreement_counts_argmax_matches_and_margins_and_fills_a_metrics_row():
    # 3 tokens, D = 3: argmax 2 (margin 1.5), 1 (tie with 3: the lower index, margin 0), 3.
    logits = torch.tensor([[0.5, 2.0, -1.0], [4.0, 1.0, 4.0], [0.0, 0.25, 3.0]])
    out = Output(logits=torch.zeros(1), depth=[torch.tensor([2, 3, 3]), torch.tensor([1, 1, 1])],
                 depth_logits=[logits, logits])
    sums = depth_agreement(out)
    assert sums.tolist() == [[3.0, 2.0, 4.25], [3.0, 1.0, 4.25]]
    columns = depth_router_columns(sums + sums)  # two ranks' sums
    assert columns["depth_agree"] == [2 / 3, 1 / 3]
    assert columns["depth_margin"] == [4.25 / 3, 4.25 / 3]
    assert depth_router_columns(depth_agreement(Output(logits=torch.zeros(1)))) == {}
    row = {"step": 7, "loss": 1.5, "ce": 1.25, "balance": 0.0, "lr": 1e-3, "temperature": 0.1,
           "tokens_per_s": 1e-5, "grad_norm": 2.0, "depth_agree": [0.75, 0.0], "depth_margin": [1e-6, 2.5]}
    assert metrics_line(row) == (
        '{"step":7,"loss":1.5,"ce":1.25,"balance":0.0,"lr":0.001,"temperature":0.1,'
        '"tokens_per_s":0.00001,"grad_norm":2.0,"depth_agree":[0.75,0.0],"depth_margin":[1e-6,2.5]}\n'
    )
