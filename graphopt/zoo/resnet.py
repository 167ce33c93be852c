"""ResNet with basic and bottleneck blocks (He et al., 2016), written like torchvision's.

Like torchvision's BasicBlock, one ``nn.ReLU`` module is called twice per block: anything keyed on module
identity must cope with a module that has several call sites.
"""

from __future__ import annotations

from torch import Tensor, nn


def _conv_bn(c_in: int, c_out: int, kernel: int, stride: int = 1, groups: int = 1) -> list[nn.Module]:
    return [
        nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(c_out),
    ]


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, c_in: int, width: int, stride: int = 1):
        super().__init__()
        self.conv1, self.bn1 = _conv_bn(c_in, width, 3, stride)
        self.conv2, self.bn2 = _conv_bn(width, width, 3)
        self.relu = nn.ReLU(inplace=True)  # called twice, as in torchvision
        self.downsample = (
            nn.Sequential(*_conv_bn(c_in, width, 1, stride)) if stride != 1 or c_in != width else None
        )

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, c_in: int, width: int, stride: int = 1):
        super().__init__()
        c_out = width * self.expansion
        self.conv1, self.bn1 = _conv_bn(c_in, width, 1)
        self.conv2, self.bn2 = _conv_bn(width, width, 3, stride)
        self.conv3, self.bn3 = _conv_bn(width, c_out, 1)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = (
            nn.Sequential(*_conv_bn(c_in, c_out, 1, stride)) if stride != 1 or c_in != c_out else None
        )

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        layers: tuple[int, ...],
        *,
        base_width: int = 64,
        num_classes: int = 1000,
        in_channels: int = 3,
        stem_stride: int = 2,
    ):
        super().__init__()
        stem: list[nn.Module] = [*_conv_bn(in_channels, base_width, 7 if stem_stride > 1 else 3, stem_stride)]
        stem.append(nn.ReLU(inplace=True))
        if stem_stride > 1:
            stem.append(nn.MaxPool2d(3, 2, 1))
        self.stem = nn.Sequential(*stem)
        c_in, stages = base_width, []
        for i, blocks in enumerate(layers):
            width = base_width * 2**i
            stage = []
            for j in range(blocks):
                stage.append(block(c_in, width, stride=2 if i > 0 and j == 0 else 1))
                c_in = width * block.expansion
            stages.append(nn.Sequential(*stage))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c_in, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.pool(self.stages(self.stem(x)))
        return self.fc(x.flatten(1))


def resnet18(num_classes: int = 1000, base_width: int = 64) -> ResNet:
    """ResNet-18: basic blocks (2, 2, 2, 2); 11.7 M parameters and 1.82 GMACs at 224x224 for base width 64."""
    return ResNet(BasicBlock, (2, 2, 2, 2), base_width=base_width, num_classes=num_classes)


def resnet_bottleneck_tiny(num_classes: int = 10) -> ResNet:
    """A small bottleneck ResNet (1, 1, 1) for tests."""
    return ResNet(Bottleneck, (1, 1, 1), base_width=8, num_classes=num_classes, stem_stride=1)


def resnet_basic_tiny(num_classes: int = 10) -> ResNet:
    """A small basic-block ResNet (1, 1, 1) for tests."""
    return ResNet(BasicBlock, (1, 1, 1), base_width=8, num_classes=num_classes, stem_stride=1)


def resnet_digits(num_classes: int = 10) -> ResNet:
    """A three-stage basic-block ResNet (2, 2, 2; widths 16/32/64) for 1x32x32 digits: deep enough that
    early exits matter (34 M MACs)."""
    return ResNet(BasicBlock, (2, 2, 2), base_width=16, num_classes=num_classes, in_channels=1, stem_stride=1)
