"""Small helpers for reading and editing the IR (a torch.fx ``GraphModule``).

Nodes are matched by ``node.op``, ``node.target`` and module type, never by the string of a name.
A module object can be called from several nodes (torchvision's BasicBlock reuses one ``nn.ReLU``), so any
pass that edits a module must first check :func:`call_sites` and skip shared modules.
"""

from __future__ import annotations

import copy
import warnings
from collections import Counter
from collections.abc import Iterator
from typing import TypeVar

import torch
import torch.fx as fx
from torch import nn

T = TypeVar("T")


def module_of(gm: fx.GraphModule, node: fx.Node) -> nn.Module | None:
    """The module a ``call_module`` node calls, else None."""
    if node.op != "call_module":
        return None
    return gm.get_submodule(str(node.target))


def is_module_call(gm: fx.GraphModule, node: fx.Node, types: type | tuple[type, ...]) -> bool:
    """Whether ``node`` calls a module of one of ``types``."""
    module = module_of(gm, node)
    return module is not None and isinstance(module, types)


def module_calls(gm: fx.GraphModule, types: type | tuple[type, ...]) -> Iterator[tuple[fx.Node, nn.Module]]:
    """Every ``(node, module)`` pair in graph order whose module is one of ``types``."""
    for node in list(gm.graph.nodes):
        module = module_of(gm, node)
        if module is not None and isinstance(module, types):
            yield node, module


#: Reads of what a tensor looks like, not of what is in it: rewrites that keep shapes and dtypes (folding,
#: channel pruning's per-channel edits) need not care about them (timm asserts ``x.ndim == 4`` everywhere).
METADATA_ATTRIBUTES = ("shape", "dtype", "device", "ndim", "is_contiguous", "layout")
METADATA_METHODS = ("size", "dim", "numel")


def is_metadata_read(node: fx.Node) -> bool:
    """``getattr(x, "shape")``-style and ``x.size()``-style nodes."""
    if node.op == "call_function" and node.target is getattr:
        return node.args[1] in METADATA_ATTRIBUTES
    return node.op == "call_method" and node.target in METADATA_METHODS


def call_sites(gm: fx.GraphModule) -> Counter[str]:
    """How many ``call_module`` nodes call each module target (a module object may be called twice)."""
    return Counter(str(n.target) for n in gm.graph.nodes if n.op == "call_module")


def set_module(gm: fx.GraphModule, target: str, module: nn.Module) -> None:
    """Replace the submodule at qualified name ``target`` by ``module``."""
    parent_name, _, attr = target.rpartition(".")
    parent = gm.get_submodule(parent_name) if parent_name else gm
    setattr(parent, attr, module)


def get_attr_value(gm: fx.GraphModule, node: fx.Node) -> object:
    """The tensor or module a ``get_attr`` node refers to."""
    value: object = gm
    for atom in str(node.target).split("."):
        value = getattr(value, atom)
    return value


def count_nodes(gm: fx.GraphModule) -> int:
    """Nodes that compute something (placeholders and the output node excluded)."""
    return sum(1 for n in gm.graph.nodes if n.op not in ("placeholder", "output"))


def shape_of(node: object) -> tuple[int, ...] | None:
    """The output shape recorded by shape propagation, or None for non-nodes and non-tensor outputs."""
    return node.meta.get("shape") if isinstance(node, fx.Node) else None


def mutates_inputs(gm: fx.GraphModule, node: fx.Node) -> bool:
    """Whether ``node`` may write to a tensor it receives, so it must run even when its result is unused.

    In-place tensor methods (``y.add_(1)``) are found through their ATen schema (an overload other than the
    ``out=`` ones marked mutable); modules and functions through ``inplace=True``. torch.fx's own purity test
    misses in-place methods, which is why graphopt does not rely on it alone.
    """
    if node.is_impure():
        return True
    if node.kwargs.get("inplace") is True:
        return True
    module = module_of(gm, node)
    if module is not None:
        return bool(getattr(module, "inplace", False))
    if node.op == "call_method":
        return _aten_op_is_mutable(str(node.target))
    if node.op == "call_function":
        name = getattr(node.target, "__name__", "")
        return bool(name) and _aten_op_is_mutable(name)
    return False


def _aten_op_is_mutable(name: str) -> bool:
    schemas = torch._C._jit_get_schemas_for_operator(f"aten::{name}")
    return any(s.is_mutable for s in schemas if not s.overload_name.endswith("out"))


def deep_copy(module: T) -> T:
    """``copy.deepcopy``, without the FutureWarning torch's pytree emits when copying the output spec of a
    graph lifted from torch.export (``LeafSpec`` deprecation inside torch's own copy): not the user's to
    act on."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return copy.deepcopy(module)


#: Facts one pass leaves for later ones live on the IR (``gm.meta``, copied with it), not in the pass
#: context: a graph handed to another pipeline keeps them. Keys are graphopt-namespaced constants.
KEEP_ZERO_WEIGHTS = "graphopt.keep_zero_weights"  # set by sparsify: later training keeps zeros zero


def ir_fact(gm: torch.nn.Module, key: str, default: object = None) -> object:
    return getattr(gm, "meta", {}).get(key, default)


def set_ir_fact(gm: torch.nn.Module, key: str, value: object) -> None:
    gm.meta[key] = value
