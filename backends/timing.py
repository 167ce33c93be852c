"""Latency measurement shared by the runners: warm-up, then repeated single calls, summarised robustly.

Statistics are the median and the 10th/90th percentiles (and the minimum) of per-call wall times measured
with ``time.perf_counter``. The median is what graphopt reports: it ignores the slow tail that scheduling
noise adds on shared machines, while p10/p90 show the spread.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch


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
    return summarize(_samples(call, repeat))


def summarize(samples_ms: np.ndarray | list[float], median_ms: float | None = None) -> LatencyStats:
    """Median, p10, p90 and minimum of per-call times (``median_ms`` overrides the pooled median)."""
    samples = np.asarray(samples_ms, dtype=float)
    p10, median, p90 = np.percentile(samples, [10, 50, 90])
    median = median if median_ms is None else median_ms
    return LatencyStats(float(median), float(p10), float(p90), float(samples.min()), len(samples))


def _samples(call: Callable[[], object], repeat: int) -> np.ndarray:
    samples = np.empty(repeat)
    for i in range(repeat):
        start = time.perf_counter()
        call()
        samples[i] = (time.perf_counter() - start) * 1e3
    return samples


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


@contextmanager
def torch_threads(count: int | None) -> Iterator[None]:
    """Torch's intra-op thread count set to ``count`` for the block (None: unchanged), restored after."""
    saved = torch.get_num_threads()
    if count is not None:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


@contextmanager
def edge_timing(threads: int = 1, *, pin: bool = True) -> Iterator[int | None]:
    """One pinned core and ``threads`` torch threads for the duration; yields the core (None: not pinned).

    The process's previous affinity and thread count come back afterwards, so a caller that trains after
    timing (or a test suite) keeps its cores.
    """
    saved_threads = torch.get_num_threads()
    saved_affinity = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    try:
        core = pin_to_one_core() if pin else None
        torch.set_num_threads(threads)
        yield core
    finally:
        torch.set_num_threads(saved_threads)
        if saved_affinity is not None:
            os.sched_setaffinity(0, saved_affinity)


def interleaved_medians(
    candidates: dict[str, Callable[[], object]],
    *,
    rounds: int = 5,
    calls_per_round: int = 20,
    warmup: int = 5,
) -> dict[str, float]:
    """Median latency (ms) per candidate, measured in interleaved rounds (see :func:`interleaved_stats`)."""
    stats = interleaved_stats(candidates, rounds=rounds, calls_per_round=calls_per_round, warmup=warmup)
    return {name: s.median_ms for name, s in stats.items()}


def interleaved_stats(
    candidates: dict[str, Callable[[], object]],
    *,
    rounds: int = 5,
    calls_per_round: int | dict[str, int] = 20,
    warmup: int = 5,
    on_round: Callable[[int], object] | None = None,
) -> dict[str, LatencyStats]:
    """Latency per candidate from :func:`interleaved_rounds`: the median is the median of round medians (a
    slow patch of a shared machine hits every candidate of that round alike); p10, p90 and the minimum are
    over all calls pooled."""
    samples = interleaved_rounds(
        candidates, rounds=rounds, calls_per_round=calls_per_round, warmup=warmup, on_round=on_round
    )
    return {name: stats_of_rounds(parts) for name, parts in samples.items()}


def interleaved_rounds(
    candidates: dict[str, Callable[[], object]],
    *,
    rounds: int = 5,
    calls_per_round: int | dict[str, int] = 20,
    warmup: int = 5,
    on_round: Callable[[int], object] | None = None,
) -> dict[str, list[np.ndarray]]:
    """Per-call milliseconds of every candidate, round by round: each round calls every candidate
    ``calls_per_round`` times (one number, or one per candidate) in turn."""
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    per_call = (
        calls_per_round if isinstance(calls_per_round, dict) else dict.fromkeys(candidates, calls_per_round)
    )
    samples: dict[str, list[np.ndarray]] = {name: [] for name in candidates}
    for call in candidates.values():
        for _ in range(warmup):
            call()
    for index in range(rounds):
        for name, call in candidates.items():
            samples[name].append(_samples(call, max(1, per_call[name])))
        if on_round is not None:
            on_round(index)
    return samples


def stats_of_rounds(parts: list[np.ndarray]) -> LatencyStats:
    """Median of round medians; p10, p90 and minimum over all calls."""
    return summarize(np.concatenate(parts), median_ms=float(np.median([np.median(p) for p in parts])))


def paired_ratio(reference: list[np.ndarray], candidate: list[np.ndarray]) -> float:
    """How many times faster ``candidate`` is than ``reference``: the median over rounds of the ratio of
    their round medians. Pairing samples taken moments apart cancels what a slow patch does to both, so
    this ratio repeats better across runs than a ratio of overall medians."""
    ratios = [np.median(r) / np.median(c) for r, c in zip(reference, candidate, strict=True)]
    return float(np.median(ratios))


def calls_for(call: Callable[[], object], round_ms: float, *, at_least: int = 3, at_most: int = 50) -> int:
    """How many calls of ``call`` fill about ``round_ms`` milliseconds (within ``[at_least, at_most]``)."""
    one_call_ms = float(np.median(_samples(call, 3)))
    return int(min(max(round_ms / max(one_call_ms, 1e-3), at_least), at_most))
