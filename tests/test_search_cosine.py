"""The search on a model without labels (a sentence encoder): a cosine goal, scored on validation inputs
alone against the original's outputs, and a dynamic int8 target's own fall-back as the int8 axis."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import graphopt
from graphopt import ConfigError, Goals, InvalidInputError, SearchConfig
from graphopt.search.goals import parse_goals
from graphopt.search.measure import mean_cosine


class Encoder(nn.Module):
    """Token ids to one mean-pooled vector per sequence (masked), like a sentence encoder."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(60, 32)
        self.mlp = nn.Sequential(nn.Linear(32, 96), nn.GELU(), nn.Linear(96, 32))

    def forward(self, ids, mask):
        hidden = self.mlp(self.embed(ids)) * mask.unsqueeze(-1)
        return hidden.sum(1) / mask.sum(1, keepdim=True)


def _tokens(seed: int, batch: int = 16, length: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 60, (batch, length), generator=generator)
    return ids, torch.ones_like(ids)


SEQUENCE = {"ids": {1: "seq"}, "mask": {1: "seq"}}


def test_the_cosine_goal_parses_checks_and_measures_misses_by_its_headroom():
    assert parse_goals(["cosine>=0.99"]) == Goals(min_cosine=0.99)
    with pytest.raises(ConfigError, match="min_cosine"):
        Goals(min_cosine=1.5)
    (miss,) = Goals(min_cosine=0.99).misses({"cosine": 0.98})
    assert miss.relative_gap == pytest.approx(1.0)  # 0.01 short of a headroom of 0.01
    (miss,) = Goals(min_cosine=0.9).misses({"cosine": 0.85})
    assert miss.relative_gap == pytest.approx(0.5)
    assert mean_cosine([torch.ones(2, 3).numpy()], [2 * torch.ones(2, 3).numpy()]) == pytest.approx(1.0)
    assert mean_cosine([torch.zeros(2, 3).numpy()], [torch.ones(2, 3).numpy()]) == 0.0  # dead output
    assert mean_cosine([torch.zeros(2, 3).numpy()], [torch.zeros(2, 3).numpy()]) == 1.0


def test_a_cosine_goal_searches_an_encoder_on_validation_inputs_alone():
    torch.manual_seed(0)
    model = Encoder().eval()
    res = graphopt.optimize(
        model, "x86-dynamic-int8", example_inputs=_tokens(0, 1), dynamic_shapes=SEQUENCE,
        calibration_data=[_tokens(1)], validation_data=[_tokens(2), _tokens(3, length=9)],  # two lengths
        goals=Goals(min_cosine=0.995),
        search=SearchConfig(prune_ratios=(0.0, 0.5), exits=(False,), quiet=True),
    )  # fmt: skip
    rows = {r["candidate"]: r for r in res.search.table()}
    measured = [r for r in rows.values() if r["cosine"] is not None]
    assert {r["drop_pp"] for r in measured} == {None}  # no labels: no accuracy
    fp32 = rows["prune=0 fp32 [onnx]"]
    assert fp32["cosine"] > 0.9999
    pruned = [r for name, r in rows.items() if "prune=0.5" in name and r["cosine"] is not None]
    assert pruned and max(r["cosine"] for r in pruned) < fp32["cosine"]
    assert any("fall-backs" in name for name in rows)  # the dynamic target's own fall-back is an axis
    chosen = next(r for r in rows.values() if r["chosen"])
    assert chosen["cosine"] >= 0.995 and chosen["goals"] == "met"


def test_an_accuracy_goal_on_validation_inputs_alone_is_refused():
    model = Encoder().eval()
    with pytest.raises(InvalidInputError, match="inputs alone can score a cosine goal"):
        graphopt.optimize(
            model, "x86-dynamic-int8", example_inputs=_tokens(0, 1), calibration_data=[_tokens(1)],
            validation_data=[_tokens(2)], goals=Goals(max_accuracy_drop=1.0),
            search=SearchConfig(prune_ratios=(0.0,), exits=(False,), quiet=True),
        )  # fmt: skip
    with pytest.raises(InvalidInputError, match="a cosine goal is scored on validation_data"):
        graphopt.optimize(
            model, "x86-dynamic-int8", example_inputs=_tokens(0, 1), goals=Goals(min_cosine=0.9),
            search=SearchConfig(prune_ratios=(0.0,), exits=(False,), quiet=True),
        )  # fmt: skip
