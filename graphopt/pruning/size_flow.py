"""Channel counts read from tensors, and where those numbers go.

``n, c, h, w = y.shape`` followed by ``z.view(n, g, c // g, h, w)`` reads ``y``'s channel count and uses it to
shape ``z``. Before pruning the two counts are equal; after it ``c`` follows ``y``'s group, not ``z``'s, and
the view fails. So the walk tracks, for every non-tensor value, the channel maps whose channel count it was
computed from (``x.shape`` / ``x.size()`` / ``x.size(d)`` at a tracked axis, then ``getitem`` and Python
arithmetic). Such a value may end in one safe place only: a size argument of a ``view`` / ``reshape`` of a
tensor in the *same* channel group, at an output axis the reshape's edit rewrites (the surgery writes the
pruned width there as a literal; same group, so both counts change together). Anywhere else (another
group's tensor, another position, a tensor factory) the channels it was read from, and the tracked inputs
of the node it reaches, are blocked with the reason named.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx

from graphopt.pruning.channel_map import BlockReason, ChannelMap
from graphopt.pruning.dependency import DependencyGraph, NodeMap, nested_nodes

_RESHAPE_METHODS = ("view", "reshape")


@dataclass
class _Source:
    """A channel map whose channel count a value depends on; ``axis`` None: the whole shape tuple."""

    tensor: fx.Node
    channels: ChannelMap
    axis: int | None


@dataclass
class SizeFlow:
    """The channel-size sources of every non-tensor value seen so far in the walk."""

    sources: dict[fx.Node, list[_Source]] = field(default_factory=dict)

    def visit(self, graph: DependencyGraph, node: fx.Node, maps: dict[fx.Node, NodeMap]) -> None:
        """Record ``node``'s sources, or block what a channel-derived size reaches unsafely."""
        queried = _size_query(node, maps)
        if queried is not None:
            if queried.axis is None or queried.axis in queried.channels.axes:
                self.sources[node] = [queried]
            return
        if _is_shape_index(node) and node.args[0] in self.sources:
            self.sources[node] = _index(self.sources[node.args[0]], node.args[1])
            return
        inbound = [s for arg in nested_nodes((node.args, node.kwargs)) for s in self.sources.get(arg, [])]
        if not inbound:
            return
        if "shape" not in node.meta and not isinstance(maps.get(node), ChannelMap):
            self.sources[node] = inbound  # arithmetic on sizes: still a size
            return
        unsafe = _unsafe_sources(graph, node, maps, self.sources)
        for source in unsafe:
            reason = BlockReason(
                "channel_count_read", f"{node.name} is shaped by the channel count of {source.tensor.name}"
            )
            graph.block(source.channels, reason)
            for arg in nested_nodes((node.args, node.kwargs)):
                graph.block(maps.get(arg), reason)


def _size_query(node: fx.Node, maps: dict[fx.Node, NodeMap]) -> _Source | None:
    if node.op == "call_function" and node.target is getattr and node.args[1] == "shape":
        tensor, axis = node.args[0], None
    elif node.op == "call_method" and node.target == "size":
        tensor = node.args[0]
        axis = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
    else:
        return None
    channels = maps.get(tensor) if isinstance(tensor, fx.Node) else None
    if not isinstance(channels, ChannelMap):
        return None
    if isinstance(axis, int):
        axis %= len(node.args[0].meta.get("shape", ())) or 1
    return _Source(tensor, channels, axis if isinstance(axis, int) else None)


def _is_shape_index(node: fx.Node) -> bool:
    return node.op == "call_function" and node.target is operator.getitem and isinstance(node.args[1], int)


def _index(sources: list[_Source], index: int) -> list[_Source]:
    picked = []
    for source in sources:
        if source.axis is not None:
            picked.append(source)  # a size already picked out: indexing it is not a shape lookup
            continue
        axis = index % max(len(source.tensor.meta.get("shape", ())), 1)
        if axis in source.channels.axes:
            picked.append(_Source(source.tensor, source.channels, axis))
    return picked


def _unsafe_sources(
    graph: DependencyGraph, node: fx.Node, maps: dict[fx.Node, NodeMap], sources: dict[fx.Node, list[_Source]]
) -> list[_Source]:
    """Sources reaching ``node`` anywhere but a rewritten size position of a same-group reshape."""
    rewritten = _rewritten_positions(node, maps.get(node))
    reshaped = maps.get(node.args[0]) if rewritten else None
    unsafe: list[_Source] = []
    for position, value in _size_arguments(node):
        if not (isinstance(value, fx.Node) and value in sources):
            continue
        for source in sources[value]:
            if position not in rewritten or not _same_units(graph, source.channels, reshaped):
                unsafe.append(source)
    for arg in nested_nodes((node.args, node.kwargs)):  # a channel-derived value anywhere else in the call
        if arg in sources and not any(arg is v for _, v in _size_arguments(node)):
            unsafe.extend(sources[arg])
    return unsafe


def _same_units(graph: DependencyGraph, a: ChannelMap, b: NodeMap) -> bool:
    if not isinstance(b, ChannelMap):
        return False
    units = [set(graph.coupling.roots(m.atoms).ravel().tolist()) - {-1} for m in (a, b)]
    return units[0] == units[1]


def _is_reshape(node: fx.Node) -> bool:
    return (node.op == "call_method" and node.target in _RESHAPE_METHODS) or (
        node.op == "call_function" and node.target is torch.reshape
    )


def _rewritten_positions(node: fx.Node, out: NodeMap) -> set[int]:
    return set(out.axes) if _is_reshape(node) and isinstance(out, ChannelMap) else set()


def _size_arguments(node: fx.Node) -> list[tuple[int, Any]]:
    """``(output axis, value)`` of a reshape's size arguments; nothing for other ops."""
    if not _is_reshape(node):
        return []
    sizes: Any = node.args[1:]
    if len(sizes) == 1 and isinstance(sizes[0], (tuple, list)):
        sizes = sizes[0]
    if "shape" in node.kwargs:
        sizes = node.kwargs["shape"]
    return list(enumerate(sizes))
