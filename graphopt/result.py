"""What ``optimize`` returns: the optimized model, its report, and export / save of artifacts."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from graphopt import serialize
from graphopt.backends import backend_for, export_onnx
from graphopt.backends.onnx_backend import OnnxRunner
from graphopt.cost import count_macs, count_params
from graphopt.errors import ExportError
from graphopt.evaluation import Batch, accuracy
from graphopt.numerics import Tolerance, agreement, allclose, flatten_outputs
from graphopt.quant import is_quantized
from graphopt.report import Report, StageRecord
from graphopt.targets import Target

#: How closely an fp32 artifact must reproduce the eager optimized model: |a - b| <= 1e-4 * max(1, max|b|).
ARTIFACT_RTOL = 1e-4
#: An int8 artifact runs integer kernels whose requantization rounds differently from the eager simulation
#: (outputs may differ by a quantization step), so it is held to agreement instead: cosine >= this.
INT8_ARTIFACT_COSINE = 0.999


@dataclass
class OptimizeResult:
    model: fx.GraphModule
    report: Report
    target: Target
    example_inputs: tuple[torch.Tensor, ...]
    reference_outputs: Any
    original: nn.Module = field(repr=False)
    eval_data: list[Batch] | None = field(default=None, repr=False)

    def export(
        self,
        path: str | Path,
        backend: str | None = None,
        *,
        measure_latency: bool = False,
        warmup: int = 10,
        repeat: int = 100,
    ) -> Path:
        """Lower the optimized model to ``path`` (backend by suffix, ``.onnx`` or ``.pt``, or ``backend=``).

        The artifact is loaded back and compared with the eager optimized model on the example inputs
        (within 1e-4 relative); an artifact row is added to the report, with accuracy on ``eval_data`` and,
        with ``measure_latency``, its latency next to the original's in ONNX Runtime fp32.
        """
        chosen = backend_for(path, backend)
        if chosen.name == "onnx":
            artifact = export_onnx(self.model, self.example_inputs, path, opset=self.target.backend.opset)
        else:
            artifact = chosen.export(self.model, self.example_inputs, path)
        runner = chosen.runner(artifact, threads=self.target.backend.threads)
        outputs = runner.run(*self.example_inputs)
        self._check_artifact(runner, chosen.name)
        record = StageRecord(
            stage=f"artifact:{chosen.name}",
            kind="artifact",
            params=count_params(self.model),
            macs=count_macs(self.model),
            bytes=artifact.stat().st_size,
            agreement=agreement(self.reference_outputs, outputs),
            notes=[f"{artifact.name} run in {chosen.runtime}"],
        )
        if self.eval_data is not None:
            record.accuracy = accuracy(getattr(runner, "run_batched", runner.run), self.eval_data)
        if measure_latency:
            self._measure_baseline(warmup, repeat)
            record.latency = runner.time(*self.example_inputs, warmup=warmup, repeat=repeat)
        self.report.add(record)
        return artifact

    def save(self, path: str | Path) -> Path:
        """Save the optimized torch model as a ``.pt2`` archive; load it with ``graphopt.load``."""
        return serialize.save(self.model, self.example_inputs, path, target=self.target.name)

    def _check_artifact(self, runner: Any, backend: str) -> None:
        """Compare the artifact with the eager model on the example inputs and on two probes of the same
        shape (the negated example and a random draw): an exporter that baked one branch of data-dependent
        control flow agrees on the example but not on inputs that take the other branch."""
        quantized = is_quantized(self.model)
        for inputs in _probe_inputs(self.example_inputs):
            with torch.no_grad():
                eager = self.model(*inputs)
            got = runner.run(*inputs)
            if quantized:
                ok, max_abs = (
                    agreement(eager, got).cosine >= INT8_ARTIFACT_COSINE,
                    agreement(eager, got).max_abs,
                )
            else:
                scale = max((float(t.abs().max()) for t in flatten_outputs(eager)), default=1.0)
                tolerance = Tolerance(rtol=ARTIFACT_RTOL, atol=ARTIFACT_RTOL * max(scale, 1.0))
                ok, max_abs = allclose(eager, got, tolerance)
            if not ok:
                raise ExportError(
                    f"the {backend} artifact disagrees with the optimized model (max abs error "
                    f"{max_abs:.3g}); the model probably has data-dependent control flow that the exporter "
                    "baked into one branch: express it with torch.where or torch.cond"
                )

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
                agreement=original.agreement,
                accuracy=original.accuracy,
                notes=["the reference for speed-ups: the unoptimized model exported to ONNX, fp32"],
            )
        )


def _probe_inputs(example: tuple[torch.Tensor, ...]) -> list[tuple[torch.Tensor, ...]]:
    generator = torch.Generator().manual_seed(0)
    if not all(x.is_floating_point() for x in example):
        return [example]
    negated = tuple(-x for x in example)
    drawn = tuple(
        torch.randn(x.shape, generator=generator, dtype=x.dtype) * x.std().clamp(min=1e-3) for x in example
    )
    return [example, negated, drawn]
