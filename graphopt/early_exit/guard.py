"""The fp32 twin of an int8 network with exits, and the samples its latency guard times on.

An exit model's cost depends on its input (an easy sample leaves at the first head), so the latency guard
cannot time it on the example input alone: it times the int8 and the fp32 artifact one sample at a time
over held-out inputs, interleaved, and compares the means. The fp32 alternative is the same network with
each backbone segment made fp32 (:func:`~graphopt.quant.float_twin.float_twin`: the dequantized weights
QAT reached, the activation quantizers taken out) and the same heads and thresholds. The thresholds were
calibrated on the int8 network's confidences; the fp32 twin's differ by the rounding int8 adds, so the
report's accuracy of whichever ships is measured on the shipped artifact itself.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import torch
import torch.fx as fx

from graphopt.early_exit.measure import has_exits
from graphopt.early_exit.network import EarlyExitNetwork
from graphopt.ir.graph import deep_copy
from graphopt.quant.float_twin import float_twin, has_int8_layers

if TYPE_CHECKING:
    from graphopt.pipeline.pass_base import PassContext

#: Samples the guard times each artifact on: enough for a mean within a few percent at batch 1.
GUARD_SAMPLES = 200


def exit_float_twin(gm: fx.GraphModule) -> fx.GraphModule:
    """A new graph: ``gm`` with every int8 segment of its exit network in fp32."""
    twin = deep_copy(gm)
    for network in (m for m in twin.modules() if isinstance(m, EarlyExitNetwork)):
        for k, segment in enumerate(network.segments):
            if isinstance(segment, fx.GraphModule) and has_int8_layers(segment):
                network.segments[k] = float_twin(segment)
    return twin


def guard_samples(
    batches: Iterable[tuple[torch.Tensor, ...]], limit: int = GUARD_SAMPLES
) -> list[tuple[torch.Tensor, ...]]:
    """Up to ``limit`` batch-1 input tuples, in order, from batches of input tuples: the samples a
    per-sample timing runs over."""
    samples: list[tuple[torch.Tensor, ...]] = []
    for tensors in batches:
        for i in range(len(tensors[0])):
            if len(samples) == limit:
                return samples
            samples.append(tuple(t[i : i + 1] for t in tensors))
    return samples


def exit_guard_samples(gm: fx.GraphModule, context: PassContext) -> list[tuple[torch.Tensor, ...]]:
    """What the latency guard times an early-exit model on: held-out inputs (validation data, else the
    calibration inputs); none for a model without exits. Read after every pass ran, so it does not count
    as a pass reading the data."""
    if not has_exits(gm):
        return []
    data = context.session.data  # not through the context's views: the guard is no pass reading data
    return guard_samples([data.validation.inputs] if data.validation is not None else data.calibration or [])
