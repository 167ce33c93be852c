"""Static int8 for attention's two products: ``scaled_dot_product_attention`` written out as graph nodes.

ONNX Runtime has no int8 kernel for a fused attention with static scales, but it fuses a ``MatMul`` whose
inputs both come through ``DequantizeLinear`` into an integer one (``MatMulIntegerToFloat``, or
``QLinearMatMul`` with a quantized output). So, for a target that asks for it
(``InsertFakeQuantOptions.attention``), each attention call becomes::

    scores = matmul(Q, K^T) * s  (+ M)        s = the call's scale, else 1 / sqrt(head_dim)
    P      = softmax(scores, -1)
    out    = matmul(P, V)

and the int8 plan (:mod:`graphopt.quant.policy`) puts an activation quantizer on each product's inputs:
``Q``, ``K^T``, ``P`` (in [0, 1]) and ``V``; the products' outputs stay float (the scores feed a softmax,
where one step of an 8-bit grid over their range would move the probabilities). A boolean mask becomes the
additive ``0 / finfo.min`` mask transformers' eager attention adds. Calls that are causal, drop out or group
query heads are left as they are (counted by the pass).
"""

from __future__ import annotations

import math
import operator

import torch
import torch.fx as fx
import torch.nn.functional as F

from graphopt.ir.graph import shape_of


def decompose_attention(gm: fx.GraphModule) -> tuple[int, int]:
    """Write every plain ``scaled_dot_product_attention`` call of ``gm`` out (module docstring); returns
    (calls written out, calls left as they are). Shapes must be recorded (``propagate_shapes``)."""
    written = left = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target is not F.scaled_dot_product_attention:
            continue
        call = _arguments(node)
        if call is None:
            left += 1
            continue
        with gm.graph.inserting_before(node):
            out = _explicit(gm.graph, *call)
        node.replace_all_uses_with(out)
        gm.graph.erase_node(node)
        written += 1
    if written:
        gm.recompile()
    return written, left


def has_attention(gm: fx.GraphModule) -> bool:
    """Whether ``gm`` computes attention: a fused call, or one written out (a product of two activations)."""
    return any(
        n.op == "call_function" and (n.target is F.scaled_dot_product_attention or is_activation_product(n))
        for n in gm.graph.nodes
    )


def is_activation_product(node: fx.Node) -> bool:
    """A matrix product (``torch.matmul`` or ``@``) of two computed tensors, not of a weight: attention's
    ``Q K^T`` and ``P V``, hand-written or written out here (and any other such product, a Gram matrix:
    quantized alike, since ORT fuses every one the same way)."""
    return (
        node.op == "call_function"
        and node.target in (torch.matmul, operator.matmul)
        and all(isinstance(a, fx.Node) and a.op not in ("get_attr", "placeholder") for a in node.args[:2])
    )


_NAMES = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")


def _arguments(node: fx.Node) -> tuple[fx.Node, fx.Node, fx.Node, fx.Node | None, float] | None:
    """(Q, K, V, mask, scale) of a call this module writes out; None for one it leaves."""
    given = {**dict(zip(_NAMES, node.args, strict=False)), **node.kwargs}
    if given.get("dropout_p", 0.0) or given.get("is_causal", False) or given.get("enable_gqa", False):
        return None
    query, key, value = given["query"], given["key"], given["value"]
    shape = shape_of(query)
    if shape is None or shape_of(key) is None or shape_of(key)[-3:-2] != shape[-3:-2]:
        return None
    scale = given.get("scale")
    return query, key, value, given.get("attn_mask"), scale if scale is not None else 1 / math.sqrt(shape[-1])


def _explicit(
    graph: fx.Graph, query: fx.Node, key: fx.Node, value: fx.Node, mask: fx.Node | None, scale: float
) -> fx.Node:
    key_t = graph.call_function(torch.transpose, (key, -2, -1))
    scores = graph.call_function(operator.mul, (graph.call_function(torch.matmul, (query, key_t)), scale))
    if mask is not None:
        if mask.meta.get("dtype") == torch.bool:
            lowest = torch.finfo(torch.float32).min
            mask = graph.call_function(torch.where, (mask, 0.0, lowest))
        scores = graph.call_function(operator.add, (scores, mask))
    probabilities = graph.call_function(torch.softmax, (scores, -1))
    return graph.call_function(torch.matmul, (probabilities, value))
