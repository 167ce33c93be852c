from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from graphopt.frontend.capture import capture
from graphopt.ir.shapes import propagate_shapes
from graphopt.reporting.cost import count_macs


class Inner(nn.Module):
    def forward(self, x):
        return torch.stack([row * 2 for row in x])  # iterating over a traced tensor: fx rejects it


class Middle(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 1)
        self.inner = Inner()

    def forward(self, x):
        return self.inner(self.conv(x))


class Outer(nn.Module):
    def __init__(self):
        super().__init__()
        self.middle = Middle()
        self.head = nn.Conv2d(2, 4, 3)

    def forward(self, x):
        return F.relu(self.head(self.middle(x)))


def test_innermost_failing_submodule_becomes_the_leaf():
    model = Outer().eval()
    result = capture(model)
    assert list(result.leaves) == ["middle.inner"]  # not the whole of `middle`: its conv stays visible
    targets = [n.target for n in result.gm.graph.nodes if n.op == "call_module"]
    assert targets == ["middle.conv", "middle.inner", "head"]
    x = torch.randn(1, 2, 5, 5)
    torch.testing.assert_close(result.gm(x), model(x))


def test_shapes_and_dtypes_in_node_meta():
    gm = capture(Outer().eval()).gm
    propagate_shapes(gm, (torch.randn(2, 2, 5, 5),))
    shapes = {str(n.target): n.meta.get("shape") for n in gm.graph.nodes if n.op == "call_module"}
    assert shapes == {"middle.conv": (2, 2, 5, 5), "middle.inner": (2, 2, 5, 5), "head": (2, 4, 3, 3)}
    assert all(n.meta["dtype"] == torch.float32 for n in gm.graph.nodes if n.op != "output")


class TupleOut(nn.Module):
    def forward(self, x):
        return torch.split(x, [1, 2], dim=1)


def test_tuple_outputs_record_per_element_shapes():
    gm = capture(TupleOut()).gm
    propagate_shapes(gm, (torch.randn(1, 3, 2),))
    split = next(n for n in gm.graph.nodes if n.target is torch.split)
    assert split.meta["shapes"] == [(1, 1, 2), (1, 2, 2)]


@pytest.mark.parametrize(
    ("layer", "shape", "macs"),
    [
        (nn.Conv2d(3, 8, 3, padding=1), (1, 3, 10, 10), 8 * 10 * 10 * 3 * 9),
        (nn.Conv2d(8, 8, 3, padding=1, groups=8), (1, 8, 10, 10), 8 * 10 * 10 * 9),
        (nn.ConvTranspose2d(4, 6, 2, stride=2), (1, 4, 5, 5), 4 * 5 * 5 * 6 * 4),
        (nn.Linear(16, 32), (4, 7, 16), 4 * 7 * 32 * 16),
        (nn.Conv1d(2, 4, 3), (2, 2, 10), 2 * 4 * 8 * 2 * 3),
    ],
)
def test_mac_counts(layer, shape, macs):
    gm = capture(nn.Sequential(layer)).gm
    propagate_shapes(gm, (torch.randn(*shape),))
    assert count_macs(gm) == macs


class MatmulAttention(nn.Module):
    def forward(self, q, k, v):
        return F.scaled_dot_product_attention(q, k, v) + (q @ k.transpose(-1, -2)).sum(-1, keepdim=True)


def test_attention_and_matmul_macs():
    q, k, v = torch.randn(2, 4, 6, 8), torch.randn(2, 4, 5, 8), torch.randn(2, 4, 5, 3)
    gm = capture(MatmulAttention()).gm
    propagate_shapes(gm, (q, k, v))
    sdpa = 2 * 4 * 6 * 5 * (8 + 3)
    matmul = 2 * 4 * 6 * 5 * 8
    assert count_macs(gm) == sdpa + matmul
