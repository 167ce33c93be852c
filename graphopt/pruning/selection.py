"""Which units go: per group (``local``) or ranked across groups (``global``), then widths constrained.

For a group of ``n`` units of which ``p`` are prunable, ``local`` removes ``floor(ratio * p)`` of the least
important. ``global`` ranks every prunable unit by its score divided by its group's mean score (raw scores
of a 3-channel stem and a 512-channel stage are not comparable) and removes the lowest
``floor(ratio * total)``. Either way the kept width ``k`` of each group is then raised to
``max(k, min_channels)`` and rounded up so that it keeps a multiple of ``round_to`` channels (never above
``n``): with units of ``w`` channels each, such as whole attention heads, that is a multiple of
``round_to / gcd(round_to, w)`` units. Every producer of the group keeps at least one unit; a group that
would have been emptied or cut below the minimum is reported as clamped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from graphopt.pruning.config import PruneConfig
from graphopt.pruning.dependency import Group
from graphopt.pruning.importance import Scores


@dataclass
class Selection:
    removed: set[int] = field(default_factory=set)
    kept: dict[int, int] = field(default_factory=dict)  # group index -> units kept
    clamped: list[int] = field(default_factory=list)  # groups whose width the minimum raised


def choose(groups: list[Group], scores: Scores, config: PruneConfig) -> Selection:
    wanted = (
        _global_counts(groups, scores, config) if config.scope == "global" else _local_counts(groups, config)
    )
    selection = Selection()
    for group in groups:
        candidates = sorted(group.prunable, key=lambda u: (scores.get(u, 0.0), u))
        n = len(group.units)
        keep = n - wanted.get(group.index, 0)
        floor = min(math.ceil(config.min_channels / group.unit_width), n)  # in units of unit_width channels
        if keep < floor:
            selection.clamped.append(group.index)
            keep = floor
        multiple = _unit_multiple(config.round_to or 1, group.unit_width)  # None outside optimize: 1
        rounded = min(n, math.ceil(keep / multiple) * multiple)
        keep = keep if config.soft_round and rounded == n > keep else rounded
        chosen = _keep_every_producer(group, candidates, min(n - keep, len(candidates)))
        if len(chosen) < min(n - keep, len(candidates)):
            selection.clamped.append(group.index)
        selection.removed.update(chosen)
        selection.kept[group.index] = n - len(chosen)
    return selection


def _unit_multiple(channels: int, unit_width: int) -> int:
    """The multiple of units that keeps a multiple of ``channels`` channels: a unit of 32 channels (an
    attention head) is already a multiple of 8, so any head count is."""
    return channels // math.gcd(channels, unit_width)


def _keep_every_producer(group: Group, candidates: list[int], count: int) -> list[int]:
    """The first ``count`` candidates (least important first) whose removal leaves every producer of the
    group at least one unit: in a group coupled through a concat and a residual, one branch's units can
    all rank lowest, and a conv with zero output channels is not a layer."""
    remaining = {p: len(units) for p, units in group.producer_units.items()}
    owners: dict[int, list[str]] = {}
    for producer, units in group.producer_units.items():
        for unit in units:
            owners.setdefault(unit, []).append(producer)
    chosen: list[int] = []
    for unit in candidates:
        if len(chosen) == count:
            break
        if any(remaining[p] <= 1 for p in owners.get(unit, ())):
            continue
        for producer in owners.get(unit, ()):
            remaining[producer] -= 1
        chosen.append(unit)
    return chosen


def _local_counts(groups: list[Group], config: PruneConfig) -> dict[int, int]:
    return {g.index: math.floor(config.ratio * len(g.prunable)) for g in groups}


def _global_counts(groups: list[Group], scores: Scores, config: PruneConfig) -> dict[int, int]:
    ranked: list[tuple[float, int, int]] = []
    for g in groups:
        values = np.array([scores.get(u, 0.0) for u in g.prunable])
        mean = float(values.mean()) if len(values) and values.mean() > 0 else 1.0
        ranked += [(scores.get(u, 0.0) / mean, u, g.index) for u in g.prunable]
    ranked.sort()
    counts: dict[int, int] = {}
    for _, _, index in ranked[: math.floor(config.ratio * len(ranked))]:
        counts[index] = counts.get(index, 0) + 1
    return counts
