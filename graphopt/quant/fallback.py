"""Per-layer fp32 fall-back for dynamic int8, by measured sensitivity.

A few layers of a transformer carry most of the int8 error (in all-MiniLM-L6-v2 the first FFN output
projection: keeping it alone in fp32 lifts the worst Lee-corpus document's cosine to fp32 from 0.988 to
0.992). Greedy, on the data given: while the worst sample's output cosine to the fp32 model is below
``min_cosine``, put back in fp32 the one int8 layer whose return raises that worst cosine most, up to
``max_layers``. Each step costs one forward pass per remaining int8 layer and batch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.fx as fx
from torch import nn

from graphopt.ir import set_module
from graphopt.numerics import first_output


@dataclass
class FallbackResult:
    kept_fp32: list[tuple[str, float]]  # layer, worst cosine after putting it back
    before: float
    after: float


def worst_cosine(
    model: Callable[..., object], batches: Sequence[tuple[torch.Tensor, ...]], reference: list[torch.Tensor]
) -> float:
    """The lowest per-sample cosine between ``model``'s first output on ``batches`` and ``reference``."""
    worst = 1.0
    with torch.no_grad():
        for inputs, expected in zip(batches, reference, strict=True):
            got = first_output(model(*inputs)).flatten(1).double()
            cosine = torch.nn.functional.cosine_similarity(got, expected.flatten(1).double(), dim=1)
            worst = min(worst, float(cosine.min()))
    return worst


def fall_back(
    gm: fx.GraphModule,
    originals: dict[str, nn.Module],
    batches: Sequence[tuple[torch.Tensor, ...]],
    reference: list[torch.Tensor],
    min_cosine: float,
    max_layers: int,
) -> FallbackResult:
    """Put the most sensitive of ``originals`` (int8 layer name -> its fp32 module) back until the worst
    cosine reaches ``min_cosine`` (module docstring)."""
    current = worst_cosine(gm, batches, reference)
    result = FallbackResult([], current, current)
    quantized = {name: gm.get_submodule(name) for name in originals}
    while current < min_cosine and len(result.kept_fp32) < max_layers and quantized:
        trials = {}
        for name, module in quantized.items():
            set_module(gm, name, originals[name])
            trials[name] = worst_cosine(gm, batches, reference)
            set_module(gm, name, module)
        best = max(trials, key=trials.__getitem__)
        set_module(gm, best, originals[best])
        del quantized[best]
        current = trials[best]
        result.kept_fp32.append((best, current))
    result.after = current
    return result
