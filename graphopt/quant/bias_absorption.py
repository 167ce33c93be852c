"""High-bias absorption (Nagel et al. 2019, "Data-Free Quantization", sec. 4.1): the math.

Equalization divides some channels by ``s_i < 1``, which multiplies their bias; a large bias widens the
range the activation quantizer after the ReLU must cover. For ``h = relu(W1 x + b1)``, ``y = W2 h + b2`` and
a per-channel ``c >= 0`` below every pre-activation ``a = W1 x + b1`` that occurs, ``relu(a - c) + c =
relu(a)`` (both are ``a`` since ``a >= c >= 0``), so

    b1' = b1 - c,     b2' = b2 + sum_{j,k} W2[:, j, k] c_j

computes the same output and the ReLU's output shrinks by ``c``. Where an input drives a pre-activation below
``c`` the function changes (``c`` on one side, ``relu(a)`` on the other): the rewrite is lossy. ``c`` is
``max(0, beta - 3 gamma)`` from the BatchNorm statistics recorded before folding (DFQ: all but 0.13 % of a
normal lies above ``mean - 3 std``), else the smallest pre-activation seen on calibration data. A conv with
zero padding sees 0 at the borders where ``c`` would be needed, so ``W2`` must be a linear or a conv
without padding (the 1x1 projections of inverted residuals).
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from graphopt.quant.equalization import weighted_input_sum


class _Stop(Exception):
    """Raised by the hook: nothing after the measured layer needs to run."""


def absorbs_padding_free(layer: nn.Module) -> bool:
    """Whether adding a constant to ``layer``'s input is the same as adding ``W c`` to its output."""
    if isinstance(layer, nn.Linear):
        return True
    padding = getattr(layer, "padding", None)
    return padding == "valid" or (isinstance(padding, tuple) and all(p == 0 for p in padding))


def absorb(first: nn.Module, second: nn.Module, amount: torch.Tensor) -> None:
    """Move ``amount`` (per channel, >= 0) from ``first``'s bias into ``second``'s (new Parameters)."""
    amount = amount.double()
    dtype = first.weight.dtype
    old_first = first.bias.detach().double() if first.bias is not None else torch.zeros_like(amount)
    first.bias = nn.Parameter((old_first - amount).to(dtype))
    groups = getattr(second, "groups", 1)
    shift = weighted_input_sum(second.weight.detach().double(), amount, groups)
    old_second = second.bias.detach().double() if second.bias is not None else torch.zeros_like(shift)
    second.bias = nn.Parameter((old_second + shift).to(second.weight.dtype))


def smallest_output(graph: nn.Module, layer: nn.Module, batches: list[tuple]) -> torch.Tensor:
    """Per output channel, the smallest value ``layer`` outputs in ``graph`` on ``batches`` (the forward
    stops at the layer)."""
    lowest: list[torch.Tensor] = []
    channel_axis = -1 if isinstance(layer, nn.Linear) else 1

    def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        per_channel = output.detach().double().movedim(channel_axis, -1)
        lowest.append(per_channel.reshape(-1, per_channel.shape[-1]).amin(dim=0))
        raise _Stop

    handle = layer.register_forward_hook(hook)
    try:
        with torch.no_grad():
            for inputs in batches:
                with contextlib.suppress(_Stop):
                    graph(*inputs)
    finally:
        handle.remove()
    return torch.stack(lowest).amin(dim=0)
