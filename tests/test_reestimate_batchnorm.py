"""BatchNorm re-estimation pools exact statistics and works at batch 1 with a 1x1 map."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import graphopt
from graphopt.recovery.batchnorm import reestimate_batchnorm


class ImagePooling(nn.Module):
    """DeepLabV3's ASPP image-pooling branch beside a plain conv branch: its BatchNorm sees a 1x1 map."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.branch = nn.Sequential(nn.Conv2d(16, 16, 1), nn.BatchNorm2d(16), nn.ReLU())
        self.pooling = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Conv2d(16, 16, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU()
        )
        self.head = nn.Conv2d(32, 4, 1)

    def forward(self, x):
        x = self.stem(x)
        pooled = F.interpolate(self.pooling(x), size=x.shape[-2:], mode="bilinear", align_corners=False)
        return self.head(torch.cat([self.branch(x), pooled], dim=1))


def test_statistics_are_the_pooled_mean_and_unbiased_variance_of_all_samples():
    torch.manual_seed(0)
    norm = nn.BatchNorm1d(3).eval()
    samples = [torch.randn(1, 3) * 2 + 1 for _ in range(40)]
    assert reestimate_batchnorm(norm, samples) == 40
    stacked = torch.cat(samples)
    torch.testing.assert_close(norm.running_mean, stacked.mean(0), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(norm.running_var, stacked.var(0, unbiased=True), rtol=1e-5, atol=1e-6)
    assert not norm.training


def test_batch_one_calibration_through_a_one_by_one_batchnorm():
    torch.manual_seed(0)
    model = ImagePooling().eval()
    calibration = [torch.randn(1, 3, 12, 12) for _ in range(8)]
    reestimate_batchnorm(model, calibration)  # train-mode BatchNorm raised "more than 1 value per channel"
    pooled_norm = model.pooling[2]
    assert float(pooled_norm.running_var.min()) > 0


@pytest.mark.parametrize("prune", [0.3])
def test_pruning_with_batch_one_calibration_optimizes(prune):
    torch.manual_seed(0)
    model = ImagePooling().eval()
    x = torch.randn(1, 3, 12, 12)
    calibration = [torch.randn(1, 3, 12, 12) for _ in range(8)]
    res = graphopt.optimize(
        model, "generic-fp32", example_inputs=(x,), calibration_data=calibration, prune=prune
    )
    assert res.report.stage("reestimate_batchnorm").stats["batches"] == 8
    assert res.report.stage("prune_channels").modified
