"""Calibrating exit thresholds on held-out labelled data.

With ``K`` heads, sample ``i`` leaves at the first head ``k`` whose confidence ``c_k(i) >= t_k`` (else at
the final classifier), costing ``costs[k]``: the backbone up to cut ``k`` plus heads ``0..k``, in MACs or in
milliseconds measured in the runtime (:mod:`graphopt.early_exit.paths`). The goal is to minimise the
expected cost ``mean_i costs[exit(i)]`` while the accuracy drop against the network without
exits stays within ``budget`` on *new* data, not only on the ``n`` held-out samples.

The constraint is the conformal risk control rule (Angelopoulos, Bates, Fisch, Lei, Schuster, 2022). The
loss of sample ``i`` is ``harm_i = 1`` when the network without exits classifies it correctly and the
routed prediction does not (else 0); it only grows as thresholds fall. Thresholds are feasible when

    (sum_i harm_i + 1) / (n + 1) <= budget

which bounds the expected harm, hence the expected accuracy drop, on a new sample exchangeable with the
held-out ones by ``budget``. Plain ``mean_i harm_i <= budget`` sits on the edge the held-out set happens to
allow and overshoots on new data about half the time (measured: 0.56 pp on a 0.3 pp budget). The ``+1``
also means that certifying a budget ``b`` needs ``n >= 1/b - 1`` held-out samples (333 for 0.3 pp); with
fewer, no exit is certified and the exits stay off. The held-out samples must be new to the model: the
bound assumes they are exchangeable with the data it will see.

Greedy, head by head from the first: ``t_k`` is the lowest candidate threshold (the held-out confidences
of the samples still in the network, then "never") that keeps the constraint with the thresholds chosen so
far. A lower threshold only lets more samples out earlier, so for fixed earlier thresholds the lowest
feasible one is the cheapest. "Never" for every head is the network without exits (no harm), so the search
ends on every input; when an exit stays unused the report says so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from graphopt.early_exit.network import confidence

NEVER = float("inf")


@dataclass
class Routing:
    thresholds: list[float]
    exit_of: torch.Tensor  # per sample, the exit it leaves at (K = the final classifier)
    accuracy: float
    expected_cost: float  # in the unit of the costs calibrated with: MACs or milliseconds per sample
    harm: int = 0  # held-out samples the network without exits gets right and the routing gets wrong

    def mean_cost(self, per_path: list[float]) -> float:
        """The mean over the samples of another cost per path (MACs when calibrated on milliseconds)."""
        return float(torch.tensor(per_path, dtype=torch.float64)[self.exit_of].mean())


def route(
    scores: list[torch.Tensor],
    correct: list[torch.Tensor],
    costs: list[float],
    thresholds: list[float],
    reference: torch.Tensor | None = None,
) -> Routing:
    """Where each sample leaves for ``thresholds``, with the accuracy, expected cost and harm that follow
    (``reference``: per sample, whether the network without exits is right; default ``correct[-1]``)."""
    n = len(correct[-1])
    exit_of = torch.full((n,), len(scores), dtype=torch.long)
    for k in reversed(range(len(scores))):  # the earliest passing head wins
        exit_of[scores[k] >= thresholds[k]] = k
    hit = torch.stack(correct)[exit_of, torch.arange(n)]
    cost = torch.tensor(costs, dtype=torch.float64)[exit_of]
    reference = correct[-1] if reference is None else reference
    harm = int((reference & ~hit).sum())
    return Routing(list(thresholds), exit_of, float(hit.float().mean()), float(cost.mean()), harm)


def harm_allowed(samples: int, budget_pp: float) -> int:
    """The largest total harm on ``samples`` held-out samples that certifies ``budget_pp`` (-1: none, not even
    zero harm, certifies it)."""
    return math.floor(budget_pp / 100 * (samples + 1) - 1 + 1e-9)


def samples_needed(budget_pp: float) -> int | None:
    """The fewest held-out samples on which zero harm certifies ``budget_pp`` (the inverse of
    :func:`harm_allowed`); None for a 0 pp budget, which no finite set certifies."""
    return math.ceil(100 / budget_pp - 1 - 1e-9) if budget_pp > 0 else None


def calibrate(
    logits: list[torch.Tensor],
    labels: torch.Tensor,
    costs: list[float],
    budget_pp: float,
    criterion: str,
    reference: torch.Tensor | None = None,
) -> Routing:
    """Thresholds for the ``len(logits) - 1`` heads (``logits[-1]``: the final classifier's). ``reference``
    (per sample, whether the network without exits is right) defaults to the final classifier's
    correctness; it differs when training changed the final classifier."""
    scores = [confidence(z, criterion) for z in logits[:-1]]
    correct = [z.argmax(-1) == labels for z in logits]
    allowed = harm_allowed(len(labels), budget_pp)
    thresholds = [NEVER] * len(scores)
    for k in range(len(scores) if allowed >= 0 else 0):
        remaining = route(scores, correct, costs, thresholds, reference).exit_of >= k
        candidates = torch.unique(scores[k][remaining]).tolist()
        for t in candidates:  # ascending: the first feasible one lets the most samples out
            trial = [*thresholds[:k], t, *thresholds[k + 1 :]]
            if route(scores, correct, costs, trial, reference).harm <= allowed:
                thresholds[k] = t
                break
    return route(scores, correct, costs, thresholds, reference)
