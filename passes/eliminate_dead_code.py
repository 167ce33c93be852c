"""Remove nodes whose results nobody uses, and the submodules no node calls any more.

A node is dead when it has no users and cannot write to its inputs: placeholders, the output, ops torch.fx
knows to be impure, in-place tensor methods (``y.add_(1)``, found from their ATen schema) and
``inplace=True`` modules/functions all stay (see :func:`graphopt.ir.graph.mutates_inputs`). Removing a dead
node cannot change the outputs, so the pass is exact.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.fx as fx

from graphopt.ir.graph import mutates_inputs
from graphopt.pipeline.pass_base import Pass, PassOptions, PassResult


@dataclass(frozen=True)
class EliminateDeadCodeOptions(PassOptions):
    """eliminate_dead_code has no options."""


class EliminateDeadCode(Pass):
    name = "eliminate_dead_code"
    slot = "cleanup"
    description = "Remove unused pure nodes and submodules that no node references."
    exact = True
    Options = EliminateDeadCodeOptions

    def call(self, gm: fx.GraphModule) -> PassResult:
        nodes_before = len(gm.graph.nodes)
        modules_before = sum(1 for _ in gm.modules())
        gm.graph.eliminate_dead_code(is_impure_node=lambda node: mutates_inputs(gm, node))
        gm.delete_all_unused_submodules()
        stats = {
            "nodes_removed": nodes_before - len(gm.graph.nodes),
            "submodules_removed": modules_before - sum(1 for _ in gm.modules()),
        }
        return PassResult(gm, modified=any(stats.values()), stats=stats)
