"""MobileNetV2 (Sandler et al., 2018): inverted residuals with depthwise 3x3 convs and ReLU6."""

from __future__ import annotations

from torch import Tensor, nn


def _conv_bn_relu6(c_in: int, c_out: int, kernel: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU6(inplace=True),
    )


class InvertedResidual(nn.Module):
    """1x1 expand -> 3x3 depthwise -> 1x1 linear projection, with a residual when shapes allow."""

    def __init__(self, c_in: int, c_out: int, stride: int, expand_ratio: int):
        super().__init__()
        hidden = c_in * expand_ratio
        self.use_residual = stride == 1 and c_in == c_out
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(_conv_bn_relu6(c_in, hidden, 1))
        layers += [
            _conv_bn_relu6(hidden, hidden, 3, stride, groups=hidden),
            nn.Conv2d(hidden, c_out, 1, bias=False),
            nn.BatchNorm2d(c_out),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv(x) if self.use_residual else self.conv(x)


# (expand ratio, channels, repeats, stride) of the published network.
_V2_SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                (6, 320, 1, 1))  # fmt: skip


class MobileNetV2(nn.Module):
    def __init__(
        self,
        num_classes: int = 1000,
        width_mult: float = 1.0,
        settings: tuple[tuple[int, int, int, int], ...] = _V2_SETTINGS,
        last_channels: int = 1280,
        in_channels: int = 3,
        stem: tuple[int, int] = (32, 2),  # the first conv's channels (before width_mult) and stride
    ):
        super().__init__()
        c_in = max(8, int(stem[0] * width_mult))
        features: list[nn.Module] = [_conv_bn_relu6(in_channels, c_in, 3, stem[1])]
        for t, c, n, s in settings:
            c_out = max(8, int(c * width_mult))
            for i in range(n):
                features.append(InvertedResidual(c_in, c_out, s if i == 0 else 1, t))
                c_in = c_out
        last = max(last_channels, int(last_channels * width_mult)) if width_mult > 1 else last_channels
        features.append(_conv_bn_relu6(c_in, last, 1))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(last, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        x = nn.functional.adaptive_avg_pool2d(self.features(x), 1)
        return self.classifier(x.flatten(1))


def mobilenet_v2(num_classes: int = 1000) -> MobileNetV2:
    """The published MobileNetV2 (3.5 M parameters, 0.30 GMACs at 224x224)."""
    return MobileNetV2(num_classes)


def mobilenet_v2_tiny(num_classes: int = 10) -> MobileNetV2:
    """A three-stage MobileNetV2 for tests."""
    return MobileNetV2(num_classes, settings=((1, 8, 1, 1), (4, 16, 2, 2), (4, 24, 2, 2)), last_channels=64)


#: (expand ratio, channels, repeats, stride) of :func:`mobilenet_fashion`: 28x28 -> 14x14 in the first block,
#: 7x7 after the second stage, 4x4 in the last.
_FASHION_SETTINGS = ((1, 16, 1, 2), (4, 24, 2, 2), (4, 32, 2, 1), (4, 64, 1, 2))


def mobilenet_fashion(num_classes: int = 10) -> MobileNetV2:
    """A small MobileNetV2 for 28x28 grayscale images (Fashion-MNIST): a full-resolution 3x3 stem (1 -> 16,
    stride 1), six inverted residuals with ReLU6 and BatchNorm (depthwise 3x3, expand ratio 4 after the
    first), a 1x1 conv to 256 channels, global average pooling and a linear classifier: 2.1 M MACs."""
    return MobileNetV2(
        num_classes, settings=_FASHION_SETTINGS, last_channels=256, in_channels=1, stem=(16, 1)
    )
