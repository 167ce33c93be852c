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

from graphopt import serialize
from graphopt.backends import Backend, backend_for, export_onnx
from graphopt.backends.dynamic import DynamicDims
from graphopt.backends.onnx_backend import OnnxRunner, check_onnx_dtypes, exporter_of
from graphopt.backends.timing import calls_for, interleaved_medians
from graphopt.cost import count_macs, count_params
from graphopt.destination import StagedFile, check_destination
from graphopt.early_exit.measure import has_exits, mean_latencies, per_sample_accuracy
from graphopt.energy import estimate_graph
from graphopt.errors import ConfigError, ExportError
from graphopt.evaluation import Batch, accuracy
from graphopt.numerics import Tolerance, agreement, all_finite, allclose
from graphopt.quant import is_quantized
from graphopt.report import Report, StageRecord
from graphopt.sparsity import zipped_bytes
from graphopt.targets import Target

#: How closely an fp32 artifact must reproduce the eager optimized model: |a - b| <= 1e-4 * max(1, max|b|).
ARTIFACT_RTOL = 1e-4
#: An int8 artifact runs integer kernels whose requantization rounds differently from the eager simulation
#: (outputs may differ by a quantization step), so it is held to agreement instead. Below the first cosine
#: the report says so (deep depthwise stacks with small outputs get there: MobileNetV2 pruned to half its
#: channels reached 0.9975); below the second the artifact computes something else and export fails.
INT8_ARTIFACT_COSINE = 0.999
INT8_ARTIFACT_COSINE_FLOOR = 0.99


@dataclass(frozen=True)
class LatencyGuard:
    """The int8 artifact timed against the fp32 model of the same pipeline, side by side."""

    int8_ms: float
    fp32_ms: float

    @property
    def int8_wins(self) -> bool:
        return self.int8_ms < self.fp32_ms

    def sentence(self, runtime: str) -> str:
        verdict = (
            "int8 shipped" if self.int8_wins else "int8 is not faster here, so the fp32 model was shipped"
        )
        return (
            f"latency guard: int8 {self.int8_ms:.3f} ms vs fp32 {self.fp32_ms:.3f} ms in {runtime}: {verdict}"
        )

    def stats(self) -> dict[str, float]:
        return {"guard_int8_ms": round(self.int8_ms, 4), "guard_fp32_ms": round(self.fp32_ms, 4),
                "shipped_fp32": int(not self.int8_wins)}  # fmt: skip


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
        model, guard, skipped = self.model, None, None
        if latency_guard and self.fp32_model is not None and is_quantized(self.model):
            if has_exits(self.model):
                skipped = (
                    "latency guard skipped: an early-exit model's cost depends on the input and the fp32 "
                    "snapshot has no exits; compare dataset_mean_ms (measure_latency=True with eval_data)"
                )
            elif self._foreign_isa:
                skipped = (
                    f"latency guard skipped: {self.target.isa} artifacts cannot be timed on "
                    f"{platform.machine()}; int8 shipped"
                )
            else:
                guard = self._latency_guard(chosen)
                model = self.model if guard.int8_wins else self.fp32_model
        with StagedFile(destination) as staged:  # nothing reaches the destination unless verified
            lowered = self._lower(chosen, model, staged.path)
            runner = chosen.runner(lowered, threads=self.target.backend.threads)
            outputs = runner.run(*self.example_inputs)
            mismatch = self._check_artifact(model, runner, chosen.name)
            artifact = staged.commit()
        runner.path = artifact
        record = StageRecord(
            stage=f"artifact:{chosen.name}"
            + ("" if guard is None or guard.int8_wins else " (fp32 fallback)"),
            kind="artifact",
            params=count_params(model),
            macs=count_macs(model),
            bytes=artifact.stat().st_size,
            energy=estimate_graph(model, count_params(model), "int8" if is_quantized(model) else "fp32"),
            agreement=agreement(self.reference_outputs, outputs),
            notes=[f"{artifact.name} written by {exporter_of(artifact)}, run in {chosen.runtime}"],
        )
        record.stats["zipped_bytes"] = zipped_bytes(artifact)  # what zeros (sparsity) save in storage
        if mismatch is not None:
            record.notes.append(mismatch)
        if skipped is not None:
            record.notes.append(skipped)
        if guard is not None:
            record.notes.append(guard.sentence(chosen.runtime))
            record.stats.update(guard.stats())
        exits = has_exits(model)
        if self.eval_data is not None:
            predict = getattr(runner, "run_batched", runner.run)
            record.accuracy = (per_sample_accuracy if exits else accuracy)(predict, self.eval_data)
        if measure_latency:
            self._measure_baseline(warmup, repeat)
            record.latency = runner.time(*self.example_inputs, warmup=warmup, repeat=repeat)
            if exits and self.eval_data is not None:
                record.stats.update(self._dataset_latency(runner))
                record.notes.append(
                    "early exit: accuracy and dataset_mean_ms are per sample (batch 1) over eval_data; "
                    "the latency column is the example input's path only"
                )
        self.report.add(record)
        return artifact

    def _check_export(
        self, path: object, backend: str | None, warmup: int, repeat: int
    ) -> tuple[Path, Backend]:
        """Everything about the call that can be wrong, checked before any lowering or timing."""
        destination = check_destination(path, "export path")
        chosen = backend_for(destination, backend)
        if destination.suffix != chosen.suffix:
            raise ConfigError(
                f"export path {destination.name} does not end in {chosen.suffix}, the suffix of backend "
                f"{chosen.name!r}: name it {destination.with_suffix(chosen.suffix).name}, or drop backend="
            )
        for name, value, low in (("warmup", warmup, 0), ("repeat", repeat, 1)):
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ConfigError(f"{name} must be an integer >= {low}, got {value!r}")
        if chosen.name == "onnx":
            check_onnx_dtypes(self.model)
        return destination, chosen

    def _lower(self, backend: Backend, model: nn.Module, path: Path) -> Path:
        settings = self.target.backend
        if backend.name == "onnx":
            return export_onnx(model, self.example_inputs, path, opset=settings.opset, dynamic=self.dynamic)
        return backend.export(model, self.example_inputs, path, engine=settings.torch_engine)

    def _latency_guard(self, backend: Backend) -> LatencyGuard:
        """Time the int8 and the fp32 artifact side by side (batch 1, the target's threads)."""
        assert self.fp32_model is not None
        with tempfile.TemporaryDirectory() as tmp:
            runners = {
                kind: backend.runner(
                    self._lower(backend, model, Path(tmp) / f"{kind}{backend.suffix}"),
                    threads=self.target.backend.threads,
                )
                for kind, model in (("int8", self.model), ("fp32", self.fp32_model))
            }
            calls = {kind: (lambda r=r: r.run(*self.example_inputs)) for kind, r in runners.items()}
            per_round = calls_for(calls["fp32"], round_ms=50)
            medians = interleaved_medians(calls, rounds=5, calls_per_round=per_round)
        return LatencyGuard(int8_ms=medians["int8"], fp32_ms=medians["fp32"])

    def save(self, path: str | Path) -> Path:
        """Save the optimized torch model as a ``.pt2`` archive; load it with ``graphopt.load``."""
        return serialize.save(self.model, self.example_inputs, path, target=self.target.name)

    @property
    def _foreign_isa(self) -> bool:
        """Whether the target is for another CPU family than this machine's."""
        return self.target.isa not in ("any", platform.machine())

    def _check_artifact(self, model: nn.Module, runner: Any, backend: str) -> str | None:
        """Compare the artifact with the eager model on the example inputs and on two probes of the same
        shape (the negated example and a random draw): an exporter that baked one branch of data-dependent
        control flow agrees on the example but not on inputs that take the other branch.

        An int8 artifact for another CPU family (arm-int8 checked on x86) runs here through kernels that
        the target does not use (x86 s8 x s8 saturates in int16), so a mismatch is reported, not raised; so
        is a native int8 artifact between the two cosine thresholds above."""
        quantized, foreign = is_quantized(model), self._foreign_isa
        note = None
        for inputs in _probe_inputs(self.example_inputs, self.dynamic):
            with torch.no_grad():
                eager = model(*inputs)
            if inputs is not self.example_inputs and not all_finite(eager):
                continue  # a probe outside the model's domain (sqrt of a negated input) proves nothing
            got = runner.run(*inputs)
            if quantized:
                match = agreement(eager, got)
                ok, max_abs = match.cosine >= INT8_ARTIFACT_COSINE_FLOOR, match.max_abs
                if ok and match.cosine < INT8_ARTIFACT_COSINE and not foreign:
                    note = (
                        f"the int8 artifact agrees with the eager int8 simulation at cosine "
                        f"{match.cosine:.4f} (max abs {max_abs:.3g}): the runtime's integer kernels round "
                        "requantization differently; the artifact row's numbers are measured on the artifact"
                    )
            else:
                tolerance = _artifact_tolerance(model).relative_to(eager)
                ok, max_abs = allclose(eager, got, tolerance)
            if not ok and quantized and foreign:
                return (
                    f"this {self.target.isa} int8 artifact run on {platform.machine()} differs from the "
                    f"model (max abs {max_abs:.3g}); check it on the {self.target.isa} runtime: "
                    f"graphopt verify <file> --arch {self.target.isa}"
                )
            if not ok:
                raise ExportError(
                    f"the {backend} artifact disagrees with the optimized model (max abs error "
                    f"{max_abs:.3g}); the model probably has data-dependent control flow that the exporter "
                    "baked into one branch: express it with torch.where or torch.cond"
                )
        return note

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


def _artifact_tolerance(model: nn.Module) -> Tolerance:
    """``ARTIFACT_RTOL`` for float32 models; for float16 ones, 4 steps of float16's precision (2^-10):
    the runtime's fp16 kernels round in other places than PyTorch's (ResNet logits moved 2.4e-4)."""
    dtypes = {p.dtype for p in model.parameters() if p.is_floating_point()}
    step = max((torch.finfo(d).eps for d in dtypes), default=0.0)
    rtol = max(ARTIFACT_RTOL, 4 * step)
    return Tolerance(rtol=rtol, atol=rtol)


def _probe_inputs(example: tuple[torch.Tensor, ...], dynamic: DynamicDims) -> list[tuple[torch.Tensor, ...]]:
    """The example, then (float inputs) its negation and a random draw, then the example at half and twice
    each dynamic dimension's size: a file that fixed a dimension fails there."""
    resized = [_resized(example, dynamic, factor) for factor in (0.5, 2.0) if dynamic.named()]
    generator = torch.Generator().manual_seed(0)
    if not all(x.is_floating_point() for x in example):
        return [example, *resized]
    negated = tuple(-x for x in example)
    drawn = tuple(
        torch.randn(x.shape, generator=generator, dtype=x.dtype) * x.std().clamp(min=1e-3) for x in example
    )
    return [example, negated, drawn, *resized]


def _resized(
    example: tuple[torch.Tensor, ...], dynamic: DynamicDims, factor: float
) -> tuple[torch.Tensor, ...]:
    """``example`` with every named dimension scaled by ``factor`` (tiled or cut along that axis)."""
    out = []
    for x, dims in zip(example, dynamic.dims, strict=True):
        for axis in dims:
            size = max(1, round(x.shape[axis] * factor))
            repeats = [1] * x.dim()
            repeats[axis] = -(-size // x.shape[axis])
            x = x.repeat(*repeats).narrow(axis, 0, size)
        out.append(x)
    return tuple(out)
