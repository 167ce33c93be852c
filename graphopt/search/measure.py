"""Measuring one candidate the way it will ship: exported, loaded back in its runtime, timed side by side
with the original in ONNX Runtime fp32, scored on validation data (and on test data, only reported).

Latency is a ratio from one timing session: the candidate and the original alternate in rounds
(:func:`~graphopt.backends.timing.interleaved_medians`), so a slow patch of the machine hits both. An
early-exit candidate's cost depends on the input: it is the mean per sample over (up to
:data:`EXIT_TIMING_SAMPLES` of) the validation samples, the original timed on the same samples in turn.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from graphopt.artifacts.result import OptimizeResult
from graphopt.backends import BACKENDS, OnnxRunner, export_onnx
from graphopt.backends.timing import calls_for, interleaved_medians
from graphopt.data.batches import Batch
from graphopt.early_exit.measure import has_exits, mean_latencies, per_sample_accuracy
from graphopt.ir.keys import SHIPPED_FP32
from graphopt.reporting.evaluation import accuracy

EXIT_TIMING_SAMPLES = 500
EXIT_TIMING_PASSES = 3  # each sample timed this many times (a single pass over a few hundred is noisy)
TIMING_ROUNDS = 10
#: Finalists are timed together in one session with more rounds (their ratios are what decides).
FINAL_ROUNDS = 25


@dataclass
class Baseline:
    """The original model in ONNX Runtime fp32: the reference every speed-up and drop is against."""

    runner: OnnxRunner
    inputs: tuple[torch.Tensor, ...]
    accuracy: float | None  # on validation data, percent
    test_accuracy: float | None

    @classmethod
    def of(
        cls,
        original: nn.Module,
        inputs: tuple[torch.Tensor, ...],
        threads: int,
        folder: Path,
        validation: list[Batch] | None,
        test: list[Batch] | None,
    ) -> Baseline:
        path = export_onnx(original, inputs, folder / "original.onnx")
        runner = OnnxRunner(path, threads=threads)
        return cls(runner, inputs, _percent(runner.run, validation), _percent(runner.run, test))

    def drop(self, value: float | None, test: bool = False) -> float | None:
        reference = self.test_accuracy if test else self.accuracy
        return None if value is None or reference is None else round(reference - value, 3)


@dataclass
class Measured:
    path: Path
    latency_ms: float
    baseline_ms: float
    bytes: int
    params: int
    macs: int
    accuracy: float | None  # validation, percent
    test_accuracy: float | None
    shipped_fp32: bool
    exits: bool
    backend: str = "onnx"

    @property
    def speedup(self) -> float:
        return self.baseline_ms / self.latency_ms


def measure_candidate(
    result: OptimizeResult,
    backend_name: str,
    path: Path,
    baseline: Baseline,
    validation: list[Batch] | None,
    test: list[Batch] | None,
    *,
    latency_guard: bool = False,
) -> Measured:
    """Export ``result`` to ``path``, then time and score the file. The search exports without the latency
    guard: it weighs the int8 candidate against the fp32 one itself (both are rows), and a size goal may
    need the int8 file even where it is not the faster; a preset pipeline measured for comparison keeps
    it (``latency_guard=True``), as ``export`` does."""
    backend = BACKENDS[backend_name]
    artifact = result.export(
        path.with_suffix(backend.suffix), backend=backend_name, latency_guard=latency_guard
    )
    record = result.report.stages[-1]
    runner = backend.runner(artifact, threads=result.target.backend.threads)
    exits = has_exits(result.model)
    score = per_sample_accuracy if exits else accuracy
    predict = getattr(runner, "run_batched", runner.run)
    test_accuracy = None if test is None else 100 * score(predict, test)
    valid_accuracy = None if validation is None else 100 * score(predict, validation)
    measured = Measured(
        path=artifact,
        latency_ms=float("nan"),  # timed just below, beside the original
        baseline_ms=float("nan"),
        bytes=artifact.stat().st_size,
        params=record.params,
        # an exit model's MACs depend on the input: the expected MACs per sample its exit stage measured
        macs=result.report.stage("insert_early_exit").macs if exits else record.macs,
        accuracy=valid_accuracy,
        test_accuracy=test_accuracy,
        shipped_fp32=bool(record.stats.get(SHIPPED_FP32, 0)),
        exits=exits,
        backend=backend_name,
    )
    _time_beside_original([(measured, runner)], baseline, validation, TIMING_ROUNDS)
    return measured


def retime_together(
    finalists: list[Measured], baseline: Baseline, validation: list[Batch] | None, threads: int
) -> None:
    """Time ``finalists`` and the original in one interleaved session and update their latencies: each
    was first timed in its own session, and a choice between two of them should not rest on two sessions'
    noise."""
    entries = [(m, BACKENDS[m.backend].runner(m.path, threads=threads)) for m in finalists]
    _time_beside_original(entries, baseline, validation, FINAL_ROUNDS)


def _time_beside_original(
    entries: list[tuple[Measured, Any]], baseline: Baseline, validation: list[Batch] | None, rounds: int
) -> None:
    """Set each entry's latency and the original's, from one interleaved session: fixed-input models on
    the example input in ``rounds`` rounds; exit models sample by sample over the same validation samples
    (:data:`EXIT_TIMING_PASSES` passes), the original in turn."""
    per_sample = validation is not None
    plain = {str(i): r for i, (m, r) in enumerate(entries) if not (m.exits and per_sample)}
    if plain:
        calls = {key: (lambda r=r: r.run(*baseline.inputs)) for key, r in plain.items()}
        calls["original"] = lambda: baseline.runner.run(*baseline.inputs)
        per_round = calls_for(calls["original"], round_ms=40)
        medians = interleaved_medians(calls, rounds=rounds, calls_per_round=per_round)
        for key in plain:
            measured = entries[int(key)][0]
            measured.latency_ms, measured.baseline_ms = medians[key], medians["original"]
    exits = {str(i): r.run for i, (m, r) in enumerate(entries) if m.exits and per_sample}
    if exits:
        assert validation is not None
        samples = _first_samples(validation, EXIT_TIMING_SAMPLES) * EXIT_TIMING_PASSES
        means = mean_latencies({**exits, "original": baseline.runner.run}, samples)
        for key in exits:
            measured = entries[int(key)][0]
            measured.latency_ms, measured.baseline_ms = means[key], means["original"]


def _percent(predict: Any, data: list[Batch] | None) -> float | None:
    return None if data is None else 100 * accuracy(predict, data)


def _first_samples(data: list[Batch], count: int) -> list[Batch]:
    out: list[Batch] = []
    left = count
    for inputs, labels in data:
        if left <= 0:
            break
        take = min(left, len(labels))
        sliced = tuple(x[:take] for x in inputs) if isinstance(inputs, (tuple, list)) else inputs[:take]
        out.append((sliced, labels[:take]))
        left -= take
    return out
