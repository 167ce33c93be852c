"""Per-layer fp32 fall-back for dynamic int8, by measured sensitivity.

A few layers of a transformer carry most of the int8 error (in all-MiniLM-L6-v2 the first FFN output
projection: keeping it alone in fp32 lifts the worst Lee-corpus document's cosine to fp32 from 0.988 to
0.992). On the data given, each int8 layer is ranked once by how much putting it alone back in fp32
raises the worst sample's output cosine to the fp32 model; layers then go back in that order while the
worst cosine is below ``min_cosine``, up to ``max_layers``. That costs ``n + k`` forward passes per batch
(``n`` layers, ``k`` put back), where re-ranking after every choice cost ``n * k``: 207 s instead of
about 60 s on MiniLM with 4 layers back.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.fx as fx
from torch import nn

from graphopt.ir.graph import set_module
from graphopt.reporting.numerics import first_output


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
    if current >= min_cosine or max_layers < 1:
        return result
    gains = {}
    for name, original in originals.items():
        quantized = gm.get_submodule(name)
        set_module(gm, name, original)
        gains[name] = worst_cosine(gm, batches, reference)
        set_module(gm, name, quantized)
    for name in sorted(gains, key=gains.__getitem__, reverse=True)[:max_layers]:
        set_module(gm, name, originals[name])
        current = worst_cosine(gm, batches, reference)
        result.kept_fp32.append((name, current))
        if current >= min_cosine:
            break
    result.after = current
    return result
