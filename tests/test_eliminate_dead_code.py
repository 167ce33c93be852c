from __future__ import annotations

import torch
from torch import nn

from graphopt.passes import EliminateDeadCode
from tests.helpers import captured, outputs, run_pass


class DeadBranch(nn.Module):
    def __init__(self):
        super().__init__()
        self.used, self.unused = nn.Linear(4, 4), nn.Linear(4, 4)

    def forward(self, x):
        _ = self.unused(x).relu()  # computed and thrown away
        return self.used(x)


class InPlace(nn.Module):
    def forward(self, x):
        y = x.clone()
        y.add_(1)  # result unused, but it mutates y: must stay
        return y


def test_removes_dead_nodes_and_modules():
    x = torch.randn(2, 4)
    gm = captured(DeadBranch())
    expected = outputs(gm, x)
    record = run_pass(EliminateDeadCode(), gm, x)
    assert record.modified
    assert record.stats == {"nodes_removed": 2, "submodules_removed": 1}
    assert not hasattr(gm, "unused")
    gm.graph.lint()
    torch.testing.assert_close(outputs(gm, x), expected, rtol=1e-5, atol=1e-5)
    again = run_pass(EliminateDeadCode(), gm, x)
    assert not again.modified and again.stats == {"nodes_removed": 0, "submodules_removed": 0}


def test_keeps_side_effects():
    x = torch.randn(3)
    gm = captured(InPlace())
    record = run_pass(EliminateDeadCode(), gm, x)
    assert not record.modified
    torch.testing.assert_close(outputs(gm, x), x + 1)
