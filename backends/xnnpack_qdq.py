"""int8 quantize / dequantize as XNNPACK's partitioner reads them: per tensor, int8, range -128..127."""

from __future__ import annotations

import torch
import torch.fx as fx
from torch import Tensor, nn

from graphopt.ir.extensions import ActivationQuantizer

_qd = torch.ops.quantized_decomposed


def quantize_int8(x: Tensor, scale: float, zero_point: int) -> Tensor:
    return _qd.quantize_per_tensor(x, scale, zero_point, -128, 127, torch.int8)


def dequantize_int8(q: Tensor, scale: float, zero_point: int) -> Tensor:
    return _qd.dequantize_per_tensor(q, scale, zero_point, -128, 127, torch.int8)


class Int8RoundTrip(nn.Module):
    """A frozen activation quantizer as int8 quantize -> dequantize (u8 zero points shifted by 128)."""

    def __init__(self, quantizer: ActivationQuantizer):
        super().__init__()
        assert quantizer.scale is not None and quantizer.zero_point is not None
        shift = 0 if quantizer.scheme.activations == "int8" else 128
        self.scale, self.zero_point = quantizer.scale, quantizer.zero_point - shift

    def forward(self, x: Tensor) -> Tensor:
        return dequantize_int8(quantize_int8(x, self.scale, self.zero_point), self.scale, self.zero_point)


def quantize_then_dequantize_per_user(
    graph: fx.Graph, source: fx.Node, replaced: fx.Node, qparams: tuple[float, int]
) -> None:
    """Quantize ``source`` once (right after ``replaced``) and give every user of ``replaced`` its own
    dequantize of it, in place of ``replaced``: the ``q -> dq`` per consumer that PT2E's convert leaves
    and XNNPACK's partitioner takes."""
    users = list(replaced.users)
    with graph.inserting_after(replaced):
        quantized = graph.call_function(quantize_int8, (source, *qparams))
    for user in users:
        with graph.inserting_before(user):
            dequantized = graph.call_function(dequantize_int8, (quantized, *qparams))
        user.replace_input_with(replaced, dequantized)
