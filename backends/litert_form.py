"""The LiteRT form of graphopt's int8 IR: the pattern litert_torch's converter turns into TFLite int8 kernels.

TFLite's int8 scheme is graphopt's ``arm-int8`` / ``xnnpack-int8`` scheme: per-tensor asymmetric int8
activations, per-channel symmetric int8 weights (-127..127, axis 0), int32 bias with scale
``s_in * s_c``. The converter's STATIC mode folds PT2E's ``quantize -> dequantize`` pairs into int8
tensors, so the form starts from the XNNPACK form (:func:`~graphopt.backends.executorch_form.xnnpack_form`:
one ``quantize_per_tensor -> dequantize_per_tensor`` per user of an activation, keepdim global means) and
changes only the int8 layers. Each becomes

    W_f = s_c * W_q                                  (float constant, exact in fp32 for |W_q| <= 127)
    W   = dequantize_per_channel(quantize_per_channel(W_f, s_c), s_c)
    y   = conv / linear(x, W, b_f),   b_f = s_in * s_c * b_q

The converter quantizes ``W_f`` again with graphopt's scales: ``round(s_c * W_q / s_c) = W_q``, so the
file's int8 weights are graphopt's; it re-derives the int32 bias ``round(b_f / (s_in * s_c)) = b_q`` the same
way. An int8 constant straight into ``dequantize_per_channel`` (what XNNPACK takes) is refused by the
converter (``stablehlo.uniform_dequantize`` wants a quantized operand), hence the float round trip.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from graphopt.backends.executorch_form import XnnpackInt8Layer, xnnpack_form
from graphopt.ir.graph import set_module

_qd = torch.ops.quantized_decomposed

#: TFLite's int8 weight range: symmetric, so the zero point is 0 and -128 is never used.
WEIGHT_RANGE = (-127, 127)


class LiteRTInt8Layer(nn.Module):
    """A frozen int8 conv / linear as litert_torch's converter folds it into one int8 kernel (module
    docstring)."""

    def __init__(self, layer: XnnpackInt8Layer):
        super().__init__()
        self.functional, self.kwargs = layer.functional, dict(layer.kwargs)
        scale = layer.weight_scale.detach().float()
        per_channel = scale.reshape((-1,) + (1,) * (layer.weight_int8.dim() - 1))
        self.register_buffer("weight", layer.weight_int8.float() * per_channel)
        self.register_buffer("weight_scale", scale)
        self.register_buffer("zero_points", torch.zeros(len(scale), dtype=torch.int64))
        self.register_buffer("bias", layer.bias.detach().clone())

    def forward(self, x: Tensor) -> Tensor:
        scale, zero, (low, high) = self.weight_scale, self.zero_points, WEIGHT_RANGE
        quantized = _qd.quantize_per_channel(self.weight, scale, zero, 0, low, high, torch.int8)
        weight = _qd.dequantize_per_channel(quantized, scale, zero, 0, low, high, torch.int8)
        return self.functional(x, weight, self.bias, **self.kwargs)


def litert_form(model: nn.Module) -> nn.Module:
    """A copy of ``model`` in the form litert_torch converts to a fully integer ``.tflite`` (module
    docstring); an fp32 model comes back as XNNPACK's form leaves it (a copy, means kept dim)."""
    form = xnnpack_form(model)
    for name, module in list(form.named_modules()):
        if isinstance(module, XnnpackInt8Layer):
            set_module(form, name, LiteRTInt8Layer(module))  # type: ignore[arg-type]
    return form.eval()
