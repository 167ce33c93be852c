"""The int8 annotation policy: which layers get int8 weights and which tensors get quantized.

ONNX Runtime fuses ``DequantizeLinear -> op -> QuantizeLinear`` into an integer kernel (QLinearConv, QGemm,
QLinearAdd, QLinearConcat, QLinearAveragePool, int8 MaxPool) when every input of the op arrives through a
DQ and its output leaves through a Q. So the policy quantizes, for every quantizable op (conv, linear,
residual add, concat, pooling):

- each tensor input (for conv/linear, the activation input; the weight is quantized by the layer itself);
- its output *after* a following ReLU / ReLU6 / hardtanh when that is its only user, never between the two,
  because ORT fuses conv+relu and a Q/DQ pair in between would both cost accuracy and break the fusion.

A layer fed through ``nn.ZeroPad2d`` gets its quantizer before the padding (zero is exact in int8), so that
the lowering can fold the padding into the conv's own ``pads`` and ORT still fuses a QLinearConv.

Every other op stays fp32 between a DQ and a Q. Layers the policy cannot quantize are counted with the reason
(``kept_fp32:<why>``), never an error.
"""

from __future__ import annotations

import operator
from collections import Counter
from dataclasses import dataclass, field

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from graphopt.ir.graph import call_sites, module_of
from graphopt.quant.attention import is_activation_product
from graphopt.quant.modules import QUANTIZABLE_LAYERS

_ACTIVATION_MODULES = (nn.ReLU, nn.ReLU6, nn.Hardtanh)
_ACTIVATION_FUNCTIONS = (F.relu, torch.relu, F.relu6, F.hardtanh)
_POOL_MODULES = (
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
)
_POOL_FUNCTIONS = (
    F.max_pool1d,
    F.max_pool2d,
    F.avg_pool1d,
    F.avg_pool2d,
    F.adaptive_avg_pool1d,
    F.adaptive_avg_pool2d,
)
_ADD_FUNCTIONS = (operator.add, torch.add)
#: Layers int8 leaves in fp32, counted by type: transposed convs, attention, recurrent layers (LSTM, GRU,
#: RNN: ORT has no int8 kernel for their gates).
_UNSUPPORTED_LAYERS = (
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
    nn.MultiheadAttention,
    nn.RNNBase,
)
#: ATen convolutions and matmuls as functions (a model loaded from a .pt2 archive is an ATen graph with no
#: layer modules): int8 here wraps layer modules, so these stay fp32, counted.
_ATEN_LAYER_OPS = (
    torch.ops.aten.conv1d.default,
    torch.ops.aten.conv2d.default,
    torch.ops.aten.conv3d.default,
    torch.ops.aten.convolution.default,
    torch.ops.aten.linear.default,
)


@dataclass
class QuantPlan:
    layers: list[fx.Node] = field(default_factory=list)  # conv/linear nodes that get int8 weights
    tensors: list[fx.Node] = field(default_factory=list)  # nodes whose output gets an ActivationQuantizer
    skipped: Counter[str] = field(default_factory=Counter)
    products: int = 0  # attention products whose inputs are quantized


def plan_int8(gm: fx.GraphModule, products: bool = False) -> QuantPlan:
    """Which layers get int8 weights and which tensors an activation quantizer. ``products``: the inputs of
    attention's products (``torch.matmul`` of two computed tensors, :mod:`graphopt.quant.attention`) too,
    their outputs left float."""
    plan = QuantPlan()
    sites = call_sites(gm)
    marked: dict[fx.Node, None] = {}  # insertion-ordered set
    for node in gm.graph.nodes:
        if products and is_activation_product(node):
            marked.update(dict.fromkeys(a for a in node.args[:2] if _is_float_tensor(a)))
            plan.products += 1
            continue
        kind = _op_kind(gm, node)
        if kind is None:
            continue
        if kind == "unsupported":
            plan.skipped[f"kept_fp32:{type(module_of(gm, node)).__name__}"] += 1
            continue
        if kind == "aten_layer":
            plan.skipped["kept_fp32:aten_function"] += 1
            continue
        if kind == "layer":
            if sites[str(node.target)] > 1:
                plan.skipped["kept_fp32:shared_module"] += 1
                continue
            plan.layers.append(node)
            inputs = [through_data_movement(gm, node.args[0])]
        else:
            inputs = list(node.args[0]) if kind == "cat" else list(node.args)
        for source in inputs:
            if _is_float_tensor(source):
                marked[source] = None
        end = _activation_end(gm, node)
        if _is_float_tensor(end):
            marked[end] = None
    plan.tensors = [n for n in gm.graph.nodes if n in marked]
    return plan


def through_data_movement(gm: fx.GraphModule, value: object) -> object:
    """The input of an ``nn.ZeroPad2d`` call, or ``value`` itself: where a layer's quantizer goes."""
    if isinstance(value, fx.Node) and isinstance(module_of(gm, value), nn.ZeroPad2d):
        return value.args[0]
    return value


def is_pool(gm: fx.GraphModule, value: object) -> bool:
    """Whether ``value`` is a pooling call (module or function): int8 passes through it unchanged."""
    return isinstance(value, fx.Node) and _op_kind(gm, value) == "pool"


def _op_kind(gm: fx.GraphModule, node: fx.Node) -> str | None:
    module = module_of(gm, node)
    if module is not None:
        if isinstance(module, QUANTIZABLE_LAYERS):
            return "layer"
        if isinstance(module, _POOL_MODULES):
            return "pool"
        if isinstance(module, _UNSUPPORTED_LAYERS):
            return "unsupported"
        return None
    if node.op == "call_function":
        if node.target in _ATEN_LAYER_OPS:
            return "aten_layer"
        if node.target in _POOL_FUNCTIONS:
            return "pool"
        if (
            node.target is torch.cat
            and node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else 0) == 1
        ):
            return "cat"
        if node.target in _ADD_FUNCTIONS and _is_residual_add(node):
            return "add"
    return None


def _is_residual_add(node: fx.Node) -> bool:
    args = node.args[:2]
    return (
        len(args) == 2
        and all(_is_float_tensor(a) for a in args)
        and args[0].meta.get("shape") == args[1].meta.get("shape")
        and not node.kwargs
    )


def _activation_end(gm: fx.GraphModule, node: fx.Node) -> fx.Node:
    """``node``, or the ReLU-like op that is its only user (quantize after the activation, not between)."""
    users = list(node.users)
    if len(users) != 1:
        return node
    user = users[0]
    if isinstance(module_of(gm, user), _ACTIVATION_MODULES) or (
        user.op == "call_function" and user.target in _ACTIVATION_FUNCTIONS
    ):
        return user
    return node


def _is_float_tensor(node: object) -> bool:
    return isinstance(node, fx.Node) and node.meta.get("dtype") in (
        torch.float32,
        torch.float16,
        torch.bfloat16,
    )
