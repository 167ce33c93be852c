"""``analyze``: walk a graph and build its channel-dependency graph with the rule table.

Its own module so that the import order is one way: ``dependency`` (the graph's types) <- ``rules`` and
``size_flow`` (what each op does to channels) <- this module.
"""

from __future__ import annotations

import torch.fx as fx

from graphopt.pruning.dependency import DependencyGraph, NodeMap, nested_nodes
from graphopt.pruning.rules import apply_rule
from graphopt.pruning.size_flow import SizeFlow


def analyze(gm: fx.GraphModule) -> DependencyGraph:
    """Walk ``gm`` (shapes in ``node.meta``) and return its channel dependencies."""
    graph = DependencyGraph(gm)
    maps: dict[fx.Node, NodeMap] = {}
    sizes = SizeFlow()
    for node in gm.graph.nodes:
        if node.op == "output":
            for value in nested_nodes(node.args):
                graph.block(maps.get(value), "reaches the network output")
            sizes.visit(graph, node, maps)
            continue
        maps[node] = apply_rule(graph, node, maps)
        sizes.visit(graph, node, maps)
    return graph
