"""What ``optimize`` returns: the optimized model, its report, and export / save of artifacts."""

from __future__ import annotations

import platform
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.fx as fx
from torch import nn

import graphopt.artifacts.serialize as serialize
from graphopt.artifacts.artifact_check import check_artifact
from graphopt.artifacts.destination import StagedFile, check_destination
from graphopt.artifacts.side_by_side import lower_with, time_side_by_side
from graphopt.backends import Backend, backend_for, export_onnx
from graphopt.backends.onnx_backend import OnnxRunner
from graphopt.data.batches import Batch
from graphopt.data.dims import DynamicDims
from graphopt.early_exit.guard import exit_float_twin
from graphopt.early_exit.measure import has_exits, mean_latencies, per_sample_accuracy
from graphopt.errors import ConfigError
from graphopt.ir.keys import SHIPPED_FP32, ZIPPED_BYTES
from graphopt.pipeline.plan import Plan
from graphopt.pruning.sparsity import zipped_bytes
from graphopt.quant import is_quantized
from graphopt.quant.groups import require_backend_for_groups
from graphopt.quant.storage import weight_storage_note
from graphopt.reporting.cost import count_macs, count_params
from graphopt.reporting.energy import estimate_graph
from graphopt.reporting.evaluation import accuracy
from graphopt.reporting.memory import PeakWatch, to_mib
from graphopt.reporting.notes import Note
from graphopt.reporting.numerics import agreement
from graphopt.reporting.report import Report, StageRecord
from graphopt.targets import Target, isa_runs_here

#: Note keys (graphopt.reporting.notes) of an artifact row's notes: what tests and tools read.
LATENCY_GUARD = "artifact:latency_guard"
LATENCY_GUARD_SKIPPED = "artifact:latency_guard_skipped"
WRITTEN = "artifact:written"
PER_SAMPLE_ACCURACY = "artifact:per_sample_accuracy"


@dataclass(frozen=True)
class LatencyGuard:
    """The int8 artifact timed against the fp32 model of the same pipeline, side by side."""

    int8_ms: float
    fp32_ms: float
    #: How the two were timed, when not on the example input (early exits: a mean over held-out samples).
    basis: str = ""

    @property
    def int8_wins(self) -> bool:
        return self.int8_ms < self.fp32_ms

    def sentence(self, runtime: str, samples: int = 0) -> Note:
        """The row's note (facts: ``shipped``, "int8" or "fp32"; ``int8_ms``, ``fp32_ms``, ``runtime``;
        ``per_sample`` and ``samples``, the held-out inputs an early-exit model was timed over, else 0)."""
        verdict = (
            "int8 shipped" if self.int8_wins else "int8 is not faster here, so the fp32 model was shipped"
        )
        text = (
            f"latency guard: int8 {self.int8_ms:.3f} ms vs fp32 {self.fp32_ms:.3f} ms in {runtime}"
            f"{self.basis}: {verdict}"
        )
        facts = {"int8_ms": self.int8_ms, "fp32_ms": self.fp32_ms, "runtime": runtime}
        shipped = "int8" if self.int8_wins else "fp32"
        return Note(LATENCY_GUARD, text, shipped=shipped, per_sample=samples > 0, samples=samples, **facts)

    def stats(self) -> dict[str, float]:
        return {"guard_int8_ms": round(self.int8_ms, 4), "guard_fp32_ms": round(self.fp32_ms, 4),
                SHIPPED_FP32: int(not self.int8_wins)}  # fmt: skip


@dataclass(frozen=True)
class ShippedModel:
    """The model an export ships, the latency guard's measurement when it ran, and a note for the row."""

    model: nn.Module
    guard: LatencyGuard | None = None
    note: str | None = None


@dataclass
class OptimizeResult:
    model: fx.GraphModule
    report: Report
    target: Target
    example_inputs: tuple[torch.Tensor, ...]
    reference_outputs: Any
    original: nn.Module = field(repr=False)
    eval_data: list[Batch] | None = field(default=None, repr=False)
    #: The graph just before quantization, for the latency guard (None when nothing was quantized).
    fp32_model: fx.GraphModule | None = field(default=None, repr=False)
    #: Input dimensions that vary besides the batch (``optimize(dynamic_shapes=...)``).
    dynamic: DynamicDims = field(default_factory=DynamicDims)
    #: What ran, slot by slot, and why each slot is there (``print(res.plan)``).
    plan: Plan | None = field(default=None, repr=False)
    #: A goal-driven call's every candidate and its choice (:class:`graphopt.search.engine.SearchResult`).
    search: Any = field(default=None, repr=False)
    #: Held-out batch-1 inputs the latency guard times an early-exit model on (its cost depends on them).
    guard_samples: list[tuple[torch.Tensor, ...]] = field(default_factory=list, repr=False)

    def export(
        self,
        path: str | Path,
        backend: str | None = None,
        *,
        measure_latency: bool = False,
        latency_guard: bool = True,
        warmup: int = 10,
        repeat: int = 100,
    ) -> Path:
        """Lower the optimized model to ``path`` (backend by suffix, ``.onnx`` or ``.pt``, or ``backend=``).

        The artifact is loaded back and compared with the eager optimized model on the example inputs
        (within 1e-4 relative for fp32, cosine 0.999 for int8); an artifact row is added to the report, with
        accuracy on ``eval_data`` and, with ``measure_latency``, its latency next to the original's in ONNX
        Runtime fp32. The latency guard (on unless ``latency_guard=False``) times an int8 artifact against the
        fp32 model of the same pipeline in the same runtime and ships fp32 when int8 is not faster.
        """
        destination, chosen = self._check_export(path, backend, warmup, repeat)
        memory = PeakWatch()  # the row's peak RSS: the whole export, guard and check included
        memory.open()
        try:
            record, artifact = self._export_checked(destination, chosen, latency_guard, measure_latency,
                                                    warmup, repeat)  # fmt: skip
        finally:  # a failed export stops the sampler too
            peak = memory.close()
        record.peak_rss_mib = to_mib(peak)
        self.report.add(record)
        return artifact

    def _export_checked(
        self, destination: Path, chosen: Backend, latency_guard: bool, latency: bool, warmup: int, repeat: int
    ) -> tuple[StageRecord, Path]:
        """:meth:`export` once its arguments are checked: the artifact written and its report row."""
        shipped = self.choose_artifact(chosen, latency_guard)
        with StagedFile(destination) as staged:  # nothing reaches the destination unless verified
            lowered = self._lower(chosen, shipped.model, staged.path)
            runner = chosen.runner(lowered, threads=self.target.backend.threads)
            outputs = runner.run(*self.example_inputs)
            mismatch = check_artifact(shipped.model, runner, chosen.name, self.example_inputs, self.dynamic,
                                      self.target.isa)  # fmt: skip
            artifact = staged.commit()
        runner.path = artifact
        record = self._artifact_record(chosen, shipped, artifact, outputs)
        record.notes += [n for n in (mismatch, shipped.note) if n is not None]
        self._measure_artifact(record, runner, shipped.model, latency, warmup, repeat)
        return record, artifact

    def choose_artifact(self, backend: Backend, latency_guard: bool = True) -> ShippedModel:
        """Which model ships: the int8 one unless the latency guard timed it slower than the fp32 model of
        the same plan in ``backend``'s runtime. An early-exit model is timed per sample over held-out inputs
        against its fp32 twin (the same exits, fp32 segments: :mod:`graphopt.early_exit.guard`). The
        guard is skipped (and says why) for another CPU family's artifacts, and for an exit model with no
        held-out inputs to time on."""
        if not (latency_guard and self.fp32_model is not None and is_quantized(self.model)):
            return ShippedModel(self.model)
        exits = has_exits(self.model)
        why, reason = None, ""
        if self._foreign_isa:
            reason = "foreign_isa"
            why = (
                f"latency guard skipped: {self.target.isa} artifacts cannot be timed on {platform.machine()}"
            )
        elif exits and not self.guard_samples:
            reason = "no_held_out_inputs"
            why = (
                "latency guard skipped: an early-exit model's cost depends on the input and no held-out "
                "inputs were given to time it on (validation_data or calibration_data)"
            )
        if why is not None:
            facts = {"reason": reason, "isa": self.target.isa, "machine": platform.machine()}
            return ShippedModel(self.model, note=Note(LATENCY_GUARD_SKIPPED, f"{why}; int8 shipped", **facts))
        fp32 = exit_float_twin(self.model) if exits else self.fp32_model
        guard = self._latency_guard(backend, fp32, per_sample=exits)
        model = self.model if guard.int8_wins else fp32
        samples = len(self.guard_samples) if exits else 0
        return ShippedModel(model, guard, guard.sentence(backend.runtime, samples))

    def _artifact_record(
        self, backend: Backend, shipped: ShippedModel, artifact: Path, outputs: Any
    ) -> StageRecord:
        model, guard = shipped.model, shipped.guard
        fallback = guard is not None and not guard.int8_wins
        params = count_params(model)
        record = StageRecord(
            stage=f"artifact:{backend.name}" + (" (fp32 fallback)" if fallback else ""),
            kind="artifact",
            params=params,
            macs=count_macs(model),
            bytes=artifact.stat().st_size,
            energy=estimate_graph(model, params, "int8" if is_quantized(model) else "fp32"),
            agreement=agreement(self.reference_outputs, outputs),
            notes=[_written_note(artifact, backend)],
            backend=backend.name,
        )
        record.stats[ZIPPED_BYTES] = zipped_bytes(artifact)  # what zeros (sparsity) save in storage
        storage = weight_storage_note(model, backend.name, artifact, backend.packed_weights)
        if storage is not None:
            record.notes.append(storage)
        layers = backend.layer_note(model)
        if layers is not None:
            record.notes.append(layers)
        if guard is not None:
            record.stats.update(guard.stats())
        return record

    def _measure_artifact(
        self, record: StageRecord, runner: Any, model: nn.Module, latency: bool, warmup: int, repeat: int
    ) -> None:
        """Accuracy on ``eval_data`` and, when asked, latency next to the original's in ORT fp32."""
        exits = has_exits(model)
        if self.eval_data is not None:
            predict = getattr(runner, "run_batched", runner.run)
            record.accuracy = (per_sample_accuracy if exits else accuracy)(predict, self.eval_data)
        if not latency:
            return
        self._measure_baseline(warmup, repeat)
        record.latency = runner.time(*self.example_inputs, warmup=warmup, repeat=repeat)
        if exits and self.eval_data is not None:
            record.stats.update(self._dataset_latency(runner))
            record.notes.append(Note(
                PER_SAMPLE_ACCURACY,
                "early exit: accuracy and dataset_mean_ms are per sample (batch 1) over eval_data; "
                "the latency column is the example input's path only",
            ))  # fmt: skip

    def _check_export(
        self, path: object, backend: str | None, warmup: int, repeat: int
    ) -> tuple[Path, Backend]:
        """Everything about the call that can be wrong, checked before any lowering or timing."""
        destination = check_destination(path, "export path")
        chosen = backend_for(destination, backend, preferred=self.target.backend.backend)
        if destination.suffix != chosen.suffix:
            raise ConfigError(
                f"export path {destination.name} does not end in {chosen.suffix}, the suffix of backend "
                f"{chosen.name!r}: name it {destination.with_suffix(chosen.suffix).name}, or drop backend="
            )
        for name, value, low in (("warmup", warmup, 0), ("repeat", repeat, 1)):
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ConfigError(f"{name} must be an integer >= {low}, got {value!r}")
        chosen.check(self.model)
        require_backend_for_groups(self.model, chosen.name)
        return destination, chosen

    def _lower(self, backend: Backend, model: nn.Module, path: Path) -> Path:
        return lower_with(backend, self.target.backend, model, self.example_inputs, path, self.dynamic)

    def _latency_guard(self, backend: Backend, fp32: nn.Module, *, per_sample: bool) -> LatencyGuard:
        """Time the int8 and the fp32 artifact side by side (:mod:`graphopt.artifacts.side_by_side`): on the
        example input, or (``per_sample``) the mean over :attr:`guard_samples`."""
        samples = self.guard_samples if per_sample else ()
        ms = time_side_by_side(backend, self.target.backend, {"int8": self.model, "fp32": fp32},
                               self.example_inputs, dynamic=self.dynamic, samples=samples)  # fmt: skip
        basis = f" (mean per sample over {len(samples)} held-out inputs)" if samples else ""
        return LatencyGuard(int8_ms=ms["int8"], fp32_ms=ms["fp32"], basis=basis)

    def save(self, path: str | Path) -> Path:
        """Save the optimized torch model as a ``.pt2`` archive; load it with ``graphopt.load``."""
        return serialize.save(self.model, self.example_inputs, path, target=self.target.name)

    @property
    def _foreign_isa(self) -> bool:
        """Whether the target is for another CPU family than this machine's."""
        return not isa_runs_here(self.target.isa)

    def _dataset_latency(self, runner: Any) -> dict[str, float]:
        """Mean latency per eval sample of the artifact and of the original in ORT fp32, interleaved."""
        assert self.eval_data is not None
        with tempfile.TemporaryDirectory() as tmp:
            path = export_onnx(self.original, self.example_inputs, Path(tmp) / "original.onnx")
            baseline = OnnxRunner(path, threads=self.target.backend.threads)
            means = mean_latencies({"exits": runner.run, "original": baseline.run}, self.eval_data)
        return {
            "dataset_mean_ms": round(means["exits"], 4),
            "dataset_mean_ms_original_ort_fp32": round(means["original"], 4),
            "dataset_latency_ratio": round(means["exits"] / means["original"], 3),
        }

    def _measure_baseline(self, warmup: int, repeat: int) -> None:
        if any(r.kind == "baseline" for r in self.report.stages):
            return
        with tempfile.TemporaryDirectory() as tmp:
            path = export_onnx(self.original, self.example_inputs, Path(tmp) / "original.onnx")
            runner = OnnxRunner(path, threads=self.target.backend.threads)
            latency = runner.time(*self.example_inputs, warmup=warmup, repeat=repeat)
            size = path.stat().st_size
        original = self.report.stages[0]
        self.report.add(
            StageRecord(
                stage="original in ORT fp32",
                kind="baseline",
                params=original.params,
                macs=original.macs,
                bytes=size,
                latency=latency,
                energy=original.energy,
                agreement=original.agreement,
                accuracy=original.accuracy,
                notes=["the reference for speed-ups: the unoptimized model exported to ONNX, fp32"],
            )
        )


def _written_note(artifact: Path, backend: Backend) -> Note:
    """Which file, written by what, runs where (facts: ``file``, ``writer``, ``runtime``)."""
    writer = backend.describe(artifact)
    text = f"{artifact.name} written by {writer}, run in {backend.runtime}"
    return Note(WRITTEN, text, file=artifact.name, writer=writer, runtime=backend.runtime)
