"""Name an ONNX file's outputs after the keys of the model's output dict.

A model returning ``{"logits": ..., "boxes": ...}`` exports with outputs named after graph nodes
(``linear``, ``linear_1``): the keys a caller indexes by are lost. The output structure is flattened the way
the exporters flatten it (``torch.utils._pytree``, dict keys in insertion order), and every output whose
path holds a dict key gets that path as its name (``logits``, ``heads.boxes``), through an ``Identity``
node so no other value is renamed. Tuple and single-tensor outputs keep their names.
"""

from __future__ import annotations

from typing import Any

import onnx
from onnx import helper
from torch.utils._pytree import MappingKey, SequenceKey, tree_flatten_with_path


def output_names(outputs: Any) -> list[str] | None:
    """One name per flattened output, or None when no output sits under a dict key."""
    leaves, _ = tree_flatten_with_path(outputs)
    paths = [path for path, _ in leaves]
    if not any(isinstance(key, MappingKey) for path in paths for key in path):
        return None
    return [".".join(_key(k) for k in path) or f"output_{i}" for i, path in enumerate(paths)]


def _key(key: object) -> str:
    if isinstance(key, MappingKey):
        return str(key.key)
    if isinstance(key, SequenceKey):
        return str(key.idx)
    return str(key)


def rename_outputs(model: onnx.ModelProto, names: list[str]) -> bool:
    """Give the graph's outputs ``names`` (in order); False when the counts differ (nothing changed)."""
    graph = model.graph
    if len(graph.output) != len(names) or len(set(names)) != len(names):
        return False
    taken = {v for node in graph.node for v in node.output} | {i.name for i in graph.input}
    for output, name in zip(graph.output, names, strict=True):
        if output.name == name or name in taken:
            continue
        graph.node.append(helper.make_node("Identity", [output.name], [name], name=f"{name}_output"))
        output.name = name
    return True
