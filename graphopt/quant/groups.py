"""Per-group (block-wise) weight scales: one scale per block of ``g`` consecutive input channels of each
output channel (``QuantScheme.group_size = g``, ``WeightQuant(bits=4, group_size=32)``).

The math. A Linear weight ``W`` (C x K; a 1x1 conv's, C x K x 1 x 1, is the same matrix) is cut along its
input channels into ``G = K / g`` blocks, block ``k`` of row ``c`` holding ``w_cj`` for
``k g <= j < (k+1) g``. Each block has its own symmetric scale (``r = 2^(b-1) - 1``, 7 at 4 bits):

    s_ck = max_{j in block k} |w_cj| / r    (weight_clipping="mse": the block's least-error fraction of it)
    q_cj = clamp(round(w_cj / s_c,floor(j/g)), -r, r)
    W   ~ s_c,floor(j/g) * q_cj

Per channel is the case ``g = K``. Why it helps below 8 bits: a row's one scale is set by its largest
weight, so at 7 levels a side the input channels of small magnitude in that row round to 0; a block's scale
follows its own channels. The cost is ``G`` float32 scales per row instead of one: 32 bits per ``g``
weights (1 bit per weight at ``g = 32``, on top of 4).

The blocks are the rows of the ``(C * G, g)`` view of ``W`` (:func:`blocks`), so the per-channel arithmetic
of :mod:`graphopt.quant.scheme` (clipping, power-of-two scales) applies to them unchanged, and so do
PyTorch's per-channel (de)quantize ops; ``weight_scale`` is kept ``(C, G)``.

The bias. Integer kernels add the bias in the product's scale ``s_in * s_w``, one per output channel; with
several weight scales a row there is no such one, so the int32 bias takes ``s_in * max_k s_ck`` (the scale
per-channel weights would have had: the bias's precision is unchanged).

Which layers: Linear layers and 1x1 convs with ``groups=1``, whose weight is a matrix over input channels.
Other convs keep one scale per output channel (a block of input channels would cut across the kernel's
taps; a depthwise conv has one input channel per output): ``insert_fake_quant`` counts them as
``per_channel_fallback:not_linear_or_1x1``. A layer whose input channels ``g`` does not divide is a
:class:`ConfigError` naming it.

ONNX (:mod:`graphopt.backends.onnx_ops`): the weight is an INT4 initializer read by an opset-21 blocked
``DequantizeLinear`` (``axis``, ``block_size = g``). A Linear is written ``MatMul(x, DQ(W^T)) + b``: ``W^T``
(K x C) blocked along axis 0, the form ONNX Runtime's MatMulNBits fusion looks for.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor, nn

from graphopt.errors import ConfigError
from graphopt.quant.scheme import QuantScheme

#: Stats key of ``insert_fake_quant`` for layers that keep per-channel scales under a group_size.
PER_CHANNEL_FALLBACK = "per_channel_fallback:not_linear_or_1x1"


def takes_groups(layer: nn.Module) -> bool:
    """Whether ``layer``'s weight is a matrix over input channels: a Linear, or a 1x1 conv with groups=1."""
    if isinstance(layer, nn.Linear):
        return True
    if isinstance(layer, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        return layer.groups == 1 and all(k == 1 for k in layer.kernel_size)
    return False


def scheme_for_layer(layer: nn.Module, scheme: QuantScheme, name: str) -> QuantScheme:
    """``scheme`` for ``layer`` (module ``name``): per channel where per-group scales do not apply (the
    caller counts it as :data:`PER_CHANNEL_FALLBACK`); a :class:`ConfigError` when ``group_size`` does not
    divide its input channels."""
    if scheme.group_size is None:
        return scheme
    if not takes_groups(layer):
        return dataclasses.replace(scheme, group_size=None)
    check_divides(layer, scheme.group_size, name)
    return scheme


def check_divides(layer: nn.Module, group_size: int, name: str = "") -> None:
    """A :class:`ConfigError` unless ``group_size`` divides ``layer``'s input channels."""
    inputs = layer.weight.shape[1]
    if inputs % group_size:
        where = f"layer {name!r}" if name else f"this {type(layer).__name__}"
        divisors = [d for d in range(1, inputs + 1) if inputs % d == 0 and d <= group_size][-3:]
        raise ConfigError(
            f"group_size={group_size} does not divide the {inputs} input channels of {where}: every block "
            f"holds group_size whole input channels (sizes that fit it: {', '.join(map(str, divisors))}); "
            "keep such a layer at 8 bits with bits_by_layer, or pick a group_size that divides every layer"
        )


def blocks(weight: Tensor, group_size: int) -> Tensor:
    """The ``(C * G, g)`` view of a ``(C, K[, 1, ...])`` weight: row ``c * G + k`` is block ``k`` of channel
    ``c`` (consecutive input channels ``k g .. k g + g - 1``)."""
    return weight.reshape(weight.shape[0] * (weight.shape[1] // group_size), group_size)


def expand(scales: Tensor, weight_shape: torch.Size, group_size: int) -> Tensor:
    """``(C, G)`` block scales repeated to one per weight, shaped like the weight (broadcasts against it)."""
    return scales.repeat_interleave(group_size, dim=1).reshape(weight_shape)


def bias_weight_scale(scales: Tensor) -> Tensor:
    """The one weight scale per output channel the int32 bias is scaled by: ``max_k s_ck`` (docstring)."""
    return scales.amax(dim=1)


#: The backends that lower per-group scales (the others' int8 forms take one scale per output channel).
BACKENDS_WITH_GROUPS = ("onnx",)


def require_backend_for_groups(model: nn.Module, backend: str) -> None:
    """A :class:`ConfigError` when ``model`` has per-group weight scales and ``backend`` cannot write them:
    TorchScript's quantized kernels, XNNPACK's static int8 form and LiteRT's int8 take one scale per
    output channel, and graphopt does not re-quantize a model behind its caller's back."""
    if backend in BACKENDS_WITH_GROUPS:
        return
    from graphopt.quant.modules import QuantizedLayer  # lazy: modules imports this module

    modules = model.named_modules()
    names = [n for n, m in modules if isinstance(m, QuantizedLayer) and m.group_size is not None]
    if names:
        shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        raise ConfigError(
            f"per-group weight scales (group_size, layers {shown}) are written to ONNX only (a blocked "
            f"DequantizeLinear); the {backend} backend takes one scale per output channel: export to .onnx, "
            "or optimize without group_size"
        )
