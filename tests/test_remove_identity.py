from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from graphopt.passes import RemoveIdentity
from tests.helpers import captured, outputs, run_pass


class Identities(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 8)
        self.identity = nn.Identity()
        self.dropout = nn.Dropout(0.5)
        self.dropout2d = nn.Dropout2d(0.3)
        self.flatten = nn.Flatten()  # on a [N, 8] tensor: flattens a single dimension

    def forward(self, x):
        y = self.identity(self.fc(x))
        y = self.dropout(y).contiguous()
        y = F.dropout(y, 0.2, training=False)
        y = y.view(y.size(0), -1)  # same shape, batch taken from the tensor
        y = y.reshape(-1, 8)
        y = torch.flatten(y, 1)
        return self.flatten(self.dropout2d(y.unsqueeze(-1).unsqueeze(-1)).flatten(2).squeeze(-1))


def test_removes_all_identities():
    x = torch.randn(3, 8)
    gm = captured(Identities())
    before = copy.deepcopy(gm)
    expected = outputs(gm, x)
    record = run_pass(RemoveIdentity(), gm, x)
    assert record.modified
    assert record.stats == {"identity": 1, "dropout": 3, "contiguous": 1, "noop_reshape": 4}
    remaining = [n.target for n in gm.graph.nodes if n.op in ("call_method", "call_function")]
    assert "contiguous" not in remaining and "view" not in remaining and F.dropout not in remaining
    gm.graph.lint()
    torch.testing.assert_close(outputs(gm, x), expected, rtol=1e-5, atol=1e-5)
    # the batch dimension is not baked in: another batch size still works and matches
    x5 = torch.randn(5, 8)
    torch.testing.assert_close(outputs(gm, x5), outputs(before, x5), rtol=1e-5, atol=1e-5)
    assert not run_pass(RemoveIdentity(), gm, x).modified


class ActiveDropout(nn.Module):
    def forward(self, x):
        return F.dropout(x, 0.5)  # training defaults to True: live even in eval


class BatchSpecificView(nn.Module):
    def forward(self, x):
        return x.view(1, 16) * 2


class RealReshape(nn.Module):
    def forward(self, x):
        return x.view(x.size(0), 4, 4)


@pytest.mark.parametrize(
    ("model", "shape", "expected_stats"),
    [
        (ActiveDropout(), (2, 4), {"skipped:dropout_active": 1}),
        (BatchSpecificView(), (1, 16), {"skipped:batch_specific": 1}),
        (RealReshape(), (2, 16), {}),
    ],
)
def test_keeps_ops_that_are_not_identities(model, shape, expected_stats):
    x = torch.randn(*shape)
    gm = captured(model)
    nodes = len(gm.graph.nodes)
    record = run_pass(RemoveIdentity(), gm, x)
    assert not record.modified
    assert record.stats == expected_stats
    assert len(gm.graph.nodes) == nodes


class ShuffleWithView(nn.Module):
    """ShuffleNetV2's channel shuffle as common code writes it: the last view needs the contiguous copy."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 8, 1)

    def forward(self, x):
        y = self.conv(x).contiguous()  # already contiguous: a no-op
        n, c, h, w = y.shape
        y = y.view(n, 2, c // 2, h, w).transpose(1, 2).contiguous()
        return y.view(n, -1, h, w)


def test_contiguous_is_kept_where_a_later_view_needs_it():
    x = torch.randn(2, 4, 5, 5)
    gm = captured(ShuffleWithView())
    expected = outputs(gm, x)
    record = run_pass(RemoveIdentity(), gm, x)
    assert record.stats["contiguous"] == 1 and record.stats["skipped:layout_needed"] == 1
    torch.testing.assert_close(outputs(gm, x), expected, rtol=0, atol=0)


def test_shufflenet_with_view_optimizes_for_every_target_kind():
    import graphopt

    x = torch.randn(2, 4, 5, 5)
    calibration = [torch.randn(2, 4, 5, 5) for _ in range(2)]
    for target in ("generic-fp32", "x86-int8"):
        res = graphopt.optimize(ShuffleWithView(), target, example_inputs=(x,), calibration_data=calibration)
        assert res.report.stage("remove_identity").stats["skipped:layout_needed"] == 1
