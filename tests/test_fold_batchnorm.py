from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from graphopt.passes import FoldBatchNorm
from tests.helpers import captured, count_modules, outputs, run_pass


class ConvBN(nn.Module):
    def __init__(self, conv: nn.Module, bn: nn.Module):
        super().__init__()
        self.conv, self.bn = conv, bn

    def forward(self, x):
        return torch.relu(self.bn(self.conv(x)))


CASES = {
    "conv1d": (ConvBN(nn.Conv1d(3, 6, 3), nn.BatchNorm1d(6)), (2, 3, 10)),
    "conv2d": (ConvBN(nn.Conv2d(3, 6, 3, bias=False), nn.BatchNorm2d(6)), (2, 3, 8, 8)),
    "conv3d": (ConvBN(nn.Conv3d(2, 4, 3), nn.BatchNorm3d(4)), (1, 2, 5, 5, 5)),
    "depthwise": (ConvBN(nn.Conv2d(6, 6, 3, groups=6), nn.BatchNorm2d(6)), (1, 6, 8, 8)),
    "linear": (ConvBN(nn.Linear(5, 7), nn.BatchNorm1d(7)), (4, 5)),
    "conv_transpose": (ConvBN(nn.ConvTranspose2d(4, 6, 3, stride=2), nn.BatchNorm2d(6)), (1, 4, 5, 5)),
    "conv_transpose_grouped": (
        ConvBN(nn.ConvTranspose2d(4, 6, 3, groups=2), nn.BatchNorm2d(6)),
        (1, 4, 5, 5),
    ),
    "no_affine": (ConvBN(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4, affine=False)), (1, 3, 4, 4)),
}


@pytest.mark.parametrize("case", CASES)
def test_folds_every_supported_producer(case):
    model, shape = copy.deepcopy(CASES[case][0]), CASES[case][1]
    x = torch.randn(*shape)
    gm = captured(model)
    expected = outputs(gm, x)
    record = run_pass(FoldBatchNorm(), gm, x)
    assert record.modified and record.stats == {"folded": 1}
    assert count_modules(gm, nn.modules.batchnorm._BatchNorm) == 0
    gm.graph.lint()
    torch.testing.assert_close(outputs(gm, x), expected, rtol=1e-5, atol=1e-5)
    again = run_pass(FoldBatchNorm(), gm, x)
    assert not again.modified and again.stats == {}


class FunctionalBN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.register_buffer("mean", torch.randn(4))
        self.register_buffer("var", torch.rand(4) + 0.5)
        self.gamma = nn.Parameter(torch.rand(4) + 0.5)
        self.beta = nn.Parameter(torch.randn(4))

    def forward(self, x):
        return F.batch_norm(
            self.conv(x), self.mean, self.var, self.gamma, self.beta, training=False, eps=1e-3
        )


def test_folds_functional_batch_norm():
    x = torch.randn(1, 3, 6, 6)
    gm = captured(FunctionalBN())
    expected = outputs(gm, x)
    record = run_pass(FoldBatchNorm(), gm, x)
    assert record.stats == {"folded": 1}
    assert not any(n.target is F.batch_norm for n in gm.graph.nodes)
    torch.testing.assert_close(outputs(gm, x), expected, rtol=1e-5, atol=1e-5)


class SharedOutput(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)

    def forward(self, x):
        y = self.conv(x)
        return self.bn(y) + y  # the un-normalised y is needed too


class NoRunningStats(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, track_running_stats=False)

    def forward(self, x):
        return self.bn(self.conv(x))


class SharedConv(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.bn1, self.bn2 = nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4), nn.BatchNorm2d(4)

    def forward(self, x):
        return self.bn2(self.conv(self.bn1(self.conv(x))))


class BNAfterReLU(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)

    def forward(self, x):
        return self.bn(torch.relu(self.conv(x)))


@pytest.mark.parametrize(
    ("model", "reason"),
    [
        (SharedOutput(), "skipped:shared_output"),
        (NoRunningStats(), "skipped:no_running_stats"),
        (BNAfterReLU(), "skipped:no_foldable_producer"),
    ],
)
def test_skips_with_reason(model, reason):
    x = torch.randn(2, 3, 6, 6)
    gm = captured(model)
    expected = outputs(gm, x)
    record = run_pass(FoldBatchNorm(), gm, x)
    assert not record.modified
    assert record.stats == {reason: 1}
    torch.testing.assert_close(outputs(gm, x), expected, rtol=1e-5, atol=1e-5)


def test_conv_called_twice_is_not_edited():
    x = torch.randn(1, 4, 6, 6)
    gm = captured(SharedConv())
    expected = outputs(gm, x)
    record = run_pass(FoldBatchNorm(), gm, x)
    # bn1 follows the first call of the shared conv, bn2 the second: folding either would change the other.
    assert record.stats == {"skipped:shared_module": 2}
    torch.testing.assert_close(outputs(gm, x), expected, rtol=1e-5, atol=1e-5)


def test_bias_created_when_conv_had_none():
    x = torch.randn(1, 3, 8, 8)
    gm = captured(ConvBN(nn.Conv2d(3, 6, 3, bias=False), nn.BatchNorm2d(6)))
    run_pass(FoldBatchNorm(), gm, x)
    assert isinstance(gm.conv.bias, nn.Parameter) and gm.conv.bias.shape == (6,)
