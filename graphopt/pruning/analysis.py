"""``analyze``: walk a graph and build its channel-dependency graph with the rule table.

Its own module so that the import order is one way: ``dependency`` (the graph's types) <- ``rules`` and
``size_flow`` (what each op does to channels) <- this module. The walk ends with
:func:`~graphopt.pruning.cuttable.refuse_uncuttable`, which blocks what the surgery could not cut.
"""

from __future__ import annotations

import torch.fx as fx

from graphopt.pruning.channel_map import BlockReason
from graphopt.pruning.cuttable import refuse_uncuttable
from graphopt.pruning.dependency import DependencyGraph, NodeMap, nested_nodes
from graphopt.pruning.rules import apply_rule
from graphopt.pruning.size_flow import SizeFlow

_OUTPUT = BlockReason("network_output", "reaches the network output")


def analyze(gm: fx.GraphModule, whole_heads: bool = True) -> DependencyGraph:
    """Walk ``gm`` (shapes in ``node.meta``) and return its channel dependencies; ``whole_heads``: an
    attention's unit is a whole head (else one channel position of every head)."""
    graph = DependencyGraph(gm, whole_heads)
    maps: dict[fx.Node, NodeMap] = {}
    sizes = SizeFlow()
    for node in gm.graph.nodes:
        if node.op == "output":
            for value in nested_nodes(node.args):
                graph.block(maps.get(value), _OUTPUT)
            sizes.visit(graph, node, maps)
            continue
        maps[node] = apply_rule(graph, node, maps)
        sizes.visit(graph, node, maps)
    refuse_uncuttable(graph)
    return graph
