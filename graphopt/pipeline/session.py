"""A run's environment: a frozen :class:`Session` built once per call, and a mutable :class:`RunState`.

    Session (frozen, one per optimize call)          RunState (mutable, what the passes leave behind)
      target    the Target object, never its name      notes         sentences for the report
      data      RunData: read and checked once         tables        per-layer tables for the report
      teacher   the original model, frozen             declined      later passes ruled out, with why
      services  timing, training                       epochs_added  epochs handed to a training pass
                                                       data_read     which of the call's data was read

The driver builds both (:mod:`graphopt.pipeline.driver`); a pass sees them through its ``PassContext``.
Passes ask the services for what is not rewriting (timing in a runtime, training), so the pass layer
imports no backend and a test hands fake services.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from torch import nn

from graphopt.data.run_data import RunData
from graphopt.pipeline.services import InProcessTraining, RuntimeTiming, TimingService, TrainingService

if TYPE_CHECKING:
    from graphopt.targets import Target


@dataclass(frozen=True)
class Services:
    """What passes ask for besides the graph: timing models in a target's runtime, and training."""

    timing: TimingService = field(default_factory=RuntimeTiming)
    training: TrainingService = field(default_factory=InProcessTraining)


@dataclass(frozen=True)
class Session:
    """Everything fixed for one call: built once by the driver, shared by every pass (never changed)."""

    target: Target
    data: RunData
    teacher: nn.Module | None = None  # the original model, frozen: what recovery distills from
    services: Services = field(default_factory=Services)


@dataclass
class RunState:
    """What passes leave for later passes and for the report; the stage cache saves and restores it."""

    notes: list[str] = field(default_factory=list)
    #: Extra per-layer tables a pass wants in the report (e.g. "int8": scales and SQNR per layer).
    tables: dict[str, list[dict[str, object]]] = field(default_factory=dict)
    #: Later passes of the plan that a pass measured would not pay here, by name, each with why (a short
    #: key): the PassManager does not call them and their rows say ``skipped:<why>``
    #: (``probe_int8`` declines int8 and QAT when int8 is slower than fp32 in the target's runtime).
    declined: dict[str, str] = field(default_factory=dict)
    #: Epochs a pass hands to a later training pass, by that pass's name (what a declined QAT would
    #: have trained goes to recovery).
    epochs_added: dict[str, int] = field(default_factory=dict)
    #: The names of the call's data (:data:`~graphopt.data.run_data.DATA_NAMES`) passes have read.
    data_read: set[str] = field(default_factory=set)
