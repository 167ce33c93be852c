"""Pruning fails closed: what the analysis cannot cut is blocked with its reason counted in the stats, and the
rest of the network still prunes; depthwise convs with a multiplier and per-channel PReLU prune exactly."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import graphopt
from graphopt import PruneConfig
from graphopt.passes.prune_channels import PruneChannels
from graphopt.pipeline.pass_base import PassContext
from graphopt.pipeline.pass_manager import PassManager
from graphopt.pruning import rules
from graphopt.pruning.channel_map import ChannelMap
from graphopt.pruning.cuttable import GROUP_INPUT_POSITIONS
from graphopt.pruning.exactness import zero_then_prune
from tests.helpers import captured

X = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))


def _conv_bn_relu(cin: int, cout: int, kernel: int = 3, groups: int = 1, stride: int = 1) -> nn.Sequential:
    conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, groups=groups)
    return nn.Sequential(conv, nn.BatchNorm2d(cout), nn.ReLU())


def _multiplier_net() -> nn.Module:
    """FastViT's stem shape: a depthwise conv with two outputs per group, ``Conv2d(48, 96, 3, groups=48)``."""
    torch.manual_seed(0)
    return nn.Sequential(
        _conv_bn_relu(3, 48),
        _conv_bn_relu(48, 96, groups=48),
        _conv_bn_relu(96, 32, kernel=1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 10),
    ).eval()


class _PatchEmbed(nn.Module):
    """FastViT's PatchEmbed: a large- and a small-kernel depthwise-multiplier branch, summed."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem = _conv_bn_relu(3, 16)
        self.large = nn.Sequential(nn.Conv2d(16, 32, 7, 2, 3, groups=16), nn.BatchNorm2d(32))
        self.small = nn.Sequential(nn.Conv2d(16, 32, 3, 2, 1, groups=16), nn.BatchNorm2d(32))
        self.mix = _conv_bn_relu(32, 24, kernel=1)
        self.head = nn.Linear(24, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = torch.relu(self.large(x) + self.small(x))
        return self.head(self.mix(x).mean((2, 3)))


def _prune_stage(model: nn.Module, ratio: float) -> tuple[graphopt.OptimizeResult, dict[str, float]]:
    res = graphopt.optimize(model, "generic-fp32", example_inputs=(X,), prune=ratio)
    return res, res.report.stage("prune_channels").stats


def _mac_ratio(res: graphopt.OptimizeResult) -> float:
    return res.report.stage("prune_channels").macs / res.report.stage("original").macs


def test_a_depthwise_conv_with_two_outputs_per_group_prunes_whole_groups():
    """Was: SurgeryError 'groups would keep different input positions' failed the whole pass."""
    res, stats = _prune_stage(_multiplier_net(), 0.5)
    assert _mac_ratio(res) < 0.6 and stats["groups_pruned"] >= 2
    grouped = res.model.get_submodule("1.0")
    assert grouped.groups == grouped.in_channels < 48 and grouped.out_channels == 2 * grouped.groups
    assert res.model.get_submodule("0.0").out_channels == grouped.in_channels
    with torch.no_grad():
        assert res.model(X).shape == (1, 10)


@pytest.mark.parametrize(
    ("build", "grouped"),
    [(_multiplier_net, ["1.0"]), (_PatchEmbed, ["large.0", "small.0"])],
    ids=["multiplier", "patch_embed"],
)
def test_depthwise_multiplier_pruning_is_exact_once_removed_weights_are_zero(build, grouped):
    gm = captured(build())
    groups_before = [gm.get_submodule(name).groups for name in grouped]
    run = zero_then_prune(gm, (X,), PruneConfig(ratio=0.5))
    torch.testing.assert_close(run.pruned, run.zeroed, rtol=1e-5, atol=1e-5)
    assert run.macs_after < run.macs_before
    for name, before in zip(grouped, groups_before, strict=True):  # whole groups went, two outputs each
        conv = gm.get_submodule(name)
        assert conv.groups == conv.in_channels < before and conv.out_channels == 2 * conv.groups


def test_a_grouped_conv_with_one_output_per_group_keeps_its_groups():
    """Was: its outputs were pruned one by one, 24 filters for 48 groups (a RuntimeError in the pass)."""
    torch.manual_seed(0)
    model = nn.Sequential(
        _conv_bn_relu(3, 96), _conv_bn_relu(96, 48, groups=48), _conv_bn_relu(48, 32, kernel=1),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10),
    ).eval()  # fmt: skip
    res, stats = _prune_stage(model, 0.5)
    grouped = res.model.get_submodule("1.0")
    assert grouped.groups == grouped.out_channels == 48 and grouped.in_channels == 48  # 2 -> 1 per group
    assert res.model.get_submodule("0.0").out_channels == 48 and stats["groups_pruned"] == 2
    with torch.no_grad():
        assert res.model(X).shape == (1, 10)


def _rule_without_group_coupling(graph, target: str, m: ChannelMap | None, multiplier: int):
    """The depthwise-multiplier rule before the fix: it let each group keep its own input channels."""
    conv = graph.gm.get_submodule(target)
    graph.consumer(target, m.atoms, groups=conv.groups)
    return ChannelMap((1,), graph.producer(target, conv.out_channels))


def test_a_cut_the_surgery_cannot_make_is_blocked_with_its_reason_and_the_rest_prunes(monkeypatch):
    """A gap in a rule costs pruning, never the pass: the analysis blocks what the surgery could not cut."""
    monkeypatch.setattr(rules, "_depthwise", _rule_without_group_coupling)
    res, stats = _prune_stage(_multiplier_net(), 0.5)
    assert stats[f"blocked:{GROUP_INPUT_POSITIONS}"] == 48  # the stem's channels feed the 48 groups
    assert any(GROUP_INPUT_POSITIONS in row["blocked"] for row in res.report.tables["pruning"])
    assert res.model.get_submodule("0.0").out_channels == 48
    assert res.model.get_submodule("2.0").out_channels < 32 and _mac_ratio(res) < 1
    with torch.no_grad():
        assert res.model(X).shape == (1, 10)


class _PNet(nn.Module):
    """MTCNN's P-Net shape: conv-PReLU-maxpool-conv-PReLU-conv-PReLU, then two 1x1 heads."""

    def __init__(self, per_channel: bool = True) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv1, self.conv2, self.conv3 = nn.Conv2d(3, 10, 3), nn.Conv2d(10, 16, 3), nn.Conv2d(16, 32, 3)
        self.prelu1, self.prelu2, self.prelu3 = (nn.PReLU(c if per_channel else 1) for c in (10, 16, 32))
        self.pool = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv4_1, self.conv4_2 = nn.Conv2d(32, 2, 1), nn.Conv2d(32, 4, 1)
        with torch.no_grad():  # trained slopes differ per channel; PReLU's default 0.25 hides a wrong slice
            for prelu in (self.prelu1, self.prelu2, self.prelu3):
                prelu.weight.uniform_(0.05, 0.5)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.pool(self.prelu1(self.conv1(x)))
        x = self.prelu3(self.conv3(self.prelu2(self.conv2(x))))
        return torch.softmax(self.conv4_1(x), dim=1), self.conv4_2(x)


def _kept_channels(original: nn.Conv2d, pruned: nn.Conv2d) -> list[int]:
    """Which output channels of ``original`` the pruned conv kept, found by their (random, unique) biases;
    the biases are not sliced along the input, so they match exactly."""
    return [int(torch.nonzero(original.bias == b)[0]) for b in pruned.bias]


def test_per_channel_prelu_is_sliced_with_its_channels():
    """Was: PReLU not in the rule table, so every group was blocked and prune=0.3 removed nothing."""
    model = _PNet()
    res, stats = _prune_stage(model, 0.3)
    assert _mac_ratio(res) < 1 and "blocked:not_in_table" not in stats
    for conv, prelu in (("conv1", "prelu1"), ("conv2", "prelu2"), ("conv3", "prelu3")):
        kept = _kept_channels(getattr(model, conv), res.model.get_submodule(conv))
        pruned_prelu = res.model.get_submodule(prelu)
        assert pruned_prelu.num_parameters == len(kept) == res.model.get_submodule(conv).out_channels
        torch.testing.assert_close(pruned_prelu.weight, getattr(model, prelu).weight[kept], rtol=0, atol=0)
    assert res.model.get_submodule("conv1").out_channels < 10
    with torch.no_grad():
        prob, box = res.model(X)
    assert prob.shape == (1, 2, 3, 3) and box.shape == (1, 4, 3, 3)


@pytest.mark.parametrize("per_channel", [True, False], ids=["prelu_c", "prelu_1"])
def test_prelu_pruning_is_exact_once_removed_weights_are_zero(per_channel):
    run = zero_then_prune(captured(_PNet(per_channel)), (X,), PruneConfig(ratio=0.3))
    assert run.removed and run.macs_after < run.macs_before
    torch.testing.assert_close(run.pruned, run.zeroed, rtol=1e-5, atol=1e-5)


def test_a_single_slope_prelu_passes_its_channels_through_unchanged():
    res, _ = _prune_stage(_PNet(per_channel=False), 0.3)
    assert _mac_ratio(res) < 1
    assert all(res.model.get_submodule(f"prelu{i}").weight.shape == (1,) for i in (1, 2, 3))


def test_blocked_units_are_counted_by_reason_in_the_stats_and_named_in_the_table():
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.Softplus(), nn.Conv2d(8, 6, 3), nn.ReLU(), nn.Conv2d(6, 4, 1)
    )
    gm = captured(model)
    context = PassContext(example_inputs=(X,))
    (record,) = PassManager([PruneChannels(ratio=0.5)]).run(gm, context)
    assert record.stats["blocked:not_in_table"] == 8  # Softplus is not in the table: conv 0 keeps its 8
    assert record.stats["blocked:network_output"] == 4
    assert record.modified and gm.get_submodule("2").out_channels == 3
    statuses = " ".join(str(row["status"]) for row in context.tables["pruning"])
    assert "Softplus (1) is not in the channel-dependency table" in statuses
    assert np.isclose(sum(v for k, v in record.stats.items() if k.startswith("blocked:")), 12)
