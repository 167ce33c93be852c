"""Constructed cases for the post-training quantization passes (equalize, bias_correction)."""

from __future__ import annotations

import copy

import torch
import torch.fx as fx
from torch import nn

from graphopt.frontend.capture import capture
from graphopt.passes import Calibrate, InsertFakeQuant
from graphopt.pipeline.pass_base import Pass, PassContext
from graphopt.pipeline.pass_manager import PassManager, PassRecord
from graphopt.quant import QuantScheme
from graphopt.quant.options import InsertFakeQuantOptions

PER_TENSOR = QuantScheme(per_channel=False)


class ThreeConvNet(nn.Module):
    """conv -> ReLU -> conv -> ReLU -> 1x1 conv -> mean -> linear: two equalizable pairs."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 16, 3, padding=1)
        self.c2 = nn.Conv2d(16, 16, 3, padding=1)
        self.c3 = nn.Conv2d(16, 16, 1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.c2(torch.relu(self.c1(x))))
        return self.fc(self.c3(x).mean((2, 3)))


def rescaled(model: ThreeConvNet, spread: float = 100.0) -> ThreeConvNet:
    """A copy computing the same function, with the channels between c1 and c2 scaled by factors from
    ``1 / spread`` to ``spread`` (c2's input columns by the inverse), and likewise between c2 and c3: a
    per-tensor scale of c1 or c2 rounds the small channels to nothing."""
    out = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(1)
    f = spread ** torch.linspace(-1, 1, 16)
    g = (spread ** torch.linspace(1, -1, 16))[torch.randperm(16, generator=gen)]
    with torch.no_grad():
        out.c1.weight *= f[:, None, None, None]
        out.c1.bias *= f
        out.c2.weight *= g[:, None, None, None] / f[None, :, None, None]
        out.c2.bias *= g
        out.c3.weight /= g[None, :, None, None]
    return out


def rescaled_case() -> tuple[ThreeConvNet, ThreeConvNet]:
    """(the original, the rescaled twin), both in eval mode."""
    torch.manual_seed(0)
    base = ThreeConvNet().eval()
    return base, rescaled(base).eval()


def calibration_batches(shape: tuple[int, ...], batches: int = 4, seed: int = 2) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(*shape, generator=gen) for _ in range(batches)]


def run_passes(
    model: nn.Module, passes: list[Pass], calibration: list[torch.Tensor]
) -> tuple[fx.GraphModule, list[PassRecord], PassContext]:
    """Capture a copy of ``model`` and run ``passes`` through a PassManager (exact ones checked)."""
    gm = capture(copy.deepcopy(model).eval()).gm
    context = PassContext((calibration[0][:2],), calibration_data=calibration)
    records = PassManager(passes).run(gm, context)
    return gm, records, context


def int8_passes(scheme: QuantScheme) -> list[Pass]:
    return [InsertFakeQuant(InsertFakeQuantOptions(scheme=scheme)), Calibrate()]
