"""The speed-up baseline of a backend costed by a cost model instead of a clock (Ethos-U NPUs: Vela's
estimate): the unpruned original as the target ships it to that backend, int8 and compiled the same way.

    speed-up = estimate(unpruned original, int8, compiled) / estimate(candidate, int8, compiled)

Why not the original in ONNX Runtime fp32, the baseline of timed backends: no NPU runs fp32, and a ratio of
an NPU's estimate to an x86 measurement would mix two machines. The baseline is post-training int8: the
target's own pipeline (clean-up, fake quant, calibration on the call's ``calibration_data``), no pruning, no
QAT, no exits. Training changes weights, not the graph the cost model prices (Vela's weight compression
reads the values, so a trained twin may differ by a few cycles).

The baseline's ACCURACY is not this model's: drops stay against the fp32 original (``Baseline.accuracy``,
run in ONNX Runtime), since the goal is the accuracy of the model the caller had, and what int8 costs
counts against the candidate like any other loss.

A baseline whose estimate is not finite (an operator the cost model leaves on the CPU, which Vela prices at
0 cycles and :meth:`~graphopt.backends.ethos_u_backend.EthosURunner.estimated_ms` therefore at ``inf``)
is an :class:`ExportError` naming it: no speed-up against it would mean anything.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import torch

from graphopt.artifacts.side_by_side import lower_with
from graphopt.backends import BACKENDS
from graphopt.errors import ExportError, GraphoptError
from graphopt.pipeline.driver import OptimizeCall, run_call
from graphopt.targets import Target


def costs_by_estimate(backend_name: str) -> bool:
    """Whether ``backend_name``'s runner answers with a cost model's estimate (``estimated_ms``) instead of
    being timed: its candidates are costed, not timed, against :class:`EstimatedBaseline`."""
    return hasattr(BACKENDS[backend_name].runner, "estimated_ms")


class EstimatedBaseline:
    """The unpruned original, post-training int8 for ``spec``, costed per cost-model backend (module
    docstring). Built on first use and kept, a failure too: a search without a cost-model candidate never
    pays for it, and one whose baseline cannot be built says why on every such row."""

    def __init__(self, call: OptimizeCall, spec: Target, inputs: tuple[torch.Tensor, ...], folder: Path):
        self.call = baseline_call(call, spec)
        self.spec, self.inputs, self.folder = spec, inputs, folder
        self._ms: dict[str, float | GraphoptError] = {}

    def ms(self, backend_name: str) -> float:
        """The estimated milliseconds per inference of the baseline lowered by ``backend_name``."""
        if backend_name not in self._ms:
            try:
                self._ms[backend_name] = self._estimate(backend_name)
            except GraphoptError as exc:
                self._ms[backend_name] = exc
        known = self._ms[backend_name]
        if isinstance(known, GraphoptError):
            raise known
        return known

    def _estimate(self, backend_name: str) -> float:
        backend = BACKENDS[backend_name]
        what = (
            f"the search's speed-up baseline on {backend_name} (the unpruned original, int8 for "
            f"{self.spec.name})"
        )
        try:
            model = run_call(self.call).model
            path = self.folder / f"baseline-int8-{backend_name}{backend.suffix}"
            lowered = lower_with(backend, self.spec.backend, model, self.inputs, path)
            runner = backend.runner(lowered, threads=self.spec.backend.threads)
        except GraphoptError as exc:
            raise ExportError(f"{what} could not be built: {exc}") from exc
        return finite_estimate(
            runner, what,
            "the estimate leaves out the CPU's work, so no speed-up against it means anything; search a "
            "target whose NPU runs every operator of the original, or time a CPU backend instead "
            "(SearchConfig(backends=('litert',)))",
        )  # fmt: skip


def finite_estimate(runner: Any, what: str, consequence: str) -> float:
    """``runner.estimated_ms()``; an :class:`ExportError` naming ``what`` and the operators the cost model
    left on the CPU (Vela gives them 0 cycles: the estimate is then ``inf``), then ``consequence``."""
    ms = runner.estimated_ms()
    if math.isfinite(ms):
        return ms
    found = getattr(runner, "estimate", None)
    detail = found.summary() if found is not None else f"estimate {ms}"
    raise ExportError(f"{what} does not run entirely on the NPU ({detail}): {consequence}")


def baseline_call(call: OptimizeCall, spec: Target) -> OptimizeCall:
    """``call`` as the unpruned, post-training int8 run of ``spec``'s own pipeline (module docstring): no
    pruning, training, exits, fall-backs or sparsity; no evaluation (its accuracy is not what drops are
    against)."""
    return dataclasses.replace(
        call, target=spec, passes=None, prune=0.0, early_exit=None, train_data=None, recovery=None,
        accuracy_budget=None, sparsify=0.0, eval_data=None, validation_data=None,
    )  # fmt: skip
