"""Factories the CLI tests load as ``tests.factories:<name>``."""

from __future__ import annotations

from torch import nn


def small_cnn() -> nn.Module:
    layers = [nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    return nn.Sequential(*layers, nn.Linear(8, 4))


def broken() -> nn.Module:
    raise RuntimeError("weights file missing")


def rgb_stem_net() -> nn.Module:
    """A 7x7 stride-2 stem over RGB (what ``space_to_depth`` rewrites), a max-pool, a residual block."""
    from graphopt.zoo.resnet import BasicBlock, ResNet

    return ResNet(BasicBlock, (1,), base_width=16, num_classes=10)
