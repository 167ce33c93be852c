"""Calibrating exit thresholds on held-out labelled data.

With ``K`` heads, sample ``i`` leaves at the first head ``k`` whose confidence ``c_k(i) >= t_k`` (else at
the final classifier), costing ``macs[k]``: the backbone up to cut ``k`` plus heads ``0..k``. The goal is to
minimise the expected cost ``mean_i macs[exit(i)]`` subject to
``accuracy(no exits) - accuracy(with exits) <= budget``.

Greedy, head by head from the first: ``t_k`` is the lowest candidate threshold (the held-out confidences
of the samples still in the network, then "never") that keeps the constraint with the thresholds chosen so
far. A lower threshold only lets more samples out earlier, so for fixed earlier thresholds the lowest
feasible one is the cheapest. "Never" always satisfies the constraint (then nothing changes), so the
search ends on every input; when an exit stays unused the report says so.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from graphopt.early_exit.network import confidence

NEVER = float("inf")


@dataclass
class Routing:
    thresholds: list[float]
    exit_of: torch.Tensor  # per sample, the exit it leaves at (K = the final classifier)
    accuracy: float
    expected_macs: float


def route(
    scores: list[torch.Tensor], correct: list[torch.Tensor], macs: list[float], thresholds: list[float]
) -> Routing:
    """Where each sample leaves for ``thresholds``, with the accuracy and expected MACs that follow."""
    n = len(correct[-1])
    exit_of = torch.full((n,), len(scores), dtype=torch.long)
    for k in reversed(range(len(scores))):  # the earliest passing head wins
        exit_of[scores[k] >= thresholds[k]] = k
    hit = torch.stack(correct)[exit_of, torch.arange(n)]
    cost = torch.tensor(macs, dtype=torch.float64)[exit_of]
    return Routing(list(thresholds), exit_of, float(hit.float().mean()), float(cost.mean()))


def calibrate(
    logits: list[torch.Tensor], labels: torch.Tensor, macs: list[float], budget_pp: float, criterion: str
) -> Routing:
    """Thresholds for the ``len(logits) - 1`` heads (``logits[-1]``: the final classifier's)."""
    scores = [confidence(z, criterion) for z in logits[:-1]]
    correct = [z.argmax(-1) == labels for z in logits]
    floor = float(correct[-1].float().mean()) - budget_pp / 100 - 1e-9
    thresholds = [NEVER] * len(scores)
    for k in range(len(scores)):
        remaining = route(scores, correct, macs, thresholds).exit_of >= k
        candidates = torch.unique(scores[k][remaining]).tolist()
        for t in candidates:  # ascending: the first feasible one lets the most samples out
            trial = [*thresholds[:k], t, *thresholds[k + 1 :]]
            if route(scores, correct, macs, trial).accuracy >= floor:
                thresholds[k] = t
                break
    return route(scores, correct, macs, thresholds)
