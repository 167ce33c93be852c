"""Dynamic int8 for Linear layers: weights quantized once, activations quantized per call from their range.

Transformers carry activation outliers (a few channels 10-100x the rest) that a static per-tensor scale
calibrated once cannot serve: graphopt's static x86-int8 on all-MiniLM-L6-v2 kept only cosine 0.88 to
fp32. Dynamic quantization takes the scale of each call's own input, as ONNX Runtime's
``DynamicQuantizeLinear`` does:

    s_x = (max(x, 0) - min(x, 0)) / 255,   z_x = round(-min(x, 0) / s_x)
    x_q = clamp(round(x / s_x) + z_x, 0, 255)
    y = s_x * s_w[j] * sum_k (x_q[k] - z_x) * W_q[j, k] + b[j]

with ``W_q`` s8 per output channel (symmetric, ``s_w[j] = max|W[j]| / q``). ``q = 127``, or ``64`` with
``reduce_range``: on x86 without VNNI, ONNX Runtime's u8 x s8 kernel adds pairs of products in int16
(``vpmaddubsw``), and ``2 * 255 * 127`` overflows it where ``2 * 255 * 64`` does not; measured on
MiniLM-sized layers the full-range weights moved outputs by 0.5 where 7-bit weights stay at the
quantization step (:mod:`graphopt.reporting.cpu`).
:func:`dynamic_int8_linear` is a torch custom op that computes exactly this in eager mode and lowers
(:func:`onnx_translations`) to
``DynamicQuantizeLinear -> MatMulInteger -> Cast -> Mul -> Add``, the pattern ONNX Runtime fuses into
``DynamicQuantizeMatMul`` / ``MatMulIntegerToFloat``; the weight is stored as an int8 initializer.

Per-token scales (``per_token=True``): one scale per row of ``x`` (a token) instead of one per call,
symmetric so that every row shares the zero point 128 ONNX Runtime's ``MatMulInteger`` requires::

    s_r = max_k |x[r, k]| / 127,   x_q[r] = clamp(round(x[r] / s_r), -127, 127)
    y[r, j] = s_r * s_w[j] * sum_k x_q[r, k] * W_q[j, k] + b[j]

A token's output then depends on that token alone, never on its batch mates or on padding: a sentence
embeds the same alone and in a padded batch (with one scale per call, pad rows and other sentences widen
the range every row is rounded with). It lowers (:func:`_onnx_dynamic_int8_linear_per_token`) to
``ReduceMax(Abs) -> Div -> Max -> Div -> Round -> Add 128 -> Cast u8 -> MatMulInteger -> Cast -> Mul -> Mul
-> Add``, which ONNX Runtime runs as separate kernels (no fused kernel takes a scale per row).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from graphopt.quant.scheme import sqnr_db


@torch.library.custom_op("graphopt::dynamic_int8_linear", mutates_args=())
def dynamic_int8_linear(x: Tensor, weight_t: Tensor, weight_scale: Tensor, bias: Tensor) -> Tensor:
    """``y = x W^T + b`` with ``x`` quantized to u8 from its own range and ``weight_t = W_q^T`` (s8,
    ``[in, out]``) scaled per output column by ``weight_scale`` (see the module docstring)."""
    low, high = torch.clamp(x.min(), max=0.0), torch.clamp(x.max(), min=0.0)
    scale = (high - low) / 255.0
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    zero = torch.clamp(torch.round(-low / scale), 0, 255)
    x_q = torch.clamp(torch.round(x / scale) + zero, 0, 255)
    # Exact integer products, accumulated in float64 (|sum| < 2^53 for any realistic width).
    acc = torch.matmul((x_q - zero).double(), weight_t.double())
    return (acc * (scale.double() * weight_scale.double())).to(x.dtype) + bias


@dynamic_int8_linear.register_fake
def _(x: Tensor, weight_t: Tensor, weight_scale: Tensor, bias: Tensor) -> Tensor:
    return x.new_empty((*x.shape[:-1], weight_t.shape[1]))


@torch.library.custom_op("graphopt::dynamic_int8_linear_per_token", mutates_args=())
def dynamic_int8_linear_per_token(x: Tensor, weight_t: Tensor, weight_scale: Tensor, bias: Tensor) -> Tensor:
    """:func:`dynamic_int8_linear` with one symmetric scale per token (row of ``x``; module docstring)."""
    scale = torch.clamp(x.abs().amax(dim=-1, keepdim=True) / 127.0, min=1e-30)
    x_q = torch.round(x / scale)  # within +-127 by construction
    acc = torch.matmul(x_q.double(), weight_t.double())
    return (acc * (scale.double() * weight_scale.double())).to(x.dtype) + bias


@dynamic_int8_linear_per_token.register_fake
def _(x: Tensor, weight_t: Tensor, weight_scale: Tensor, bias: Tensor) -> Tensor:
    return x.new_empty((*x.shape[:-1], weight_t.shape[1]))


class DynamicInt8Linear(nn.Module):
    """A Linear layer with s8 per-channel weights and activations quantized per call (u8, asymmetric) or per
    token (``per_token``: symmetric, one scale per row) (graphopt's IR module)."""

    def __init__(self, layer: nn.Linear, reduce_range: bool = False, per_token: bool = False):
        super().__init__()
        #: One activation scale per token rather than per call (module docstring).
        self.per_token = per_token
        weight = layer.weight.detach().float()
        # ONNX Runtime's own ranges (symmetric s8: +-127, reduce_range: +-64), so that its quantize_dynamic,
        # given W_q * s, finds the same scale and gives back W_q (backends/onnx_transformer.py).
        self.reduce_range = reduce_range
        weight_q, scale = _per_row_int8(weight, 64 if reduce_range else 127)
        self.register_buffer("weight_t", weight_q.t().contiguous())
        self.register_buffer("weight_scale", scale)
        bias = layer.bias.detach().float() if layer.bias is not None else torch.zeros(layer.out_features)
        self.register_buffer("bias", bias)
        self.in_features, self.out_features = layer.in_features, layer.out_features
        #: Output SQNR of the weight quantization alone, in dB (for the report's int8 table).
        self.weight_sqnr_db = sqnr_db(weight, weight_q.float() * scale[:, None])

    def forward(self, x: Tensor) -> Tensor:
        op = (
            torch.ops.graphopt.dynamic_int8_linear_per_token
            if self.per_token
            else torch.ops.graphopt.dynamic_int8_linear
        )
        return op(x, self.weight_t, self.weight_scale, self.bias)

    @property
    def mac_layer(self) -> nn.Linear:
        """A Linear of the same shape, for MAC counting (:mod:`graphopt.reporting.cost`)."""
        return nn.Linear(self.in_features, self.out_features, device="meta")


class Int8Embedding(nn.Module):
    """An embedding table stored as s8 with one scale per row (weight-only int8): a lookup reads one row, so
    ``row = W_q[i] * s[i]`` costs nothing at run time and the table (most of a small transformer's bytes:
    30,522 x 384 floats in MiniLM) shrinks 4x. Exported as ``Gather`` of the int8 initializer, ``Cast``,
    and ``Mul`` by the gathered scales."""

    def __init__(self, layer: nn.Embedding):
        super().__init__()
        weight = layer.weight.detach().float()
        weight_q, scale = _per_row_int8(weight, 127)
        self.register_buffer("weight_int8", weight_q)
        self.register_buffer("row_scale", scale)
        self.padding_idx = layer.padding_idx
        self.weight_sqnr_db = sqnr_db(weight, weight_q.float() * scale[:, None])

    def forward(self, ids: Tensor) -> Tensor:
        return self.weight_int8[ids].to(self.row_scale.dtype) * self.row_scale[ids].unsqueeze(-1)


def _per_row_int8(weight: Tensor, limit: int) -> tuple[Tensor, Tensor]:
    """``(W_q, s)``: symmetric s8 rows ``round(W / s)`` clamped to ``+-limit``, ``s = max|W[j]| / limit``."""
    scale = weight.abs().amax(dim=1).clamp(min=1e-12) / limit
    return torch.clamp(torch.round(weight / scale[:, None]), -limit, limit).to(torch.int8), scale


def _onnx_dynamic_int8_linear(x, weight_t, weight_scale, bias):  # type: ignore[no-untyped-def]
    from onnxscript import FLOAT
    from onnxscript import opset18 as op

    x_q, x_scale, x_zero = op.DynamicQuantizeLinear(x)
    acc = op.MatMulInteger(x_q, weight_t, x_zero)
    return op.Add(op.Mul(op.Cast(acc, to=FLOAT.dtype), op.Mul(x_scale, weight_scale)), bias)


def _onnx_dynamic_int8_linear_per_token(x, weight_t, weight_scale, bias):  # type: ignore[no-untyped-def]
    from onnxscript import FLOAT, UINT8
    from onnxscript import opset18 as op

    # |x / s| <= 127 by construction, so no Clip; an all-zero row divides by the tiny floor and stays 0.
    peak = op.ReduceMax(op.Abs(x), op.Constant(value_ints=[-1]), keepdims=1)
    scale = op.Max(op.Div(peak, op.Constant(value_float=127.0)), op.Constant(value_float=1e-30))
    x_q = op.Cast(op.Add(op.Round(op.Div(x, scale)), op.Constant(value_float=128.0)), to=UINT8.dtype)
    zero = op.Cast(op.Constant(value_float=128.0), to=UINT8.dtype)  # the zero point every token shares
    acc = op.MatMulInteger(x_q, weight_t, zero)
    return op.Add(op.Mul(op.Mul(op.Cast(acc, to=FLOAT.dtype), scale), weight_scale), bias)


def onnx_translations() -> dict[object, object]:
    """graphopt's custom ops and their ONNX lowering, for ``torch.onnx.export(custom_translation_table=)``."""
    return {
        torch.ops.graphopt.dynamic_int8_linear.default: _onnx_dynamic_int8_linear,
        torch.ops.graphopt.dynamic_int8_linear_per_token.default: _onnx_dynamic_int8_linear_per_token,
    }
