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

#: The kinds of reason this check blocks with (``blocked:<kind>`` on the pass's row, ``blocked`` column of
#: the pruning table): a grouped conv's groups would read different input positions; a grouped conv's
#: group would keep only some of its outputs.
GROUP_INPUT_POSITIONS = "group_input_positions"
GROUP_OUTPUTS_SPLIT = "group_outputs_split"


def refuse_uncuttable(graph: DependencyGraph) -> None:
    for consumer in graph.consumers.values():
        if consumer.groups > 1:
            for positions in consumer.positions:
                columns = positions.reshape(consumer.groups, -1).T  # position k of every group
                text = f"{consumer.target}: groups would keep different input positions"
                _block_mixed(graph, columns, BlockReason(GROUP_INPUT_POSITIONS, text))
    for follower in graph.followers.values():
        module = graph.gm.get_submodule(follower.target)
        if isinstance(module, nn.modules.conv._ConvNd) and module.groups > 1:
            rows = follower.positions.reshape(module.groups, -1)  # the outputs of one group
            text = f"{follower.target}: a group would keep only some of its outputs"
            _block_mixed(graph, rows, BlockReason(GROUP_OUTPUTS_SPLIT, text))


def _block_mixed(graph: DependencyGraph, sets: np.ndarray, reason: BlockReason) -> None:
    """Block every row of ``sets`` whose positions are not all one unit (or all untracked)."""
    for atoms in sets:
        roots = set(graph.coupling.roots(atoms).tolist())
        if len(roots) > 1:
            graph.coupling.block_all(atoms[atoms != UNTRACKED], reason)
