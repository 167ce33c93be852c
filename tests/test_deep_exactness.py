"""The exact-pass check judges the rewrite, not float32 rounding, on deep networks.

A 67-layer bottleneck ResNet with large BatchNorm gains and logits that nearly cancel: float32 rounding
alone moves the logits by ~8x the output-relative tolerance when BatchNorm is folded, so a float32-only
check refused every target. The float64 re-check passes it, and still catches a fold that is really wrong
(epsilon dropped).
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import graphopt
from graphopt import PassContext, PassError, PassManager
from graphopt.frontend.capture import capture
from graphopt.passes import FoldBatchNorm
from graphopt.zoo.resnet import Bottleneck, ResNet
from tests.helpers import outputs


def _deep_resnet_with_cancelling_logits() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = ResNet(Bottleneck, (3, 4, 12, 3), base_width=8, num_classes=10, stem_stride=1)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-1, 1)
            module.running_var.uniform_(0.02, 0.5)  # gains up to ~7 per layer: activations reach ~1e5
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.5, 0.5)
    model.eval()
    x = torch.randn(1, 3, 16, 16)
    x = torch.cat([x, x + 0.01 * torch.randn_like(x)])
    with torch.no_grad():  # the classifier's bias cancels the mean feature: logits are small, features not
        features = model.pool(model.stages(model.stem(x))).flatten(1)
        model.fc.bias.copy_(-(features.mean(0) @ model.fc.weight.T))
    return model, x


class FoldWithoutEpsilon(FoldBatchNorm):
    """A wrong fold: BatchNorm's epsilon forgotten."""

    def call(self, gm):
        for module in gm.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.eps = 0.0
        return super().call(gm)


def test_float32_rounding_alone_exceeds_the_output_relative_tolerance():
    """The premise: the float32 check by itself would refuse this exact fold."""
    model, x = _deep_resnet_with_cancelling_logits()
    gm = capture(copy.deepcopy(model)).gm
    before = outputs(gm, x)
    FoldBatchNorm().call(gm)
    gm.recompile()
    moved = float((outputs(gm, x) - before).abs().max())
    assert moved > 1e-4 * max(1.0, float(before.abs().max()))


def test_a_deep_network_folds_and_optimizes():
    model, x = _deep_resnet_with_cancelling_logits()
    res = graphopt.optimize(model, "generic-fp32", example_inputs=(x,))
    assert res.report.stage("fold_batchnorm").stats["folded"] == 71  # 22 blocks x 3, 4 shortcuts, the stem
    torch.testing.assert_close(outputs(res.model, x), outputs(model, x), rtol=1e-3, atol=0.1)


def test_a_wrong_fold_is_still_caught_on_the_deep_network():
    model, x = _deep_resnet_with_cancelling_logits()
    gm = capture(copy.deepcopy(model)).gm
    with pytest.raises(
        PassError, match=r"in float64 the rewrite moved them by up to .*: the rewrite is wrong"
    ):
        PassManager([FoldWithoutEpsilon()]).run(gm, PassContext(example_inputs=(x,)))
