"""Remove nodes whose results nobody uses, and the submodules no node calls any more.

A node is dead when it has no users and is pure (torch.fx's ``Node.is_impure`` keeps placeholders, the
output, and ops with side effects such as in-place updates and RNG state changes). Removing it cannot
change the outputs, so the pass is exact.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.fx as fx

from graphopt.pass_base import Pass, PassOptions, PassResult


@dataclass(frozen=True)
class EliminateDeadCodeOptions(PassOptions):
    """eliminate_dead_code has no options."""


class EliminateDeadCode(Pass):
    name = "eliminate_dead_code"
    description = "Remove unused pure nodes and submodules that no node references."
    exact = True
    Options = EliminateDeadCodeOptions

    def call(self, gm: fx.GraphModule) -> PassResult:
        nodes_before = len(gm.graph.nodes)
        modules_before = sum(1 for _ in gm.modules())
        gm.graph.eliminate_dead_code()
        gm.delete_all_unused_submodules()
        stats = {
            "nodes_removed": nodes_before - len(gm.graph.nodes),
            "submodules_removed": modules_before - sum(1 for _ in gm.modules()),
        }
        return PassResult(gm, modified=any(stats.values()), stats=stats)
