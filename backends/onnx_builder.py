"""The ONNX graph under construction: nodes, initializers and unique names (see :mod:`.onnx_lowering`).

Imports nothing of the lowering itself: ``onnx_lowering`` -> ``onnx_ops`` -> ``onnx_branches`` -> this
module is the whole import order; the recursion of early-exit branches back into node lowering goes
through the callables the builder carries.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import ml_dtypes
import onnx
import torch
import torch.fx as fx
from onnx import helper
from torch import nn

from graphopt.backends.onnx_compact import initializer_key
from graphopt.ir.extensions import ActivationQuantizer

#: The first opset whose DequantizeLinear takes INT4 inputs.
INT4_OPSET = 21

NodeLowering = Callable[["OnnxGraphBuilder", fx.GraphModule, fx.Node], None]
ModuleLowering = Callable[["OnnxGraphBuilder", fx.Node, "nn.Module | None"], str]


class UnsupportedNode(Exception):
    """The IR has a node this lowering does not cover; use the general exporter instead."""


class OnnxGraphBuilder:
    """Accumulates nodes and initializers; hands out unique tensor names."""

    def __init__(self, gm: fx.GraphModule, lower_node: NodeLowering, lower_module: ModuleLowering):
        self.gm = gm
        #: How a node (and, for branches, a module) is lowered: injected by :func:`lower_to_onnx`, so that
        #: the early-exit branches can lower subgraphs without importing the lowering that imports them.
        self.lower_node, self.lower_module = lower_node, lower_module
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.names: dict[fx.Node, str] = {}
        self._used: set[str] = {n.name for n in gm.graph.nodes if n.op == "placeholder"}
        #: Whether the graph computes in int8 anywhere (changes how fp32 layers' weights are written).
        self.quantized = any(isinstance(m, ActivationQuantizer) and m.frozen for m in gm.modules())
        #: Initializers made so far, by content (quantized graphs: one initializer per distinct tensor).
        self._made: dict[bytes, str] = {}

    def branch(self) -> OnnxGraphBuilder:
        """A builder for a subgraph (an ``If`` branch): its own nodes and initializers, this one's names."""
        child = OnnxGraphBuilder.__new__(OnnxGraphBuilder)
        child.gm, child.nodes, child.initializers = self.gm, [], []
        child.lower_node, child.lower_module = self.lower_node, self.lower_module
        child.names, child._used, child.quantized, child._made = {}, self._used, self.quantized, {}
        return child

    def fresh(self, hint: str) -> str:
        """``hint`` itself while unused (initializers keep their layer's name), else ``hint_<n>``."""
        name, n = hint, 0
        while name in self._used:
            n += 1
            name = f"{hint}_{n}"
        self._used.add(name)
        return name

    def constant(self, value: torch.Tensor | float | int, hint: str) -> str:
        tensor = value.detach().cpu() if isinstance(value, torch.Tensor) else torch.tensor(value)
        return self._initializer(onnx.numpy_helper.from_array(tensor.contiguous().numpy()), hint)

    def int4_constant(self, value: torch.Tensor, hint: str) -> str:
        """An INT4 initializer of ``value`` (integers in [-8, 7]): written packed, two per byte, so the file
        holds half a byte per weight. Needs opset 21: the lowering raises the opset when it sees one."""
        packed = value.detach().cpu().contiguous().numpy().astype(ml_dtypes.int4)
        return self._initializer(onnx.numpy_helper.from_array(packed), hint)

    def _initializer(self, tensor: onnx.TensorProto, hint: str) -> str:
        """``tensor`` added as an initializer named after ``hint``; in a quantized graph, the initializer
        already made with the same type, shape and bytes if there is one (:mod:`.onnx_compact`)."""
        key = initializer_key(tensor) if self.quantized else None
        if key is not None and key in self._made:
            return self._made[key]
        tensor.name = self.fresh(hint)
        self.initializers.append(tensor)
        if key is not None:
            self._made[key] = tensor.name
        return tensor.name

    def op(self, op_type: str, inputs: list[str], hint: str, **attrs: Any) -> str:
        out = self.fresh(hint)
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=out, **attrs))
        return out

    def input_of(self, arg: Any) -> str:
        """The ONNX name of an fx argument: a lowered node, or a Python number made a float constant."""
        if isinstance(arg, fx.Node):
            return self.names[arg]
        if isinstance(arg, (int, float)) and not isinstance(arg, bool):
            return self.constant(torch.tensor(float(arg)), "scalar")
        raise UnsupportedNode(f"argument of type {type(arg).__name__}")
