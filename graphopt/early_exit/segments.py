"""Where a network can exit, and the network cut into segments there.

An exit point is a *cut*: a node every path from the inputs to the output goes through, so that the rest of
the network depends on the inputs only through it. In topological order, node ``i`` is a cut when the only
node at or before ``i`` still used after ``i`` is node ``i`` itself. Only cuts yielding a feature map
``[N, C, H, W]`` can take a pooling head.

Cutting at ``c_1 < ... < c_k`` gives ``k + 1`` GraphModules: ``inputs -> c_1``, ``c_1 -> c_2``, ...,
``c_k -> outputs``; run in sequence they compute exactly what the whole graph computes.
"""

from __future__ import annotations

import copy
import difflib
from collections.abc import Sequence
from dataclasses import dataclass

import torch.fx as fx

from graphopt.errors import ConfigError
from graphopt.ir.graph import set_module, shape_of
from graphopt.reporting.cost import node_macs


@dataclass(frozen=True)
class Cut:
    node: fx.Node
    macs_before: int  # MACs of the backbone up to and including this node (batch as in the example)
    channels: int
    aliases: tuple[str, ...] = ()  # earlier cuts with no work in between (a ReLU before its quantizer)

    @property
    def name(self) -> str:
        return _name(self.node)

    @property
    def names(self) -> tuple[str, ...]:
        return (self.name, self.node.name, *self.aliases)


def _name(node: fx.Node) -> str:
    return str(node.target) if node.op == "call_module" else node.name


def find_cuts(gm: fx.GraphModule) -> tuple[list[Cut], int]:
    """Every cut yielding a 4-d feature map, in graph order, and the graph's total MACs."""
    nodes = list(gm.graph.nodes)
    index = {n: i for i, n in enumerate(nodes)}
    last_use = {n: max((index[u] for u in n.users), default=index[n]) for n in nodes}
    cuts: list[Cut] = []
    macs = 0
    for i, node in enumerate(nodes):
        if node.op in ("placeholder", "output", "get_attr"):
            continue
        macs += node_macs(gm, node)
        live = [n for n in nodes[: i + 1] if last_use[n] > i and n.op != "get_attr"]
        shape = shape_of(node)
        if live == [node] and shape is not None and len(shape) == 4:
            aliases: tuple[str, ...] = ()
            if cuts and cuts[-1].macs_before == macs:  # keep the later of two cuts with no work between
                aliases = cuts.pop().names
            cuts.append(Cut(node, macs, shape[1], aliases))
    return cuts, macs


def choose_cuts(
    cuts: list[Cut], total_macs: int, names: Sequence[str] | None, fractions: Sequence[float]
) -> list[Cut]:
    """The cuts named (a node name, or a module name: the last cut inside that module), else the cuts whose
    share of the MACs is closest to each fraction. Sorted, without duplicates."""
    if names:
        chosen = [_named_cut(cuts, name) for name in names]
    else:
        usable = [c for c in cuts if 0 < c.macs_before < total_macs]
        if not usable:
            raise ConfigError("the network has no point every path goes through, so no exit can be placed")
        chosen = [min(usable, key=lambda c: abs(c.macs_before / total_macs - f)) for f in fractions]
    unique = {id(c.node): c for c in chosen}
    return sorted(unique.values(), key=lambda c: cuts.index(c))


def _named_cut(cuts: list[Cut], name: str) -> Cut:
    exact = [c for c in cuts if name in c.names]
    inside = [c for c in cuts if any(n.startswith(name + ".") for n in c.names)]
    if exact or inside:
        return (exact or inside)[-1]
    known = [c.name for c in cuts]
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.4)
    hint = (
        f"; closest exit points: {', '.join(close)}" if close else f"; exit points: {', '.join(known[:12])}"
    )
    raise ConfigError(
        f"exit point {name!r} is not a node or module whose output every path goes through{hint}"
    )


def split_at(gm: fx.GraphModule, cuts: list[Cut]) -> list[fx.GraphModule]:
    """The ``len(cuts) + 1`` segments between the inputs, the cuts and the output."""
    nodes = [n for n in gm.graph.nodes]
    bounds = [nodes.index(c.node) for c in cuts]
    segments = []
    starts = [0, *[b + 1 for b in bounds]]
    ends = [*bounds, len(nodes) - 1]
    for k, (start, end) in enumerate(zip(starts, ends, strict=True)):
        graph = fx.Graph()
        env: dict[fx.Node, fx.Node] = {}
        if k > 0:
            env[cuts[k - 1].node] = graph.placeholder("features")

        def lookup(n: fx.Node, graph: fx.Graph = graph, env: dict[fx.Node, fx.Node] = env) -> fx.Node:
            if n not in env and n.op == "get_attr":  # a parameter read in several segments: read it here too
                env[n] = graph.get_attr(str(n.target))
            return env[n]

        for node in nodes[start : end + 1]:
            if node.op == "output":
                graph.output(fx.node.map_arg(node.args[0], lookup))
            else:
                env[node] = graph.node_copy(node, lookup)
        if k < len(cuts):
            graph.output(env[cuts[k].node])
        segment = fx.GraphModule(gm, graph, class_name=f"Segment{k}")
        _no_inplace(segment)
        segments.append(segment)
    return segments


def _no_inplace(segment: fx.GraphModule) -> None:
    """Turn in-place activations off: ``torch.cond`` branches must not mutate their operands, and at
    inference an in-place ReLU saves nothing worth the constraint. Modules are the segment's own copies."""
    for name, module in segment.named_modules():
        if getattr(module, "inplace", False):
            copy_ = copy.copy(module)
            copy_.inplace = False
            set_module(segment, name, copy_)
    for node in segment.graph.nodes:
        node.type = None  # annotations fx copied from the trace (``_Tensor_``) do not script
        if node.kwargs.get("inplace") is True:
            node.kwargs = {**node.kwargs, "inplace": False}
    segment.recompile()
