"""Small networks built around the channel-coupling patterns that break structured tools.

Each one exercises a pattern a real architecture family uses: squeeze-excitation gates (SENet, EfficientNet),
DenseNet-style concatenation, ShuffleNet's channel shuffle and channel split, grouped convolutions
(ResNeXt), and ``torch.split`` / ``chunk`` with unequal sizes (mixed convs).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def conv_bn_relu(c_in: int, c_out: int, kernel: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class _Classifier(nn.Module):
    """Global average pooling and a linear head, shared by the networks below."""

    def __init__(self, channels: int, num_classes: int):
        super().__init__()
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(x.mean(dim=(2, 3)))


class SqueezeExcitation(nn.Module):
    """``x * sigmoid(W2 relu(W1 avgpool(x)))`` (Hu et al., 2018)."""

    def __init__(self, channels: int, reduction: int = 4):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, channels // reduction, 1)
        self.relu = nn.ReLU()
        self.fc2 = nn.Conv2d(channels // reduction, channels, 1)
        self.gate = nn.Sigmoid()

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gate(self.fc2(self.relu(self.fc1(self.pool(x)))))


class SENet(nn.Module):
    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.body = nn.Sequential(conv_bn_relu(3, 16), SqueezeExcitation(16), conv_bn_relu(16, 32, stride=2),
                                  SqueezeExcitation(32))  # fmt: skip
        self.head = _Classifier(32, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))


class DenseLayer(nn.Module):
    """BN-ReLU-Conv producing ``growth`` channels, concatenated onto its input (Huang et al., 2017)."""

    def __init__(self, c_in: int, growth: int):
        super().__init__()
        self.conv = conv_bn_relu(c_in, growth)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([x, self.conv(x)], dim=1)


class DenseNet(nn.Module):
    def __init__(self, num_classes: int = 10, growth: int = 8):
        super().__init__()
        self.stem = conv_bn_relu(3, 16)
        self.block = nn.Sequential(DenseLayer(16, growth), DenseLayer(16 + growth, growth))
        self.transition = conv_bn_relu(16 + 2 * growth, 24, kernel=1)
        self.head = _Classifier(24, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.transition(self.block(self.stem(x))))


def channel_shuffle(x: Tensor, groups: int) -> Tensor:
    """Interleave channel groups: view as ``[N, g, C/g, H, W]``, swap axes 1 and 2, flatten back."""
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class ShuffleUnit(nn.Module):
    """ShuffleNetV2 basic unit: split channels in half, transform one half, concatenate, shuffle."""

    def __init__(self, channels: int):
        super().__init__()
        half = channels // 2
        self.branch = nn.Sequential(
            conv_bn_relu(half, half, 1),
            nn.Conv2d(half, half, 3, 1, 1, groups=half, bias=False),
            nn.BatchNorm2d(half),
            conv_bn_relu(half, half, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        keep, transform = x.chunk(2, dim=1)
        return channel_shuffle(torch.cat([keep, self.branch(transform)], dim=1), 2)


class ShuffleNet(nn.Module):
    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.stem = conv_bn_relu(3, 16, stride=2)
        self.units = nn.Sequential(ShuffleUnit(16), ShuffleUnit(16))
        self.head = _Classifier(16, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.units(self.stem(x)))


class GroupedConvNet(nn.Module):
    """ResNeXt-style block: 1x1 reduce, 3x3 grouped conv (4 groups), 1x1 expand, residual."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.stem = conv_bn_relu(3, 32)
        self.reduce = conv_bn_relu(32, 16, kernel=1)
        self.grouped = conv_bn_relu(16, 16, groups=4)
        self.expand = nn.Sequential(nn.Conv2d(16, 32, 1, bias=False), nn.BatchNorm2d(32))
        self.relu = nn.ReLU()
        self.head = _Classifier(32, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        x = self.relu(x + self.expand(self.grouped(self.reduce(x))))
        return self.head(x)


class SplitNet(nn.Module):
    """Mixed convolutions: ``torch.split`` into unequal parts, a different kernel per part, concatenate."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.stem = conv_bn_relu(3, 24)
        self.sizes = [8, 16]
        self.small = conv_bn_relu(8, 8, kernel=3)
        self.large = conv_bn_relu(16, 16, kernel=5)
        self.head = _Classifier(24, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        a, b = torch.split(self.stem(x), self.sizes, dim=1)
        return self.head(torch.cat([self.small(a), self.large(b)], dim=1))
