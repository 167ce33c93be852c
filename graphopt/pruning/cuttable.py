"""The last step of the analysis: block any unit whose removal the surgery could not cut consistently.

The rules couple channels so that every selection of units is a consistent cut. This check re-reads the
records once the walk has finished and blocks, with the reason named, whatever would still be inconsistent,
so a gap in a rule costs some pruning and never fails the pass in the middle of the surgery:

- a grouped conv's input positions: every group must keep the same positions (its weight has one column
  set for all groups), so position ``k`` must be one unit in every group;
- a depthwise conv with a multiplier: its ``m`` outputs of group ``i`` go together (they read one input).
"""

from __future__ import annotations

import numpy as np
from torch import nn

from graphopt.pruning.channel_map import UNTRACKED, BlockReason
from graphopt.pruning.dependency import DependencyGraph


def refuse_uncuttable(graph: DependencyGraph) -> None:
    for consumer in graph.consumers.values():
        if consumer.groups > 1:
            for positions in consumer.positions:
                columns = positions.reshape(consumer.groups, -1).T  # position k of every group
                _block_mixed(
                    graph, columns, f"{consumer.target}: groups would keep different input positions"
                )
    for follower in graph.followers.values():
        module = graph.gm.get_submodule(follower.target)
        if isinstance(module, nn.modules.conv._ConvNd) and module.groups > 1:
            rows = follower.positions.reshape(module.groups, -1)  # the outputs of one group
            _block_mixed(graph, rows, f"{follower.target}: a group would keep only some of its outputs")


def _block_mixed(graph: DependencyGraph, sets: np.ndarray, text: str) -> None:
    """Block every row of ``sets`` whose positions are not all one unit (or all untracked)."""
    reason = BlockReason("grouped_conv", text)
    for atoms in sets:
        roots = set(graph.coupling.roots(atoms).tolist())
        if len(roots) > 1:
            graph.coupling.block_all(atoms[atoms != UNTRACKED], reason)
