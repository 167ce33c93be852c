"""Static cost of a captured graph: parameters, weight bytes and multiply-accumulates (MACs).

MACs are counted on the graph from the shapes in ``node.meta`` (see :mod:`graphopt.ir.shapes`), batch
included:

- convolution ``y = W * x``: ``numel(y) * (C_in / groups) * prod(kernel)``
- transposed convolution: ``numel(x) * (C_out / groups) * prod(kernel)``
- linear / matmul ``[..., M, K] @ [..., K, N]``: ``numel(y) * K``
- scaled dot-product attention ``softmax(Q K^T) V`` with Q ``[..., L, E]``, K ``[..., S, E]``,
  V ``[..., S, Ev]``: ``batch * L * S * (E + Ev)``
- ``nn.MultiheadAttention``: the q/k/v/out projections plus the attention itself.
- recurrent layers (``nn.LSTM``, ``nn.GRU``, ``nn.RNN``), per sample and time step, summed over layers and
  directions: ``gates * H * (I_l + R)`` with 4 gates (LSTM), 3 (GRU) or 1 (RNN), ``I_l`` the layer's input
  width (``input_size``, then ``dirs * R``) and ``R`` the recurrent width (``proj_size`` or ``H``), plus
  ``H * proj_size`` for an LSTM projection.

Element-wise ops, normalisation and pooling are not MACs and are not counted (they are memory-bound).
Opaque leaf modules (see :mod:`graphopt.frontend.capture`) are counted by running them once with forward hooks
on the convs and linears inside (:func:`measure_module_macs`); other work inside them is not counted.
"""

from __future__ import annotations

import math
import operator

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from graphopt.ir.graph import get_attr_value, module_of, shape_of

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_CONV_TRANSPOSES = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_FUNCTIONAL_CONVS = (F.conv1d, F.conv2d, F.conv3d)
_MATMULS = (torch.matmul, torch.bmm, torch.mm, operator.matmul)


def count_params(module: nn.Module) -> int:
    """Number of parameter elements (each shared parameter counted once)."""
    # Tensors on the meta device describe geometry only (QuantizedLayer.mac_layer): no storage, not counted.
    return sum(p.numel() for p in module.parameters() if not p.is_meta)


def weight_bytes(module: nn.Module) -> int:
    """Bytes held by parameters and buffers: what an fp32/int8 artifact must store, before packing."""
    tensors = list(module.parameters()) + list(module.buffers())
    return sum(t.numel() * t.element_size() for t in tensors if not t.is_meta)


def _numel(shape: tuple[int, ...] | None) -> int:
    return math.prod(shape) if shape is not None else 0


def _attention_macs(q: tuple[int, ...], k: tuple[int, ...], v: tuple[int, ...]) -> int:
    batch = math.prod(q[:-2])
    return batch * q[-2] * k[-2] * (q[-1] + v[-1])


def _multihead_attention_macs(module: nn.MultiheadAttention, node: fx.Node) -> int:
    q, k = shape_of(node.args[0]), shape_of(node.args[1]) if len(node.args) > 1 else None
    if q is None or k is None:
        return 0
    e, heads = module.embed_dim, module.num_heads
    seq_axis = 1 if module.batch_first else 0
    lq, lk = q[seq_axis], k[seq_axis]
    batch = _numel(q) // (lq * e)
    projections = batch * (lq * e * e + 2 * lk * e * e + lq * e * e)
    attention = _attention_macs(
        (batch * heads, lq, e // heads), (batch * heads, lk, e // heads), (1, lk, e // heads)
    )
    return projections + attention


_GATES = {"LSTM": 4, "GRU": 3, "RNN_TANH": 1, "RNN_RELU": 1}


def _recurrent_macs(layer: nn.RNNBase, in_shape: tuple[int, ...] | None) -> int:
    """MACs of an LSTM / GRU / RNN over its input ``[T, B, I]`` (``[B, T, I]`` batch-first, or ``[T, I]``)."""
    if in_shape is None or len(in_shape) not in (2, 3):
        return 0
    steps = in_shape[0] * (in_shape[1] if len(in_shape) == 3 else 1)  # time steps x samples
    gates, hidden = _GATES.get(layer.mode, 1), layer.hidden_size
    recurrent = layer.proj_size or hidden
    directions = 2 if layer.bidirectional else 1
    per_step = 0
    for depth in range(layer.num_layers):
        width = layer.input_size if depth == 0 else directions * recurrent
        per_step += directions * (gates * hidden * (width + recurrent) + hidden * layer.proj_size)
    return steps * per_step


def _layer_macs(layer: nn.Module, in_numel: int, out_numel: int) -> int | None:
    """MACs of a conv / transposed conv / linear from its input and output sizes; None for other layers."""
    if isinstance(layer, _CONVS):
        return out_numel * (layer.in_channels // layer.groups) * math.prod(layer.kernel_size)
    if isinstance(layer, _CONV_TRANSPOSES):
        return in_numel * (layer.out_channels // layer.groups) * math.prod(layer.kernel_size)
    if isinstance(layer, nn.Linear):
        return out_numel * layer.in_features
    return None


def _module_macs(module: nn.Module, node: fx.Node) -> int:
    # A wrapper that computes like a standard layer (an int8 QuantizedLayer) names it as ``mac_layer``.
    module = getattr(module, "mac_layer", module)
    layer = _layer_macs(module, _numel(shape_of(node.args[0]) if node.args else None), _numel(shape_of(node)))
    if layer is not None:
        return layer
    if isinstance(module, nn.MultiheadAttention):
        return _multihead_attention_macs(module, node)
    if isinstance(module, nn.RNNBase):
        return _recurrent_macs(module, shape_of(node.args[0]) if node.args else None)
    # An opaque leaf: shape propagation ran it with hooks on its standard layers.
    return int(node.meta.get("leaf_macs", 0))


def _function_macs(gm: fx.GraphModule, node: fx.Node) -> int:
    out = shape_of(node)
    if node.target in _FUNCTIONAL_CONVS:
        weight = node.args[1]
        if isinstance(weight, fx.Node) and weight.op == "get_attr":
            w = get_attr_value(gm, weight)
            if isinstance(w, torch.Tensor):
                return _numel(out) * math.prod(w.shape[1:])
        return 0
    if node.target is F.linear:
        weight = shape_of(node.args[1])
        return _numel(out) * weight[-1] if weight else 0
    if node.target in _MATMULS or (node.op == "call_method" and node.target in ("matmul", "bmm")):
        a = shape_of(node.args[0])
        return _numel(out) * a[-1] if a else 0
    if node.target is F.scaled_dot_product_attention:
        q, k, v = (shape_of(a) for a in node.args[:3])
        return _attention_macs(q, k, v) if q and k and v else 0
    return 0


def node_macs(gm: fx.GraphModule, node: fx.Node) -> int:
    """MACs of one node, from the shapes recorded in ``node.meta``."""
    module = module_of(gm, node)
    if module is not None:
        return _module_macs(module, node)
    if node.op in ("call_function", "call_method"):
        return _function_macs(gm, node)
    return 0


def count_macs(gm: fx.GraphModule) -> int:
    """Total MACs of one forward pass on the example inputs the shapes were propagated with."""
    return sum(node_macs(gm, n) for n in gm.graph.nodes)


def measure_module_macs(
    module: nn.Module, args: tuple[object, ...], kwargs: dict[str, object]
) -> tuple[int, object]:
    """Call ``module``; return ``(MACs of the convs/linears inside it, its output)``, using forward hooks."""
    total = 0

    def hook(layer: nn.Module, inputs: tuple[torch.Tensor, ...], output: object) -> None:
        nonlocal total
        if isinstance(layer, nn.RNNBase):
            total += _recurrent_macs(layer, tuple(inputs[0].shape))
        else:
            total += _layer_macs(layer, inputs[0].numel(), output.numel()) or 0  # type: ignore[attr-defined]

    handles = [
        m.register_forward_hook(hook)
        for m in module.modules()
        if isinstance(m, (*_CONVS, *_CONV_TRANSPOSES, nn.Linear, nn.RNNBase))
    ]
    try:
        with torch.no_grad():
            output = module(*args, **kwargs)
    finally:
        for handle in handles:
            handle.remove()
    return total, output
