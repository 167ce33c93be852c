"""Networks whose forward torch.fx cannot trace whole.

``PadToMultiple`` pads the width to a multiple of a window size only when needed, the way Swin and other
window-attention models do: an ``if`` on a traced shape, which symbolic tracing rejects. Capture keeps it as
an opaque leaf; torch.export and tracing handle it, so the network still exports.

``SignGate`` branches on a tensor's *value*; it captures as a leaf too, but no exporter can keep both
branches: ONNX export must fail with a clear error that points to ``torch.cond``.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from graphopt.zoo.blocks import conv_bn_relu


class PadToMultiple(nn.Module):
    def __init__(self, multiple: int):
        super().__init__()
        self.multiple = multiple
        self.mix = nn.Conv2d(16, 16, 1)

    def forward(self, x: Tensor) -> Tensor:
        remainder = x.shape[-1] % self.multiple
        if remainder:
            x = F.pad(x, (0, self.multiple - remainder, 0, self.multiple - remainder))
        return self.mix(x)


class ControlFlowNet(nn.Module):
    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.stem = conv_bn_relu(3, 16, stride=2)
        self.pad = PadToMultiple(7)
        self.body = conv_bn_relu(16, 32)
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.body(self.pad(self.stem(x)))
        return self.fc(x.mean(dim=(2, 3)))


class SignGate(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        if x.mean() > 0:
            return x * 2
        return -x


class ValueControlFlowNet(nn.Module):
    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.stem = conv_bn_relu(3, 8)
        self.gate = SignGate()
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.stem(self.gate(x)).mean(dim=(2, 3)))
