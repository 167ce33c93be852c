"""Space-to-depth: the data movement the ``space_to_depth`` pass puts in front of shallow stride-2 convs.

``SpaceToDepth(block=b)`` moves every ``b x b`` spatial block of ``x[N, C, H, W]`` into channels, in ONNX
``SpaceToDepth`` (DCR) order (``pads`` first zero-pads the end of an odd-sized axis)::

    y[n, (i * b + j) * C + c, p, q] = x[n, c, p * b + i, q * b + j]

A conv with stride ``b``, kernel ``k`` and padding ``p`` over ``x`` is a stride-1 conv over ``y``. Along one
axis, output ``t`` reads input row ``r = b t + kh - p`` for tap ``kh``; writing ``kh - p = b d + i`` with
phase ``i in [0, b)``, that is row ``t + d`` of phase ``i`` of ``y``. So the new kernel spans the offsets
``d`` from ``d_min = floor(-p / b)`` to ``d_max = floor((k - 1 - p) / b)``, and

    W'[o, (i * b + j) * C + c, u, v] = W[o, c, b (u + d_min) + i + p, b (v + d_min') + j + p']

(zero where that tap is outside the original kernel), applied with zero padding ``-d_min`` before and
whatever keeps the output size after: the same output up to float summation order. Channels grow to
``b^2 C``, the kernel shrinks to ``d_max - d_min + 1``; MACs grow because the phases are padded to whole
offsets (7x7/2: 1.31x, 3x3/2: 1.78x).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class SpaceToDepth(nn.Module):
    """``block x block`` spatial blocks to channels (ONNX SpaceToDepth order), after zero-padding the end
    of odd-sized axes by ``pads = (right, bottom)``."""

    def __init__(self, block: int, pads: tuple[int, int] = (0, 0)):
        super().__init__()
        self.block = block
        self.pads = tuple(pads)

    def forward(self, x: Tensor) -> Tensor:
        if any(self.pads):
            x = F.pad(x, (0, self.pads[0], 0, self.pads[1]))
        n, c, h, w = x.shape
        b = self.block
        x = x.reshape(n, c, h // b, b, w // b, b).permute(0, 3, 5, 1, 2, 4)
        return x.reshape(n, b * b * c, h // b, w // b)

    def extra_repr(self) -> str:
        return f"block={self.block}, pads={self.pads}"


@dataclass(frozen=True)
class AxisPlan:
    """One spatial axis of the rewrite: offsets ``d_min..d_min + kernel - 1``, padding around the
    space-to-depth output, and the end padding that makes the input a multiple of the block."""

    d_min: int
    kernel: int
    pad_before: int
    pad_after: int
    pad_input: int


def plan_axis(size: int, kernel: int, padding: int, block: int) -> AxisPlan | None:
    """The rewrite along one axis, or None when it would need cropping (the output would be too long)."""
    out = (size + 2 * padding - kernel) // block + 1
    d_min, d_max = (-padding) // block, (kernel - 1 - padding) // block  # floor division
    pad_input = -size % block
    blocks = (size + pad_input) // block
    span = d_max - d_min + 1
    pad_after = out - 1 + span - blocks + d_min
    if pad_after < 0:
        return None
    return AxisPlan(d_min=d_min, kernel=span, pad_before=-d_min, pad_after=pad_after, pad_input=pad_input)


def phase_weight(
    weight: Tensor, block: int, padding: tuple[int, int], plans: tuple[AxisPlan, AxisPlan]
) -> Tensor:
    """``W[O, C, kh, kw]`` as the weight ``W'[O, block^2 C, kh', kw']`` of the equivalent stride-1 conv."""
    out_ch, in_ch, kh, kw = weight.shape
    rows, cols = plans
    phases = weight.new_zeros(out_ch, block, block, in_ch, rows.kernel, cols.kernel)
    for i in range(block):
        for u in range(rows.kernel):
            tap_h = block * (u + rows.d_min) + i + padding[0]
            if not 0 <= tap_h < kh:
                continue
            for j in range(block):
                for v in range(cols.kernel):
                    tap_w = block * (v + cols.d_min) + j + padding[1]
                    if 0 <= tap_w < kw:
                        phases[:, i, j, :, u, v] = weight[:, :, tap_h, tap_w]
    return phases.reshape(out_ch, block * block * in_ch, rows.kernel, cols.kernel)


def equivalent_conv(conv: nn.Conv2d, block: int, plans: tuple[AxisPlan, AxisPlan]) -> nn.Conv2d:
    """The stride-1, unpadded conv over space-to-depth output (padded per ``plans``) computing ``conv``."""
    weight = phase_weight(conv.weight.detach(), block, conv.padding, plans)
    out = nn.Conv2d(weight.shape[1], conv.out_channels, tuple(weight.shape[2:]), bias=conv.bias is not None)
    out = out.to(weight.device, weight.dtype)
    with torch.no_grad():
        out.weight.copy_(weight)
        if conv.bias is not None:
            out.bias.copy_(conv.bias.detach())
    return out.train(conv.training)
