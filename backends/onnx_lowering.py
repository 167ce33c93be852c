"""Direct lowering of graphopt's IR to ONNX, node by node, for the ops edge CNNs are made of.

``torch.onnx.export(dynamo=True)`` re-traces the model with torch.export, decomposes it to ATen and
translates ATen through onnxscript: 7-10 s on ResNet-18 on one core, paid again for every artifact the
latency guard compares. The IR already is a graph of known modules and functions, so for graphs made only
of the ops in :mod:`graphopt.backends.onnx_ops` this module writes the ONNX graph directly (about 0.1 s on
ResNet-18), in the canonical forms ONNX Runtime fuses:

- a frozen :class:`~graphopt.quant.QuantizedLayer` becomes ``DequantizeLinear(int8 weight, per-channel
  scale, axis 0)`` and ``DequantizeLinear(int32 bias, scale s_in * s_w)`` feeding Conv / Gemm;
  weights of 2..4 bits are an INT4 initializer, packed two per byte, widened by a Cast to int8 that ONNX
  Runtime folds at load (so the layer still fuses into QLinearConv / QGemm), and the file's opset is then
  at least 21 (the first with INT4; IR version 10);
- the bias's per-channel scale ``s_x * s_w`` is ``Mul(s_x, s_w)`` of the two scales the file holds anyway
  (folded at load), and a quantized graph's values get short names (:mod:`.onnx_compact`);
- a frozen :class:`~graphopt.quant.ActivationQuantizer` becomes a ``QuantizeLinear -> DequantizeLinear``
  pair with constant scale and zero point;
- global average pooling is ``GlobalAveragePool`` (ORT fuses it to QLinearGlobalAveragePool).

Any other node raises :class:`UnsupportedNode`, and the caller falls back to the dynamo exporter; nothing
is lowered approximately. The batch dimension of every input is symbolic.
"""

from __future__ import annotations

from collections.abc import Mapping

import onnx
import torch
import torch.fx as fx
from onnx import helper

from graphopt.backends.onnx_builder import INT4_OPSET, OnnxGraphBuilder, UnsupportedNode
from graphopt.backends.onnx_compact import shorten_names
from graphopt.backends.onnx_ops import lower_function, lower_method, lower_module
from graphopt.data.dims import DynamicDims
from graphopt.ir.graph import module_of

#: ``producer_name`` of files this module writes, so reports can say which exporter made an artifact.
PRODUCER = "graphopt.direct"


def lower_to_onnx(
    gm: fx.GraphModule,
    opset: int,
    graph_name: str = "graphopt",
    dynamic: DynamicDims | None = None,
    check: bool = True,
) -> onnx.ModelProto:
    """The ONNX model of ``gm``; raises :class:`UnsupportedNode` naming the first node it cannot lower.
    Dimension 0 of every input and output is ``batch``; the dimensions ``dynamic`` names are symbolic too
    (and every non-batch output dimension then is left unnamed: it may follow them). ``check=False`` leaves
    ``onnx.checker`` to the caller: checking a model in memory serializes a whole copy of it, so a caller
    that writes the file checks the file instead."""
    builder = OnnxGraphBuilder(gm, lower_node, lower_module)
    inputs, outputs = [], []
    named = dynamic.dims if dynamic is not None and dynamic.named() else ()
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            inputs.append(_graph_input(node, named[len(inputs)] if named else {}))
            builder.names[node] = node.name
        elif node.op == "output":
            outputs = _graph_outputs(builder, node, free=bool(named))
        else:
            lower_node(builder, gm, node)
    nodes = _live(builder.nodes, {o.name for o in outputs})
    read = set().union(*(_names_read(n) for n in nodes))
    graph = helper.make_graph(nodes, graph_name, inputs, outputs)
    # Moved over one at a time (protobuf copies on append): the weights are held twice only one tensor at
    # a time, not as a second whole model (make_graph copies every initializer it is given).
    builder.initializers.reverse()  # popped from the end, so in the order they were made
    while builder.initializers:
        initializer = builder.initializers.pop()
        if initializer.name in read:
            graph.initializer.append(initializer)
    if builder.quantized:  # short value names, no node names (see .onnx_compact)
        shorten_names(graph)
    if _has_int4(graph):
        opset = max(opset, INT4_OPSET)
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", opset)],
        producer_name=PRODUCER,
        ir_version=10 if opset >= INT4_OPSET else 8,  # opset 21 needs IR version 10
    )
    if check:
        onnx.checker.check_model(model)
    return model


def _has_int4(graph: onnx.GraphProto) -> bool:
    """Whether ``graph`` holds an INT4 initializer, in its ``If`` branches too (an exit network's)."""
    return any(t.data_type == onnx.TensorProto.INT4 for t in graph.initializer) or any(
        _has_int4(inner)
        for node in graph.node
        for attr in node.attribute
        for inner in ([attr.g] if attr.HasField("g") else list(attr.graphs))
    )


def _live(nodes: list[onnx.NodeProto], wanted: set[str]) -> list[onnx.NodeProto]:
    """The nodes the outputs depend on, in order. A lowering may leave a value no one reads (a zero
    padding folded into the conv after it); ORT would run it anyway."""
    live, needed = [], set(wanted)
    for node in reversed(nodes):
        if any(out in needed for out in node.output):
            live.append(node)
            needed |= _names_read(node)
    return live[::-1]


def _names_read(node: onnx.NodeProto) -> set[str]:
    """Inputs of ``node``, with the outer values its subgraphs (``If`` branches) read."""
    names = set(node.input)
    for attr in node.attribute:
        for graph in [attr.g] if attr.HasField("g") else list(attr.graphs):
            for inner in graph.node:
                names |= _names_read(inner)
    return names


def lower_node(builder: OnnxGraphBuilder, gm: fx.GraphModule, node: fx.Node) -> None:
    """Lower one computing node of ``gm`` into ``builder`` (its inputs must be lowered already)."""
    _require_float32(node)
    if node.op == "call_module":
        builder.names[node] = lower_module(builder, node, module_of(gm, node))
    elif node.op == "call_function":
        builder.names[node] = lower_function(builder, node)
    elif node.op == "call_method":
        builder.names[node] = lower_method(builder, node)
    else:
        raise UnsupportedNode(f"{node.op} node {node.name}")


def _require_float32(node: fx.Node) -> None:
    dtype = node.meta.get("dtype")
    if dtype is not torch.float32:
        raise UnsupportedNode(f"node {node.name} has dtype {dtype}, the direct lowering covers float32 only")


def _graph_input(node: fx.Node, dynamic: Mapping[int, str]) -> onnx.ValueInfoProto:
    shape = node.meta.get("shape")
    if node.meta.get("dtype") is not torch.float32 or shape is None or len(shape) == 0:
        raise UnsupportedNode(f"input {node.name} is not a batched float32 tensor")
    dims = ["batch", *(dynamic.get(axis, size) for axis, size in enumerate(shape[1:], start=1))]
    return helper.make_tensor_value_info(node.name, onnx.TensorProto.FLOAT, dims)


def _graph_outputs(builder: OnnxGraphBuilder, node: fx.Node, free: bool) -> list[onnx.ValueInfoProto]:
    result = node.args[0]
    values = list(result) if isinstance(result, (tuple, list)) else [result]
    if not all(isinstance(v, fx.Node) for v in values):
        raise UnsupportedNode("the graph output is not a tensor or a tuple of tensors")
    outputs = []
    for i, value in enumerate(values):
        # Each graph output gets its own name, even when one tensor is returned twice or is an input.
        name = builder.op("Identity", [builder.names[value]], f"output_{i}")
        shape = value.meta.get("shape")
        if not shape:
            raise UnsupportedNode(f"output {value.name} has no recorded shape")
        dims = ["batch", *([None] * (len(shape) - 1) if free else shape[1:])]
        outputs.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, dims))
    return outputs
