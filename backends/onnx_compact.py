"""Fewer bytes in a quantized ONNX file, not one value changed (used by :mod:`.onnx_lowering`).

With 4-bit weights the weights are only ~77 % of a CNN's file; the rest was bookkeeping. Measured on the
W4A8 ``fashion_resnet`` file (113,124 bytes, the weights' packed INT4 payload 86,920): node and value
names 10,585 bytes (``stages.1.0.downsample.0.weight_as_int8`` and the like, each written where it is
made and again where it is read), repeated small initializers (activation zero points, Clip bounds)
and one bias scale vector per layer that is only the product ``s_x * s_w`` of two scales the file
already holds. A quantized graph (one with a frozen activation quantizer) is therefore written with:

- one initializer per distinct tensor: equal type, shape and bytes are one initializer, read by every
  node that needs it (:func:`initializer_key`; each ``If`` branch keeps its own, which ORT's layout
  transformer needs);
- short names for the values between nodes (``0``, ``1``, ... ``z``, ``10``: base 36 in order of
  appearance) and no node names. Initializers keep their layer-derived names (``conv1.weight_int4``:
  they say which layer a tensor belongs to) and graph inputs and outputs keep theirs (the API);
- bias scales as ``Mul(s_x, s_w)`` (:func:`graphopt.backends.onnx_ops._bias_scale`), which ONNX Runtime's
  constant folding computes once at load, before its QDQ fusions see the graph.

fp32 files are written as before: their weights are > 99 % of their bytes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import onnx

_DIGITS = "0123456789abcdefghijklmnopqrstuvwxyz"


def initializer_key(tensor: onnx.TensorProto) -> bytes:
    """Equal for two unnamed initializers exactly when they hold the same type, shape and bytes."""
    return hashlib.sha256(tensor.SerializeToString(deterministic=True)).digest()


def short_name(n: int) -> str:
    """``n`` in base 36: ``0`` .. ``z``, ``10``, ..."""
    digits = _DIGITS[n % 36]
    while n >= 36:
        n //= 36
        digits = _DIGITS[n % 36] + digits
    return digits


def shorten_names(graph: onnx.GraphProto) -> int:
    """Rename every value a node of ``graph`` (or of its ``If`` branches) computes to a short name and
    clear node names; graph inputs and outputs and initializers keep theirs. Returns the values renamed."""
    kept = {v.name for v in (*graph.input, *graph.output)}
    taken = kept | {t.name for g in _graphs(graph) for t in g.initializer}
    renamed: dict[str, str] = {}
    fresh = (name for n in range(1 << 62) if (name := short_name(n)) not in taken)
    for g in _graphs(graph):
        for node in g.node:
            for value in node.output:
                if value and value not in kept and value not in renamed:
                    renamed[value] = next(fresh)
    for g in _graphs(graph):
        for node in g.node:
            node.name = ""
            node.input[:] = [renamed.get(v, v) for v in node.input]
            node.output[:] = [renamed.get(v, v) for v in node.output]
        for v in (*g.value_info, *(g.output if g is not graph else ())):  # a branch's outputs: computed
            v.name = renamed.get(v.name, v.name)
    return len(renamed)


def _graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """``graph`` and the subgraphs (``If`` branches) of its nodes, recursively."""
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            for inner in [attr.g] if attr.HasField("g") else list(attr.graphs):
                yield from _graphs(inner)
