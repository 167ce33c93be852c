"""Timing for ``run_bench``: every candidate on the example input in short interleaved rounds, models with
early exits one held-out image at a time, then the speed-ups and the fraction of the measured peak.

Rounds: each candidate is called for about ``round_ms`` per round (at least once), round after round, so a
slow patch of the machine falls on every candidate of a round alike. Speed-ups: see :func:`add_ratios`.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from graphopt.backends.timing import calls_for, interleaved_rounds, paired_ratio, stats_of_rounds, summarize
from graphopt.data.batches import as_input_tuple
from graphopt.early_exit.measure import BLOCK, interleaved_per_sample, one_by_one
from graphopt.reporting.notes import Note
from graphopt.reporting.progress import Progress

from .candidates import Candidate
from .machine import gemm_peaks
from .models import BenchModel
from .peer_rows import PEERS
from .pipelines import without_exits_label
from .schema import REFERENCES, BenchResult, BenchRow

RatioStatistic = Literal["min", "paired-median"]
Rounds = dict[str, list[np.ndarray]]  # per-call milliseconds of each candidate, round by round


def time_fixed_input(
    bench: BenchModel, candidates: list[Candidate], *, rounds: int, round_ms: float, quiet: bool
) -> Rounds:
    """Interleaved rounds on the example input; each candidate gets about ``round_ms`` per round (at least
    one call), so a round is short and a slow patch of the machine falls on every candidate of it."""
    calls = {c.row.key: c.bind(bench.example_inputs) for c in candidates}
    per_round = {key: calls_for(call, round_ms, at_least=1, at_most=100_000) for key, call in calls.items()}
    progress = Progress(rounds, f"timing {len(calls)} candidates", quiet=quiet)
    samples = interleaved_rounds(calls, rounds=rounds, calls_per_round=per_round,
                                 on_round=lambda _: progress.update())  # fmt: skip
    for candidate in candidates:
        candidate.row.latency = stats_of_rounds(samples[candidate.row.key])
    return samples


def time_per_sample(bench: BenchModel, peers: list[Candidate], candidates: list[Candidate]) -> None:
    """Each exit model over the held-out split one image at a time, interleaved block by block
    (:func:`~graphopt.early_exit.measure.interleaved_per_sample`) with the reference peers (the original in
    ORT fp32 and eagerly, ORT quantize_static when run) and with its own pipeline's artifact without exits
    when that ran (the comparison early exit is for: a per-image mean against a median call of one
    repeated input mixes two measures); ratios of means go into the rows. Every image is bound to every
    runner first, so only the runtime's call is timed. The eager references run every
    ``EAGER_STRIDE``-th image only: a network without exits costs the same on every image, and eager
    PyTorch calls (~3 ms on fashion_resnet) over all 10,000 images took most of this step's time."""
    exits = [c for c in candidates if c.timed and c.exits]
    if not exits:
        return
    assert bench.eval is not None  # check_can_run refused exit pipelines without labelled data
    samples = [as_input_tuple(inputs) for inputs, _ in one_by_one(bench.eval)]
    names = {name for group in REFERENCES.values() for name in group}
    references = {c.row.stage: c for c in peers if c.row.stage in names}
    for candidate in exits:
        sibling = _without_exits(candidate, candidates)
        runners = {"exits": candidate, **references, **({NO_EXITS: sibling} if sibling else {})}
        times = interleaved_per_sample(
            {name: [c.bind(s) for s in _images_for(c, samples)] for name, c in runners.items()}
        )
        row = candidate.row
        row.latency = summarize(times["exits"])
        row.mean_ms = float(times["exits"].mean())
        if sibling is not None:
            row.no_exit_mean_ms = float(times[NO_EXITS].mean())
            row.notes.append(Note(
                EXITS_AGAINST_NO_EXITS,
                f"per test image, the same images interleaved: {row.mean_ms:.3f} ms mean against "
                f"{row.no_exit_mean_ms:.3f} ms for {sibling.row.pipeline}'s artifact without exits "
                f"({row.mean_ms / row.no_exit_mean_ms:.2f}x its latency)",
                without_exits=sibling.row.pipeline,
            ))  # fmt: skip
        for field, group in REFERENCES.items():
            means = [float(times[name].mean()) for name in group if name in times]
            if means:
                setattr(row, field, min(means) / row.mean_ms)
        row.latency_basis = (
            f"per held-out image, batch 1 ({len(samples)} images, eager references every {EAGER_STRIDE}th), "
            f"interleaved in blocks of {BLOCK}; ratios of means"
        )


NO_EXITS = "without exits"
#: Note key (graphopt.reporting.notes) on an exit row timed against its pipeline's artifact without exits;
#: fact ``without_exits``: that pipeline's label (the times are the row's ``mean_ms`` / ``no_exit_mean_ms``).
EXITS_AGAINST_NO_EXITS = "bench:exits_against_no_exits"
EAGER_STRIDE = 10


def _images_for(runner: Candidate, samples: list[tuple]) -> list[tuple]:
    return samples[::EAGER_STRIDE] if runner.row.stage in REFERENCES["speedup_vs_eager"] else samples


def _without_exits(exit_model: Candidate, candidates: list[Candidate]) -> Candidate | None:
    """The timed artifact, in the same runtime, of the exit model's pipeline without ``+early-exit``."""
    label = without_exits_label(exit_model.row.pipeline)
    return next(
        (
            c
            for c in candidates
            if c.row.pipeline == label and c.row.kind == "artifact" and c.timed and not c.exits
            and c.row.runtime == exit_model.row.runtime
        ),
        None,
    )  # fmt: skip


def remeasure_peak(result: BenchResult) -> None:
    """Measure the peak again now the core has been busy for a while, and keep the higher of the two."""
    fp32, int8 = gemm_peaks()
    machine = result.machine
    machine["peak_fp32_gmacs"] = max(fp32, machine.get("peak_fp32_gmacs") or 0.0)
    machine["peak_int8_gmacs"] = max(int8, machine.get("peak_int8_gmacs") or 0.0)


def add_ratios(result: BenchResult, rounds: Rounds, statistic: RatioStatistic) -> None:
    """Speed-ups against every reference peer that ran, and the fraction of the measured peak.

    ``statistic="min"``: the ratio of the fastest calls, the latency of a quiet machine. On a shared
    machine the median carries other tenants' load, which differs from run to run and slows a model that
    streams its weights from DRAM more than one that fits in cache: across two ResNet-18 runs the worst of
    42 ratios moved 8.0 % paired-median and 3.9 % by minimum. ``"paired-median"``: the median over rounds of
    the ratio of round medians (:func:`~graphopt.backends.timing.paired_ratio`), the typical case.
    """
    peaks = {"fp32": result.machine.get("peak_fp32_gmacs"), "int8": result.machine.get("peak_int8_gmacs")}
    rows = {row.key: row for row in result.rows}
    references = {}
    for field, group in REFERENCES.items():
        keys = [f"{PEERS} / {name}" for name in group if f"{PEERS} / {name}" in rounds]
        if keys:  # the fastest of the group in this run
            references[field] = min(keys, key=lambda k: _statistic(rows[k], rounds[k], statistic))
    for row in result.rows:
        if row.latency is None or row.mean_ms is not None or row.key not in rounds:
            continue
        for field, key in references.items():
            if statistic == "min":
                ratio = rows[key].latency.min_ms / row.latency.min_ms  # type: ignore[union-attr]
            else:
                ratio = paired_ratio(rounds[key], rounds[row.key])
            setattr(row, field, ratio)
        peak = peaks.get(row.numeric)
        if peak:
            row.roofline = row.macs / (row.latency.median_ms * 1e-3) / (peak * 1e9)


def _statistic(row: BenchRow, rounds: list[np.ndarray], statistic: RatioStatistic) -> float:
    assert row.latency is not None
    return row.latency.min_ms if statistic == "min" else float(np.median([np.median(r) for r in rounds]))
