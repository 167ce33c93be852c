"""Sequential MSE weight ranges: each layer's weight scales chosen by the error of its output.

``max|w_c| / r`` covers the largest weight of a channel; a smaller scale clips that weight and gives every
other one finer steps. The weight-only search (``weight_clipping="mse"``, :mod:`graphopt.quant.scheme`)
picks the scale with the least error in the *weights*; which weights matter depends on the inputs they
meet, so this one picks it by the error of the layer's *output* on calibration data (AIMET's "sequential
MSE"):

    s_c(a) = a * max|w_c| / r,   a in a grid on [min_fraction, 1], and the layer's current scale
    Q_a(w) = s(a) * clamp(round(w / s(a)), -r, r)
    a_c = argmin_a  sum_n ( f(Q_a(w_c) . x~_n + b_c) - f(w_c . x_n + b_c) )^2

- ``f`` is the ReLU / ReLU6 that follows the layer, when one does (an error it clips costs nothing), else
  the identity; ``x~`` is what the layer reads in the partly quantized model (earlier layers at their
  chosen scales, activation quantizers on: "sequential"), ``x`` what it reads in the fp32 model.
- Output channel ``c`` depends on row ``c`` of ``W`` alone, so one forward per candidate ``a`` scores every
  channel at once, and each channel takes its own best ``a``. With one scale per tensor, one ``a`` for the
  whole weight, by the summed error.
- The layer as it is (its scale and its integers, rounded by AdaRound or not) is a candidate, so the output
  error on the calibration sample never grows, and a channel it keeps is left as it was.

Cost: one forward of the layer per candidate on the captured inputs (20 by default), against AdaRound's
hundreds of forward/backward steps.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

#: ``weight -> output``: the layer on its captured inputs (bias and following activation included).
LayerOutput = Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class RangeSearchResult:
    scales: Tensor  # (C,) the chosen scale per output channel (equal values with one scale per tensor)
    changed: Tensor  # (C,) bool: the channels whose weights the chosen scale requantizes
    fractions: Tensor  # (C,) each chosen scale over max|w_c| / r (the clipping: 1 clips nothing)
    mse_before: float  # output error with the scales the layer had, mean over outputs
    mse_after: float


def candidate_fractions(candidates: int, min_fraction: float) -> Tensor:
    """``candidates`` fractions of the unclipped scale, evenly from ``min_fraction`` to 1."""
    return torch.linspace(min_fraction, 1.0, candidates, dtype=torch.float64)


def search_weight_scales(
    weight: Tensor, current_scales: Tensor, current_weight: Tensor, bound: int, per_channel: bool,
    output: LayerOutput, target: Tensor, channel_dim: int, fractions: Tensor,
) -> RangeSearchResult:  # fmt: skip
    """The scales with the least output error (module docstring): the layer as it is (``current_weight``,
    its dequantized integers, at ``current_scales``) against ``fractions`` of ``max|w_c| / bound`` with
    nearest rounding of ``weight``; ``output`` maps a dequantized weight to the layer's output, whose
    channels lie along ``channel_dim``, to be compared with ``target``."""
    weight = weight.detach()
    channels = torch.arange(weight.shape[0])
    peak = weight.reshape(weight.shape[0], -1).abs().amax(dim=1)
    if not per_channel:
        peak = peak.amax().expand(weight.shape[0])
    unclipped = (peak.double() / bound).clamp(min=1e-12)
    options = [current_scales.detach().double(), *(unclipped * a for a in fractions)]
    weights = [current_weight.detach(), *(_dequantized(weight, s, bound) for s in options[1:])]
    errors = torch.stack([_channel_errors(output(w), target, channel_dim) for w in weights])
    # per tensor: one candidate for every channel, by the error summed over them
    best = errors.argmin(dim=0) if per_channel else errors.sum(dim=1).argmin().expand(weight.shape[0])
    scales = torch.stack(options)[best, channels]
    count = target.numel()
    return RangeSearchResult(
        scales=scales.float(),
        changed=best != 0,
        fractions=(scales / unclipped).float(),
        mse_before=float(errors[0].sum()) / count,
        mse_after=float(errors[best, channels].sum()) / count,
    )


def _dequantized(weight: Tensor, scales: Tensor, bound: int) -> Tensor:
    shape = (-1, *([1] * (weight.dim() - 1)))
    s = scales.reshape(shape)
    return (torch.clamp(torch.round(weight.double() / s), -bound, bound) * s).to(weight.dtype)


def _channel_errors(output: Tensor, target: Tensor, channel_dim: int) -> Tensor:
    """The squared error summed per output channel: ``(C,)``, in float64."""
    squared = (output.double() - target.double()).pow(2)
    return squared.movedim(channel_dim, 0).reshape(squared.shape[channel_dim], -1).sum(dim=1)
