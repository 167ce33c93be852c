"""Side-by-side latency: candidates are timed in interleaved rounds, so ratios survive a noisy machine.

Each round calls every candidate ``calls_per_round`` times and records its median; the result per candidate
is the median over rounds. A slow patch of the machine hits all candidates in the same round alike.
"""

from __future__ import annotations

from collections.abc import Callable

from graphopt.backends import measure


def interleaved_medians(
    candidates: dict[str, Callable[[], object]],
    *,
    rounds: int = 7,
    calls_per_round: int = 20,
    warmup: int = 5,
) -> dict[str, float]:
    per_round: dict[str, list[float]] = {name: [] for name in candidates}
    for call in candidates.values():
        measure(call, warmup=warmup, repeat=1)
    for _ in range(rounds):
        for name, call in candidates.items():
            per_round[name].append(measure(call, warmup=0, repeat=calls_per_round).median_ms)
    return {name: sorted(times)[len(times) // 2] for name, times in per_round.items()}
