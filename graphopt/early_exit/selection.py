"""Which of the trained exits to keep: every candidate set calibrated, the cheapest expected cost kept.

An exit is worth its place only when the inputs it lets out save more than it adds to every input that
goes past it (its head, its confidence test, its branch). With costs measured in the runtime
(:mod:`graphopt.early_exit.paths`) that is not always so: a late exit on a small network can cost nearly
as much as the rest of the path. So each non-empty subset of the trained exits (for up to
:data:`MAX_SUBSET_EXITS` of them; beyond that only the whole set) gets its thresholds calibrated on the
held-out data within the same budget (:func:`~graphopt.early_exit.thresholds.calibrate`), and the subset
with the lowest expected cost per sample is kept; when costs are timed, "no exits" (the network without
them, one path) is a candidate too, and when it is the cheapest no exit is inserted. The heads are trained
once, on all exits: a head sees only the frozen backbone's features at its cut, so it is the same head in
every subset.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch

from graphopt.early_exit.network import EarlyExitNetwork
from graphopt.early_exit.thresholds import Routing, calibrate

#: With more exits than this only the whole set is calibrated (2^K - 1 subsets, each timed path by path).
MAX_SUBSET_EXITS = 3


#: A candidate set of exits: which trained exits it keeps, the network with them (None for no exits at all),
#: its cost per path.
Candidate = tuple[tuple[int, ...], EarlyExitNetwork | None, list[float]]


@dataclass
class ExitChoice:
    kept: tuple[int, ...]  # indices of the trained exits this network keeps
    network: EarlyExitNetwork | None  # None: no exits (the network as it was)
    costs: list[float]  # per path: leaving at each kept head, then at the end
    routing: Routing


def exit_subsets(count: int) -> list[tuple[int, ...]]:
    """The candidate sets of ``count`` trained exits: the whole set first, then every smaller non-empty one
    (only the whole set beyond :data:`MAX_SUBSET_EXITS`)."""
    whole = tuple(range(count))
    if count > MAX_SUBSET_EXITS:
        return [whole]
    smaller = [s for size in range(count - 1, 0, -1) for s in itertools.combinations(whole, size)]
    return [whole, *smaller]


def choose_exits(
    candidates: list[Candidate],
    logits: list[torch.Tensor],
    labels: torch.Tensor,
    budget_pp: float,
    criterion: str,
    reference: torch.Tensor,
) -> tuple[ExitChoice, list[ExitChoice]]:
    """Calibrate every candidate ``(kept, network, costs)`` on the held-out ``logits`` of all trained exits
    (then of the final classifier); return the cheapest in expected cost and all of them. Ties go to the
    earlier candidate (the whole set comes first)."""
    choices = []
    for kept, network, costs in candidates:
        routed = [logits[k] for k in kept] + [logits[-1]]
        routing = calibrate(routed, labels, costs, budget_pp, criterion, reference)
        choices.append(ExitChoice(kept, network, costs, routing))
    best = min(choices, key=lambda c: c.routing.expected_cost)
    return best, choices
