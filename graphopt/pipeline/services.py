"""Services a pass asks for what is not rewriting: timing models in the runtime a target ships to.

A pass never lowers or times a model itself (the pass layer imports no backend): ``probe_int8`` (is the
pruned graph faster as int8 than as fp32?) and runtime-costed early exits (what does each exit path cost?)
ask the run's :class:`TimingService` through ``PassContext.timing``. The driver hands the default,
:class:`RuntimeTiming` (lower with the target's backend, time side by side:
:mod:`graphopt.artifacts.side_by_side`); tests hand a fake one, and a cost model (an NPU compiler's estimate)
can stand in for it where no runtime can be timed.
"""

from __future__ import annotations

import platform
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import torch
from torch import nn

if TYPE_CHECKING:
    from graphopt.targets import Target


@dataclass(frozen=True)
class Timed:
    """Milliseconds per call of each model, by the caller's names, and the runtime that ran them."""

    runtime: str
    ms: dict[str, float]


class TimingService(Protocol):
    def unavailable(self, target: Target) -> str | None:
        """Why ``target``'s runtime cannot time models here (a sentence), or None when it can."""

    def time(
        self, target: Target, models: Mapping[str, nn.Module], example_inputs: tuple[torch.Tensor, ...]
    ) -> Timed:
        """Each of ``models`` lowered as ``target`` ships it and timed side by side, batch 1."""


class RuntimeTiming:
    """The default service: the target's own backend and runtime, on this machine's CPU."""

    def unavailable(self, target: Target) -> str | None:
        from graphopt.targets import isa_runs_here  # targets declare presets with the passes' options

        if isa_runs_here(target.isa):
            return None
        return f"{target.name} runs on {target.isa}, which cannot be timed on this {platform.machine()}"

    def time(
        self, target: Target, models: Mapping[str, nn.Module], example_inputs: tuple[torch.Tensor, ...]
    ) -> Timed:
        from graphopt.artifacts.side_by_side import time_side_by_side
        from graphopt.backends import BACKENDS

        backend = BACKENDS[target.backend.backend]
        return Timed(backend.runtime, time_side_by_side(backend, target.backend, models, example_inputs))
