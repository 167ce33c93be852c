"""Cross-layer equalization (Nagel et al. 2019, "Data-Free Quantization", sec. 4.1): the tensor math.

Two layers ``y = W2 f(W1 x + b1) + b2`` with ``f`` positively homogeneous per channel (ReLU, LeakyReLU,
identity, max / average pooling: ``f(a / s) = f(a) / s`` for ``s > 0``) compute the same function after
rescaling channel ``i`` of the tensor between them by ``1 / s_i``::

    W1[i] /= s_i,   b1[i] /= s_i,   W2[:, i] *= s_i

Per-tensor int8 gives every channel of a weight the step ``max_i r_i / 127``, with ``r_i`` the range
``max |w|`` of channel ``i``; a channel far below the largest rounds to a few levels, or to zero. The
scales that make the two ranges of every channel equal, ``r1_i / s_i = r2_i s_i``, are

    s_i = sqrt(r1_i r2_i) / r2_i = sqrt(r1_i / r2_i)

with ``r1_i`` the range of W1's output channel ``i`` and ``r2_i`` the range of W2's input channel ``i``;
both become ``sqrt(r1_i r2_i)``, which maximises the sum over both layers of each channel's range relative
to its tensor's range (DFQ, eq. 9-10). A channel either layer does not use (``r = 0``) keeps ``s_i = 1``.
A chain (conv -> depthwise conv -> conv) is equalized pair by pair, repeatedly, until the scales settle.

Input channel ``i`` of a grouped conv (``W2`` of shape ``[C_out, C_in / g, *k]``) is column ``i mod
(C_in / g)`` of the output rows of group ``i // (C_in / g)``; a depthwise conv's input channel ``i`` is its
whole kernel ``W2[i]``. A linear layer is a conv with one group and no kernel.

Everything here works on float64 tensors: the caller stores float32 once, at the end.
"""

from __future__ import annotations

import torch


def output_channel_ranges(weight: torch.Tensor) -> torch.Tensor:
    """``r1_i = max |W[i]|`` per output channel (axis 0)."""
    return weight.abs().reshape(weight.shape[0], -1).amax(dim=1)


def input_channel_ranges(weight: torch.Tensor, groups: int) -> torch.Tensor:
    """``r2_i = max |W[:, i]|`` per input channel, groups taken into account (module docstring)."""
    grouped = _grouped(weight.abs(), groups)  # [g, out_g, in_g, k]
    return grouped.amax(dim=(1, 3)).reshape(-1)


def scale_input_channels(weight: torch.Tensor, scales: torch.Tensor, groups: int) -> torch.Tensor:
    """``W[:, i] * s_i`` for every input channel ``i``."""
    grouped = _grouped(weight, groups)
    factor = scales.reshape(groups, 1, grouped.shape[2], 1)
    return (grouped * factor).reshape(weight.shape)


def scale_output_channels(tensor: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """``T[i] / s_i`` along axis 0 (a weight or a bias)."""
    return tensor / scales.reshape(-1, *([1] * (tensor.dim() - 1)))


def equalization_scales(r1: torch.Tensor, r2: torch.Tensor) -> torch.Tensor:
    """``s_i = sqrt(r1_i / r2_i)``; 1 where either range is 0 (the channel is unused on one side)."""
    usable = (r1 > 0) & (r2 > 0)
    ratio = torch.where(usable, r1 / torch.where(usable, r2, torch.ones_like(r2)), torch.ones_like(r1))
    return ratio.sqrt()


def range_spread(ranges: torch.Tensor) -> float:
    """``max_i r_i / min_i r_i`` over the channels in use: what a per-tensor scale suffers (1 is ideal)."""
    used = ranges[ranges > 0]
    if used.numel() == 0:
        return 1.0
    return float(used.max() / used.min())


def weighted_input_sum(weight: torch.Tensor, per_input: torch.Tensor, groups: int) -> torch.Tensor:
    """``sum_{j,k} W[c, j, k] v_j`` per output channel: what a layer adds to its output when every input
    channel ``j`` carries the constant ``v_j`` (away from zero padding)."""
    grouped = _grouped(weight.double(), groups).sum(dim=3)  # [g, out_g, in_g]
    return (grouped * per_input.double().reshape(groups, 1, -1)).sum(dim=2).reshape(-1)


def _grouped(weight: torch.Tensor, groups: int) -> torch.Tensor:
    out_channels, in_per_group = weight.shape[0], weight.shape[1]
    return weight.reshape(groups, out_channels // groups, in_per_group, -1)
