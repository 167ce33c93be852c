"""Direct lowering of a network with early exits: segments and heads inlined, the branch as nested ``If``.

For exit ``k``: head ``k`` runs in the current graph, then ``confidence >= threshold`` (the batch minimum,
:mod:`graphopt.early_exit.network`) selects ``then``: head ``k``'s logits, or ``else``: a subgraph that runs
segment ``k + 1`` and recurses. Each branch holds its own weights as initializers, which is what ONNX
Runtime's layout and QDQ transformers need to optimise the convs inside it.

int8: when a cut is an activation quantizer (``Q -> DQ`` in the current graph), the ``else`` branch starts
with the same ``Q -> DQ`` pair: ONNX Runtime fuses ``DQ -> Conv -> Q`` only within one graph, so without the
replayed pair the first conv of every branch would stay in float. Re-quantizing a value that was just
dequantized with the same scale and zero point returns it exactly.
"""

from __future__ import annotations

import onnx
import torch
import torch.fx as fx
from onnx import helper

from graphopt.backends.onnx_builder import OnnxGraphBuilder, UnsupportedNode
from graphopt.ir.extensions import ActivationQuantizer, EarlyExitNetwork
from graphopt.ir.shapes import propagate_shapes


def lower_early_exit(b: OnnxGraphBuilder, node: fx.Node, network: EarlyExitNetwork) -> str:
    if len(node.args) != 1:
        raise UnsupportedNode("an early-exit network with several inputs")
    features = _inline(b, network.segments[0], [b.input_of(node.args[0])])
    return _from(b, network, 0, features)


def _from(b: OnnxGraphBuilder, network: EarlyExitNetwork, k: int, features: str) -> str:
    if k == len(network.heads):
        return features
    logits = _inline(b, _traced_head(network, k), [features])
    leave = b.branch()
    go_on = b.branch()
    entry = _replay_quantizer(go_on, network.segments[k], features)
    rest = _from(go_on, network, k + 1, _inline(go_on, network.segments[k + 1], [entry]))
    threshold = b.constant(network.thresholds[k], "threshold")
    confident = b.op("GreaterOrEqual", [_confidence(b, logits, network.criterion), threshold], "confident")
    return b.op(
        "If", [confident], f"exit_{k}",
        then_branch=_subgraph(leave, leave.op("Identity", [logits], f"leave_{k}"), f"leave_{k}"),
        else_branch=_subgraph(go_on, go_on.op("Identity", [rest], f"go_on_{k}"), f"go_on_{k}"),
    )  # fmt: skip


def _confidence(b: OnnxGraphBuilder, logits: str, criterion: str) -> str:
    """The batch's least confident sample: ``min_i max_c softmax`` or ``min_i sum_c p log p``."""
    last = b.constant(torch.tensor([-1], dtype=torch.int64), "last_axis")
    if criterion == "entropy":
        log_p = b.op("LogSoftmax", [logits], "log_p", axis=-1)
        per_sample = b.op("ReduceSum", [b.op("Mul", [b.op("Exp", [log_p], "p"), log_p], "p_log_p"), last],
                          "neg_entropy", keepdims=0)  # fmt: skip
    else:
        per_sample = b.op("ReduceMax", [b.op("Softmax", [logits], "p", axis=-1), last], "max_p", keepdims=0)
    return b.op("ReduceMin", [per_sample], "batch_confidence", keepdims=0)


def _inline(b: OnnxGraphBuilder, gm: fx.GraphModule, inputs: list[str]) -> str:
    """Lower ``gm``'s nodes into ``b``, its placeholders bound to ``inputs``; return its output's name."""
    pending = list(inputs)
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            b.names[node] = pending.pop(0)
        elif node.op == "output":
            if not isinstance(node.args[0], fx.Node):
                raise UnsupportedNode("a segment that returns more than one tensor")
            return b.names[node.args[0]]
        else:
            b.lower_node(b, gm, node)
    raise UnsupportedNode(f"{type(gm).__name__} has no output")


def _traced_head(network: EarlyExitNetwork, k: int) -> fx.GraphModule:
    """Head ``k`` as a GraphModule with shapes, read from the segment output it takes."""
    (output,) = [n for n in network.segments[k].graph.nodes if n.op == "output"]
    shape = output.args[0].meta.get("shape")
    if shape is None:
        raise UnsupportedNode("segment output without a recorded shape")
    head = fx.symbolic_trace(network.heads[k])
    propagate_shapes(head, (torch.zeros(shape),))
    return head


def _replay_quantizer(b: OnnxGraphBuilder, segment: fx.GraphModule, features: str) -> str:
    (output,) = [n for n in segment.graph.nodes if n.op == "output"]
    cut = output.args[0]
    module = segment.get_submodule(str(cut.target)) if cut.op == "call_module" else None
    if not (isinstance(module, ActivationQuantizer) and module.frozen):
        return features
    b.names[cut.args[0]] = features
    return b.lower_module(b, cut, module)


def _subgraph(b: OnnxGraphBuilder, output: str, name: str) -> onnx.GraphProto:
    out = helper.make_tensor_value_info(output, onnx.TensorProto.FLOAT, None)
    return helper.make_graph(b.nodes, name, [], [out], b.initializers)
