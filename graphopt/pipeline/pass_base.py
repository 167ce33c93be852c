"""What a pass author writes: a :class:`Pass` subclass with typed options and a ``call``.

A pass is a small class::

    class FoldBatchNorm(Pass):
        name = "fold_batchnorm"            # = the module stem
        description = "Fold BatchNorm into the preceding conv/linear."
        exact = True                       # must preserve outputs; the PassManager checks it numerically
        Options = FoldBatchNormOptions     # a frozen dataclass, validated in __post_init__

        def call(self, gm):                # mutate gm in place, return it with what happened
            ...
            return PassResult(gm, modified=True, stats={"folded": 3, "skipped:shared_output": 1})

A pass never traces and never takes an ``nn.Module``: it receives the captured ``GraphModule``. Data it needs
(example inputs, calibration or training data) comes from :attr:`Pass.context`, which the PassManager binds
for the duration of the call. The manager, not the pass, lints, recompiles, refreshes shapes and checks exact
passes numerically.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torch.fx as fx
from torch import nn

from graphopt.errors import ConfigError, GraphoptError

if TYPE_CHECKING:
    from graphopt.pipeline.services import TimingService


@dataclass(frozen=True)
class PassOptions:
    """Base class of typed pass options. Subclasses add fields and validate them in ``__post_init__``."""


@dataclass
class PassResult:
    """What a pass returns: the (same, mutated) GraphModule, whether it changed, and outcome counts."""

    gm: fx.GraphModule
    modified: bool
    stats: dict[str, float] = field(default_factory=dict)


class PassContext:
    """Data a pass may need, handed over by the PassManager instead of globals.

    ``notes`` collects sentences a pass wants shown in the report (for example why a lossy rewrite was not
    recovered). Reading ``calibration_data``, ``train_data`` or ``validation_data`` is recorded, so data
    that the caller gave but no pass read is reported rather than silently ignored.
    """

    def __init__(
        self,
        example_inputs: tuple[torch.Tensor, ...],
        calibration_data: Iterable[Any] | None = None,
        train_data: Iterable[Any] | None = None,
        teacher: nn.Module | None = None,
        eval_data: list[tuple[Any, torch.Tensor]] | None = None,
        validation_data: Any | None = None,
        timing: TimingService | None = None,
    ):
        self.example_inputs = example_inputs
        self._timing = timing
        self.teacher = teacher  # the original model, frozen: what recovery distills from
        #: Held-out labelled batches ``(inputs, labels)``; the report measures accuracy on them after every
        #: pass, and accuracy-driven passes (``accuracy_budget``) decide with them.
        self.eval_data = eval_data
        self._data = {
            "calibration_data": calibration_data,
            "train_data": train_data,
            "validation_data": validation_data,
        }
        self._read: set[str] = set()
        self.notes: list[str] = []
        #: Extra per-layer tables a pass wants in the report (e.g. "int8": scales and SQNR per layer).
        self.tables: dict[str, list[dict[str, object]]] = {}
        #: Later passes of the plan that a pass measured would not pay here, by name, each with why (a short
        #: key): the PassManager does not call them and their rows say ``skipped:<why>``
        #: (``probe_int8`` declines int8 and QAT when int8 is slower than fp32 in the target's runtime).
        self.declined: dict[str, str] = {}
        #: Epochs a pass hands to a later training pass, by that pass's name (what a declined QAT would
        #: have trained goes to recovery).
        self.epochs_added: dict[str, int] = {}

    @property
    def calibration_data(self) -> Iterable[Any] | None:
        self._read.add("calibration_data")
        return self._data["calibration_data"]

    @property
    def train_data(self) -> Iterable[Any] | None:
        self._read.add("train_data")
        return self._data["train_data"]

    @property
    def validation_data(self) -> Any | None:
        """Labelled data the model was not trained on (read, checked :class:`LabelledTensors`): decisions
        that trade accuracy for cost (early-exit thresholds) are calibrated on it."""
        self._read.add("validation_data")
        return self._data["validation_data"]

    @property
    def timing(self) -> TimingService:
        """Where a pass times models in a target's runtime (:mod:`graphopt.pipeline.services`): the driver
        hands the run's service; a context built without one (a pass run on its own, a test) gets the default,
        which lowers with the target's backend on this machine."""
        if self._timing is None:
            from graphopt.pipeline.services import (
                RuntimeTiming,  # the default imports the backends: only on use
            )

            self._timing = RuntimeTiming()
        return self._timing

    @property
    def data_read(self) -> frozenset[str]:
        """The names of the data passes have read so far."""
        return frozenset(self._read)

    def mark_read(self, names: frozenset[str] | set[str]) -> None:
        """Record ``names`` as read: passes a resumed run skipped (:mod:`graphopt.pipeline.stage_cache`) read
        them."""
        self._read |= set(names)

    def unused_data(self) -> list[str]:
        """Names of the data the caller gave that no pass read."""
        return [name for name, value in self._data.items() if value is not None and name not in self._read]


class Pass:
    """Base class of rewrite passes. See the module docstring for the contract."""

    name: ClassVar[str]
    description: ClassVar[str]
    exact: ClassVar[bool]
    Options: ClassVar[type[PassOptions]] = PassOptions
    #: Where the pass belongs in a plan (:data:`graphopt.pipeline.plan.SLOT_ORDER`); the planner places the
    #: slots a call's options add relative to it. Passes outside graphopt's own slots are ``"custom"``.
    slot: ClassVar[str] = "custom"
    #: Data the pass cannot run without (``"calibration_data"``, ``"train_data"``): optimize checks up front.
    needs: ClassVar[tuple[str, ...]] = ()

    def __init__(self, options: PassOptions | None = None, **fields: Any):
        if options is None:
            try:
                options = self.Options(**fields)
            except TypeError as exc:
                known = ", ".join(f.name for f in dataclasses.fields(self.Options)) or "none"
                raise ConfigError(
                    f"bad options for pass {self.name!r}: {exc}; its options are: {known}"
                ) from None
        elif fields:
            raise ConfigError(
                f"pass {self.name!r}: give either an options object or keyword fields, not both"
            )
        if not isinstance(options, self.Options):
            raise ConfigError(
                f"pass {self.name!r} takes {self.Options.__name__}, got {type(options).__name__}"
            )
        self.options = options
        self._context: PassContext | None = None

    @property
    def context(self) -> PassContext:
        """The data the PassManager bound for this run; raises outside a managed run."""
        if self._context is None:
            raise GraphoptError(f"pass {self.name!r} needs a PassContext: run it through a PassManager")
        return self._context

    @contextmanager
    def bound(self, context: PassContext) -> Iterator[Pass]:
        """Bind ``context`` for the duration of one managed call."""
        self._context = context
        try:
            yield self
        finally:
            self._context = None

    def requires(self, gm: fx.GraphModule) -> None:
        """Raise if a precondition does not hold. The default requires nothing."""

    def ensures(self, gm: fx.GraphModule) -> None:
        """Raise if a postcondition does not hold after ``call``. The default ensures nothing."""

    def call(self, gm: fx.GraphModule) -> PassResult:
        """Rewrite ``gm`` in place and return ``PassResult(gm, modified, stats)``."""
        raise NotImplementedError(f"pass {type(self).__name__} does not implement call()")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.options!r})"
