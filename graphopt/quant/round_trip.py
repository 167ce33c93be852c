"""The per-tensor quantize -> dequantize round trip, fast in eager PyTorch, exact to the reference ops.

``x_hat = s * (clamp(round(x / s) + z, q_min, q_max) - z)`` (``round`` half to even).

PyTorch's own kernels for it are slow on the CPU: ``fake_quantize_per_tensor_affine`` takes ~10 ms on a
64x32x28x28 activation on 2 cores (scalar code), and ``quantized_decomposed``'s quantize + dequantize run
six separate passes with two dtype conversions; the same arithmetic as in-place tensor ops takes ~1 ms.
On the Fashion ResNet they were 28 % of a QAT step and over half of scoring the QAT model.

- :func:`round_trip` (inference) computes exactly what ``quantized_decomposed.quantize_per_tensor`` then
  ``dequantize_per_tensor`` compute, bit for bit: ``x * (1 / s)`` with the same float reciprocal, the
  integer-valued float kept in float (exact below 2^24) instead of a uint8 tensor.
- :class:`StraightThrough` (training) computes what ``fake_quantize_per_tensor_affine`` computes, with its
  gradient: the straight-through estimator ``d x_hat / d x = 1`` where ``round(x / s) + z`` lies inside
  ``[q_min, q_max]``, else 0.

Both run only on float32 tensors in a plain eager call (:func:`is_plain_eager`): under tracing, export or
compilation the caller keeps the reference ops, which exporters lower to QuantizeLinear / DequantizeLinear
(and which convert half-precision inputs to float32 first).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor
from torch.utils._python_dispatch import _get_current_dispatch_mode


def is_plain_eager(x: object) -> bool:
    """``x`` is a real tensor in an eager call: not a traced proxy, fake or functional tensor, and no
    tracer, compiler or dispatch mode is recording the ops."""
    return (
        type(x) is Tensor
        and not torch.jit.is_tracing()
        and not torch.compiler.is_compiling()
        and _get_current_dispatch_mode() is None
    )


def round_trip(x: Tensor, scale: float, zero_point: int, q_min: int, q_max: int) -> Tensor:
    """``dequantize(quantize(x))`` as ``quantized_decomposed`` computes it, in one buffer."""
    out = x.mul(1.0 / scale).round_().add_(zero_point).clamp_(q_min, q_max)
    return out.sub_(zero_point).mul_(scale)


class StraightThrough(torch.autograd.Function):
    """``fake_quantize_per_tensor_affine(x, scale, zero_point, q_min, q_max)`` with its gradient."""

    @staticmethod
    def forward(ctx, x: Tensor, scale: float, zero_point: int, q_min: int, q_max: int) -> Tensor:  # type: ignore[override]
        # The kernel multiplies by 1.0f / scale in float32: the same reciprocal, so results match it exactly.
        inverse = float(np.float32(1.0) / np.float32(scale))
        q = x.mul(inverse).round_().add_(zero_point)
        ctx.save_for_backward((q >= q_min) & (q <= q_max))
        return q.clamp_(q_min, q_max).sub_(zero_point).mul_(float(np.float32(scale)))

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        (inside,) = ctx.saved_tensors
        return grad * inside, None, None, None, None
