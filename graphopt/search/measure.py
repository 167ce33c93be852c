"""Measuring one candidate the way it will ship: exported, loaded back in its runtime, timed side by side
with the original in ONNX Runtime fp32, scored on validation data (and on test data, only reported).

Latency is a ratio from one timing session: the candidate and the original alternate in rounds
(:func:`~graphopt.backends.timing.interleaved_medians`), so a slow patch of the machine hits both. An
early-exit candidate's cost depends on the input: it is the mean per sample over (up to
:data:`EXIT_TIMING_SAMPLES` of) the validation samples, the original timed on the same samples in turn.

Fidelity: each candidate's outputs on the validation inputs are compared with the original's (ORT fp32),
sample by sample, each output flattened to one vector; ``cosine`` is the mean of those cosines. It needs
no labels, so a model without classes (a sentence encoder) is searched on it (``Goals(min_cosine=...)``).

A backend costed by a cost model instead (its runner has ``estimated_ms``: Ethos-U NPUs, Vela's estimate)
is not timed: a candidate's latency is its ESTIMATE, and its speed-up is against the estimate of the
unpruned original int8 and compiled the same way (:mod:`graphopt.search.estimated_baseline`; no NPU runs
fp32). Its rows say so (:attr:`Measured.latency_basis`). Accuracy drops stay against the fp32 original.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from graphopt.artifacts.result import OptimizeResult
from graphopt.backends import BACKENDS, OnnxRunner, export_onnx
from graphopt.backends.timing import calls_for, interleaved_medians
from graphopt.data.batches import Batch, as_input_tuple
from graphopt.data.dims import DynamicDims
from graphopt.data.labelled import labelled_batches
from graphopt.early_exit.measure import has_exits, mean_latencies, per_sample_accuracy
from graphopt.errors import ExportError
from graphopt.ir.keys import SHIPPED_FP32
from graphopt.reporting.evaluation import accuracy
from graphopt.reporting.numerics import first_output, row_cosines
from graphopt.search.estimated_baseline import EstimatedBaseline, costs_by_estimate, finite_estimate

EXIT_TIMING_SAMPLES = 500
EXIT_TIMING_PASSES = 3  # each sample timed this many times (a single pass over a few hundred is noisy)
TIMING_ROUNDS = 10
#: Finalists are timed together in one session with more rounds (their ratios are what decides).
FINAL_ROUNDS = 25


@dataclass
class Baseline:
    """The original model in ONNX Runtime fp32: the reference every drop is against, and every speed-up of a
    timed backend. ``estimated``: the reference of speed-ups on a cost-model backend (the unpruned original
    int8, compiled as the target ships it; module docstring), built on first use; None where the search has
    no such backend."""

    runner: OnnxRunner
    inputs: tuple[torch.Tensor, ...]
    accuracy: float | None  # on validation data, percent
    test_accuracy: float | None
    estimated: EstimatedBaseline | None = None
    #: The original's outputs on each validation batch, one flattened row per sample (module docstring).
    outputs: list[np.ndarray] | None = None

    @classmethod
    def of(
        cls,
        original: nn.Module,
        inputs: tuple[torch.Tensor, ...],
        threads: int,
        folder: Path,
        validation: list[Batch] | None,
        test: list[Batch] | None,
        estimated: EstimatedBaseline | None = None,
        *,
        fidelity: bool = False,
        dynamic: DynamicDims | None = None,
    ) -> Baseline:
        """``fidelity``: keep the original's outputs on ``validation``, so that candidates are scored by
        their cosine to them (a cosine goal, or validation data without labels). ``dynamic``: the dims the
        original's file takes at any size (validation batches may differ from the example along them)."""
        path = export_onnx(original, inputs, folder / "original.onnx", dynamic=dynamic)
        runner = OnnxRunner(path, threads=threads)
        outputs = output_rows(runner.run, validation) if fidelity and validation is not None else None
        return cls(
            runner, inputs, _percent(runner.run, validation), _percent(runner.run, test), estimated, outputs
        )

    def estimated_ms(self, backend_name: str) -> float:
        """The cost-model baseline's estimate on ``backend_name`` (an ExportError where it has none)."""
        if self.estimated is None:
            raise ExportError(
                f"{backend_name} costs by an estimate and this search built no baseline for it: pass the "
                "backend in SearchConfig(backends=...) or search its target"
            )
        return self.estimated.ms(backend_name)

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
    #: Mean cosine of its outputs to the original's on the validation inputs (None: no validation data,
    #: or an exit model, whose outputs per sample come from different exits).
    cosine: float | None = None

    @property
    def speedup(self) -> float:
        return self.baseline_ms / self.latency_ms

    @property
    def estimated(self) -> bool:
        """Whether the latency is a cost model's ESTIMATE (module docstring), not a measurement."""
        return costs_by_estimate(self.backend)

    @property
    def latency_basis(self) -> str:
        """What the latency and the speed-up are, for a row."""
        if self.estimated:
            return f"ESTIMATE ({BACKENDS[self.backend].runtime}), vs {self.baseline_name}"
        return f"measured, vs {self.baseline_name}"

    @property
    def baseline_name(self) -> str:
        """What the speed-up is over."""
        if self.estimated:
            return "the unpruned original int8, compiled the same way"
        return "the original in ORT fp32"


@dataclass(frozen=True)
class ArtifactFacts:
    """What a row needs from a candidate's result besides its file: read where the result is (a worker
    builds a candidate and sends back its file and these; :mod:`graphopt.search.cluster`)."""

    params: int
    macs: int
    shipped_fp32: bool
    exits: bool


def export_candidate(
    result: OptimizeResult, backend_name: str, path: Path, *, latency_guard: bool = False
) -> tuple[Path, ArtifactFacts]:
    """Export ``result`` to ``path`` (the backend's suffix) and read its facts. The search exports without
    the latency guard: it weighs the int8 candidate against the fp32 one itself (both are rows), and a size
    goal may need the int8 file even where it is not the faster; a preset pipeline measured for comparison
    keeps it (``latency_guard=True``), as ``export`` does."""
    suffix = BACKENDS[backend_name].suffix
    artifact = result.export(path.with_suffix(suffix), backend=backend_name, latency_guard=latency_guard)
    record = result.report.stages[-1]
    exits = has_exits(result.model)
    facts = ArtifactFacts(
        params=record.params,
        # an exit model's MACs depend on the input: the expected MACs per sample its exit stage measured
        macs=result.report.stage("insert_early_exit").macs if exits else record.macs,
        shipped_fp32=bool(record.stats.get(SHIPPED_FP32, 0)),
        exits=exits,
    )
    return artifact, facts


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
    """Export ``result`` to ``path`` (:func:`export_candidate`), then time and score the file."""
    artifact, facts = export_candidate(result, backend_name, path, latency_guard=latency_guard)
    threads = result.target.backend.threads
    return measure_artifact(artifact, facts, backend_name, baseline, validation, test, threads)


def measure_artifact(
    artifact: Path,
    facts: ArtifactFacts,
    backend_name: str,
    baseline: Baseline,
    validation: list[Batch] | None,
    test: list[Batch] | None,
    threads: int,
) -> Measured:
    """Score the file at ``artifact`` in its runtime on validation and test data, and time it beside the
    original (or cost it by its backend's estimate)."""
    runner = BACKENDS[backend_name].runner(artifact, threads=threads)
    score = per_sample_accuracy if facts.exits else accuracy
    predict = getattr(runner, "run_batched", runner.run)
    test_accuracy = None if test is None else 100 * score(predict, test)
    valid_accuracy = None if not labelled_batches(validation) else 100 * score(predict, validation)
    cosine = None
    if validation is not None and baseline.outputs is not None and not facts.exits:
        cosine = mean_cosine(output_rows(predict, validation), baseline.outputs)
    measured = Measured(
        path=artifact,
        latency_ms=float("nan"),  # timed just below, beside the original
        baseline_ms=float("nan"),
        bytes=artifact.stat().st_size,
        params=facts.params,
        macs=facts.macs,
        accuracy=valid_accuracy,
        test_accuracy=test_accuracy,
        shipped_fp32=facts.shipped_fp32,
        exits=facts.exits,
        backend=backend_name,
        cosine=cosine,
    )
    _time_beside_original([(measured, runner)], baseline, validation, TIMING_ROUNDS)
    return measured


def retime_together(
    finalists: list[Measured], baseline: Baseline, validation: list[Batch] | None, threads: int
) -> None:
    """Time ``finalists`` and the original in one interleaved session and update their latencies: each
    was first timed in its own session, and a choice between two of them should not rest on two sessions'
    noise. Estimated finalists keep their estimates: a cost model has no noise to even out."""
    timed = [m for m in finalists if not m.estimated]
    if not timed:
        return
    entries = [(m, BACKENDS[m.backend].runner(m.path, threads=threads)) for m in timed]
    _time_beside_original(entries, baseline, validation, FINAL_ROUNDS)


def _time_beside_original(
    entries: list[tuple[Measured, Any]], baseline: Baseline, validation: list[Batch] | None, rounds: int
) -> None:
    """Set each entry's latency and the original's, from one interleaved session: fixed-input models on
    the example input in ``rounds`` rounds; exit models sample by sample over the same validation samples
    (:data:`EXIT_TIMING_PASSES` passes), the original in turn. Entries on a cost-model backend are costed
    instead (:func:`_cost_by_estimate`) and take no part in the session."""
    entries = [(m, r) for m, r in entries if not _cost_by_estimate(m, r, baseline)]
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


def _cost_by_estimate(measured: Measured, runner: Any, baseline: Baseline) -> bool:
    """Set ``measured``'s latency to its runner's estimate and the baseline's to the cost-model baseline's,
    when its backend costs by an estimate; whether it did. A candidate the cost model cannot price in full
    (an operator left on the CPU: ``inf``) is an :class:`ExportError` naming what: a speed-up that leaves
    out the CPU's work would be no speed-up."""
    if not measured.estimated:
        return False
    ms = finite_estimate(
        runner, measured.path.name, "its estimate leaves out the CPU's work, so it has no comparable latency"
    )
    measured.latency_ms, measured.baseline_ms = ms, baseline.estimated_ms(measured.backend)
    return True


def _percent(predict: Any, data: list[Batch] | None) -> float | None:
    return None if not labelled_batches(data) else 100 * accuracy(predict, data)


def output_rows(predict: Any, data: list[Batch]) -> list[np.ndarray]:
    """``predict``'s first output on each batch of ``data``, one flattened float64 row per sample."""
    rows = []
    with torch.no_grad():
        for inputs, _ in data:
            out = first_output(predict(*as_input_tuple(inputs)))
            out = np.asarray(out.detach() if isinstance(out, torch.Tensor) else out, dtype=np.float64)
            rows.append(out.reshape(len(out), -1))
    return rows


def mean_cosine(outputs: list[np.ndarray], reference: list[np.ndarray]) -> float:
    """The mean over samples of ``cos(output, reference)`` (``reporting.numerics.row_cosines``)."""
    return float(row_cosines(np.concatenate(outputs), np.concatenate(reference)).mean())


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
