"""Channel counts read from one tensor and used to shape another block pruning instead of breaking it."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import graphopt
from graphopt.frontend.capture import capture
from graphopt.ir.shapes import propagate_shapes
from graphopt.pruning import analyze


class ShapeFromAnotherTensor(nn.Module):
    """``n, c, h, w = y.shape`` then ``z.view(n, 2, c // 2, h, w)``: equal counts only before pruning."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(3, 16, 3, padding=1)
        self.head_a, self.head_b = nn.Conv2d(16, 4, 1), nn.Conv2d(16, 4, 1)

    def forward(self, x):
        y, z = torch.relu(self.a(x)), torch.relu(self.b(x))
        n, c, h, w = y.shape
        z = z.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, -1, h, w)
        return self.head_a(y) + self.head_b(z)


class ShapeFromItself(nn.Module):
    """The common channel shuffle: sizes read from the tensor being reshaped (same group: prunable)."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 16, 3, padding=1)
        self.head = nn.Conv2d(16, 4, 1)

    def forward(self, x):
        y = torch.relu(self.a(x))
        n, c, h, w = y.shape
        y = y.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, -1, h, w)
        return self.head(y)


def _groups(model: nn.Module, x: torch.Tensor):
    gm = capture(model).gm
    propagate_shapes(gm, (x,))
    return {tuple(g.producers): g for g in analyze(gm).groups()}


def test_a_size_read_from_another_group_blocks_the_group_it_was_read_from():
    x = torch.randn(2, 3, 8, 8)
    groups = _groups(ShapeFromAnotherTensor().eval(), x)
    assert "is shaped by the channel count of relu" in " ".join(groups[("a",)].reasons)
    assert not groups[("a",)].prunable


def test_a_size_read_from_the_reshaped_tensor_itself_stays_prunable():
    x = torch.randn(2, 3, 8, 8)
    groups = _groups(ShapeFromItself().eval(), x)
    assert groups[("a",)].prunable


@pytest.mark.parametrize("model_type", [ShapeFromAnotherTensor, ShapeFromItself])
def test_pruning_such_models_runs_and_matches_shapes(model_type):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, 8)
    model = model_type().eval()
    res = graphopt.optimize(model, "generic-fp32", example_inputs=(x,), prune=0.5)
    assert res.model(x).shape == model(x).shape
    pruned = res.report.stage("prune_channels").stats.get("units_removed", 0)
    assert (pruned > 0) == (model_type is ShapeFromItself)
