"""The exactness check of pruning: zero what will be removed, prune, and the outputs must not move.

Zeroing a unit's producer rows, BatchNorm/depthwise entries, parameter slices and consumer columns makes the
dense model compute exactly what the pruned one computes, *if* the coupling is right: a channel that the
analysis forgot to couple (a residual partner, a concat offset, a shuffle permutation) keeps a non-zero
path and the outputs differ. Tests and benchmarks use it on every reference architecture.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.fx as fx

from graphopt.pruning.analysis import analyze
from graphopt.pruning.config import PruneConfig
from graphopt.pruning.dependency import DependencyGraph


def zero_units(graph: DependencyGraph, removed: Iterable[int]) -> None:
    """Set every weight that :func:`~graphopt.pruning.surgery.remove_units` would cut to zero."""
    roots = np.asarray(sorted(set(removed)), dtype=np.int64)
    gm = graph.gm

    def gone(atoms: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.nonzero(graph.coupling.removed(atoms, roots))[0], dtype=torch.long)

    with torch.no_grad():
        for p in graph.producers.values():
            module, index = gm.get_submodule(p.target), gone(p.atoms)
            module.weight[index] = 0
            if module.bias is not None:
                module.bias[index] = 0
        for f in graph.followers.values():
            module, index = gm.get_submodule(f.target), gone(f.positions)
            for name in ("weight", "bias"):
                if getattr(module, name, None) is not None:
                    getattr(module, name)[index] = 0
        for c in graph.consumers.values():
            module = gm.get_submodule(c.target)
            mask = graph.coupling.removed(c.positions[0], roots)
            if c.groups > 1:
                mask = mask.reshape(c.groups, -1)[0]
            module.weight[:, torch.as_tensor(np.nonzero(mask)[0], dtype=torch.long)] = 0
        for s in graph.params.values():
            owner_name, _, name = s.target.rpartition(".")
            owner = gm.get_submodule(owner_name) if owner_name else gm
            getattr(owner, name).index_fill_(s.axis, gone(s.positions), 0)


@dataclass(frozen=True)
class ExactnessRun:
    """The outputs before (units zeroed) and after pruning, MACs before and after, the units removed."""

    zeroed: Any
    pruned: Any
    macs_before: int
    macs_after: int
    removed: int


def zero_then_prune(
    gm: fx.GraphModule, inputs: tuple[torch.Tensor, ...], config: PruneConfig
) -> ExactnessRun:
    """Analyze ``gm``, zero the units ``config`` selects, record the outputs, prune, record them again."""
    from graphopt.ir.shapes import propagate_shapes
    from graphopt.pruning.importance import unit_scores
    from graphopt.pruning.selection import choose
    from graphopt.pruning.surgery import remove_units
    from graphopt.reporting.cost import count_macs

    propagate_shapes(gm, inputs)
    before = count_macs(gm)
    graph = analyze(gm, whole_heads=config.heads == "whole")
    selection = choose(graph.groups(), unit_scores(graph, config), config)
    zero_units(graph, selection.removed)
    with torch.no_grad():
        zeroed = gm(*inputs)
        remove_units(graph, selection.removed)
        pruned = gm(*inputs)
    propagate_shapes(gm, inputs)
    gm.graph.lint()
    return ExactnessRun(zeroed, pruned, before, count_macs(gm), len(selection.removed))
