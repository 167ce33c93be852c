"""Structured channel pruning on the IR: dependency analysis, importance, selection and surgery.

    analyze(gm) ──▶ DependencyGraph (units of coupled channels, grouped; blocked units with reasons)
                ──unit_scores──▶ choose ──▶ remove_units(gm)

The pass that drives it is :class:`graphopt.passes.prune_channels.PruneChannels`.
"""

from __future__ import annotations

from graphopt.pruning.analysis import analyze
from graphopt.pruning.config import PruneConfig
from graphopt.pruning.dependency import DependencyGraph, Group
from graphopt.pruning.importance import unit_scores
from graphopt.pruning.selection import Selection, choose
from graphopt.pruning.surgery import SurgeryError, remove_units

__all__ = [
    "DependencyGraph",
    "Group",
    "PruneConfig",
    "Selection",
    "SurgeryError",
    "analyze",
    "choose",
    "remove_units",
    "unit_scores",
]
