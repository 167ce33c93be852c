"""Layers with per-group weight scales in ONNX: INT4 weights read by a blocked ``DequantizeLinear``.

Opset 21's DequantizeLinear takes a scale with the input's rank whose ``axis`` dimension is the input's
divided by ``block_size``: element ``i`` along ``axis`` uses scale ``i // block_size``, which is exactly the
per-group form of :mod:`graphopt.quant.groups` (``w_cj ~ s_c,j//g * q_cj``).

- Linear: ``MatMul(x, DQ(W^T, S^T, axis=0, block_size=g)) + b``. ``W^T`` is K x C, blocked along K: the
  pattern ONNX Runtime's ``DQ -> MatMul`` to MatMulNBits fusion looks for. Measured on onnxruntime 1.32
  (x86, the ORT-optimized graph): the fusion fires only when the MatMul's other input does not come from a
  DequantizeLinear; behind graphopt's int8 activation quantizer it does not, and ORT keeps
  ``DQ(int4 constant) -> MatMul``: the weights are dequantized to float on every run and the product is a
  float MatMul (see :mod:`graphopt.quant.storage`).
- 1x1 conv: ``Conv(x, DQ(W, S, axis=1, block_size=g), b)``, blocked along the input channels.
- The bias is written as float32: the values the eager layer adds (its dequantized int32 bias), which no
  integer kernel reads here; 4 bytes per channel instead of an int32 and a scale.

The eager layer computes the same float32 weights (``(q - 0) * s`` per block), so the file agrees with it up
to the order of float accumulation.
"""

from __future__ import annotations

import torch
from torch import nn

from graphopt.backends.onnx_builder import OnnxGraphBuilder
from graphopt.ir.extensions import QuantizedLayer


def blocked_linear(b: OnnxGraphBuilder, x: str, layer: QuantizedLayer, name: str) -> str:
    """``x @ DQ(W^T) + b`` for a Linear with per-group scales (module docstring)."""
    assert isinstance(layer.mac_layer, nn.Linear) and layer.group_size is not None
    weight = _blocked_weight(b, layer.weight_int8.t(), layer.weight_scale.t(), 0, layer.group_size, name)
    out = b.op("MatMul", [x, weight], "matmul")
    return b.op("Add", [out, float_bias(b, layer, name)], "linear")


def blocked_conv_weight(b: OnnxGraphBuilder, layer: QuantizedLayer, name: str) -> str:
    """``DQ(W, S, axis=1, block_size=g)`` for a 1x1 conv with per-group scales: the weight a Conv reads."""
    assert layer.group_size is not None
    weight = layer.weight_int8
    scale = layer.weight_scale.reshape(*layer.weight_scale.shape, *([1] * (weight.dim() - 2)))
    return _blocked_weight(b, weight, scale, 1, layer.group_size, name)


def float_bias(b: OnnxGraphBuilder, layer: QuantizedLayer, name: str) -> str:
    return b.constant(layer.bias.detach(), f"{name}.bias")


def _blocked_weight(
    b: OnnxGraphBuilder, values: torch.Tensor, scale: torch.Tensor, axis: int, block_size: int, name: str
) -> str:
    assert int(values.abs().max()) <= 7, f"{name}: int4 weights must lie in [-7, 7]"
    stored = b.int4_constant(values.contiguous(), f"{name}.weight_int4")
    scales = b.constant(scale.contiguous(), f"{name}.weight_scale")
    return b.op("DequantizeLinear", [stored, scales], f"{name}.weight", axis=axis, block_size=block_size)
