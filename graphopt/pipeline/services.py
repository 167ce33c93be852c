"""Services a pass asks for what is not rewriting: timing models in the runtime a target ships to, and
training (recovery, QAT, exit heads).

A pass never lowers or times a model itself (the pass layer imports no backend): ``probe_int8`` (is the
pruned graph faster as int8 than as fp32?) and runtime-costed early exits (what does each exit path cost?)
ask the run's :class:`TimingService` through ``PassContext.timing``. The driver hands the default,
:class:`RuntimeTiming` (lower with the target's backend, time side by side:
:mod:`graphopt.artifacts.side_by_side`); tests hand a fake one, and a cost model (an NPU compiler's estimate)
can stand in for it where no runtime can be timed.

Passes that train (``recover``, ``qat``, ``sparsify``, ``insert_early_exit``) ask the run's
:class:`TrainingService` through ``PassContext.training`` instead of calling the engines: the default,
:class:`InProcessTraining`, runs :mod:`graphopt.recovery.engine` and :mod:`graphopt.early_exit.training` in
this process; a distributed executor or a test hands its own (``OptimizeCall(training=...)``).
"""

from __future__ import annotations

import platform
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import torch
from torch import nn

if TYPE_CHECKING:
    from graphopt.data.labelled import LabelledTensors
    from graphopt.early_exit.config import EarlyExitConfig
    from graphopt.early_exit.network import EarlyExitNetwork
    from graphopt.recovery.config import RecoveryConfig
    from graphopt.recovery.engine import RecoveryResult
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


class TrainingService(Protocol):
    """Where passes train: the data is the run's, already read and checked (:mod:`graphopt.data`)."""

    def fit(
        self,
        student: nn.Module,
        teacher: nn.Module | None,
        train: LabelledTensors,
        config: RecoveryConfig,
        *,
        validation: LabelledTensors | None = None,
        desc: str = "recover",
    ) -> RecoveryResult:
        """Fine-tune ``student`` in place against the frozen ``teacher`` (recovery, QAT, sparsity)."""

    def train_exit_heads(
        self, network: EarlyExitNetwork, train: LabelledTensors, config: EarlyExitConfig
    ) -> dict[str, float]:
        """Train ``network``'s exit heads on its frozen backbone; return what to report."""

    def fine_tune_exits(
        self, network: EarlyExitNetwork, train: LabelledTensors, config: EarlyExitConfig
    ) -> dict[str, float]:
        """Train ``network``'s backbone and heads together (``config.joint_epochs``); return its stats."""


class InProcessTraining:
    """The default service: graphopt's own engines, in this process (on ``RecoveryConfig.device``)."""

    def fit(
        self,
        student: nn.Module,
        teacher: nn.Module | None,
        train: LabelledTensors,
        config: RecoveryConfig,
        *,
        validation: LabelledTensors | None = None,
        desc: str = "recover",
    ) -> RecoveryResult:
        from graphopt.recovery.engine import fit_checked  # the engines import the pass machinery

        return fit_checked(student, teacher, train, config, validation=validation, desc=desc)

    def train_exit_heads(
        self, network: EarlyExitNetwork, train: LabelledTensors, config: EarlyExitConfig
    ) -> dict[str, float]:
        from graphopt.early_exit.training import train_heads

        return train_heads(network, train, config)

    def fine_tune_exits(
        self, network: EarlyExitNetwork, train: LabelledTensors, config: EarlyExitConfig
    ) -> dict[str, float]:
        from graphopt.early_exit.training import fine_tune_jointly

        return fine_tune_jointly(network, train, config)
