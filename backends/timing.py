"""Latency measurement shared by the runners: warm-up, then repeated single calls, summarised robustly.

Statistics are the median and the 10th/90th percentiles (and the minimum) of per-call wall times measured
with ``time.perf_counter``. The median is what graphopt reports: it ignores the slow tail that scheduling
noise adds on shared machines, while p10/p90 show the spread.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class LatencyStats:
    """Per-call latency in milliseconds."""

    median_ms: float
    p10_ms: float
    p90_ms: float
    min_ms: float
    runs: int

    def __str__(self) -> str:
        return f"{self.median_ms:.3f} ms (p10 {self.p10_ms:.3f}, p90 {self.p90_ms:.3f}, n={self.runs})"


def measure(call: Callable[[], object], *, warmup: int = 10, repeat: int = 100) -> LatencyStats:
    """Time ``call`` ``repeat`` times after ``warmup`` untimed calls."""
    if repeat < 1 or warmup < 0:
        raise ValueError(f"repeat must be >= 1 and warmup >= 0, got repeat={repeat}, warmup={warmup}")
    for _ in range(warmup):
        call()
    samples = np.empty(repeat)
    for i in range(repeat):
        start = time.perf_counter()
        call()
        samples[i] = (time.perf_counter() - start) * 1e3
    p10, median, p90 = np.percentile(samples, [10, 50, 90])
    return LatencyStats(float(median), float(p10), float(p90), float(samples.min()), repeat)


def pin_to_one_core() -> int | None:
    """Pin this process to the lowest core it may run on (Linux); return that core, or None elsewhere.

    One pinned core with one thread is how graphopt times artifacts: batch-1 edge inference, and ratios that
    do not depend on what else the machine is running on other cores.
    """
    if not hasattr(os, "sched_getaffinity"):
        return None
    core = min(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {core})
    return core


def interleaved_medians(
    candidates: dict[str, Callable[[], object]],
    *,
    rounds: int = 5,
    calls_per_round: int = 20,
    warmup: int = 5,
) -> dict[str, float]:
    """Median latency (ms) per candidate, measured in interleaved rounds so that ratios survive noise.

    Each round calls every candidate ``calls_per_round`` times and keeps its median; the result is the median
    over rounds. A slow patch of a shared machine then hits all candidates of that round alike.
    """
    per_round: dict[str, list[float]] = {name: [] for name in candidates}
    for call in candidates.values():
        measure(call, warmup=warmup, repeat=1)
    for _ in range(rounds):
        for name, call in candidates.items():
            per_round[name].append(measure(call, warmup=0, repeat=calls_per_round).median_ms)
    return {name: float(np.median(times)) for name, times in per_round.items()}
