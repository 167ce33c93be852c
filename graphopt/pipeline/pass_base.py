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

A pass never traces and never takes an ``nn.Module``: it receives the captured ``GraphModule``. What it needs
besides (the target, example inputs, calibration or training data read and checked once, the timing and
training services) comes from :attr:`Pass.context`, which the PassManager binds for the duration of the
call. The manager, not the pass, lints, recompiles, refreshes shapes and checks exact
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
    from graphopt.data.batches import Batch
    from graphopt.data.calibration import CalibrationBatches
    from graphopt.data.dims import DynamicDims
    from graphopt.data.labelled import LabelledTensors
    from graphopt.pipeline.services import TimingService, TrainingService
    from graphopt.pipeline.session import RunState, Session
    from graphopt.targets import Target


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
    """What a pass sees of its run, handed over by the PassManager instead of globals: the frozen
    :class:`~graphopt.pipeline.session.Session` (target, data, teacher, services) and the mutable
    :class:`~graphopt.pipeline.session.RunState` (notes, tables, declined passes, epochs handed over).

    The driver builds it with :meth:`of`. ``PassContext(example_inputs, calibration_data=...,
    train_data=..., ...)`` stays as a convenience for a pass run on its own (a test, an outside pass
    author): it reads and checks the data it is given into a session of its own, with the ``target`` given
    (default ``generic-fp32``). Reading ``calibration_data``, ``train_data`` or ``validation_data`` is
    recorded, so data that the caller gave but no pass read is reported rather than silently ignored.
    """

    session: Session
    state: RunState

    def __init__(
        self,
        example_inputs: tuple[torch.Tensor, ...],
        calibration_data: Iterable[Any] | None = None,
        train_data: Iterable[Any] | None = None,
        teacher: nn.Module | None = None,
        eval_data: Iterable[Any] | None = None,
        validation_data: Iterable[Any] | None = None,
        timing: TimingService | None = None,
        *,
        target: Target | None = None,
        training: TrainingService | None = None,
    ):
        from graphopt.data.run_data import read_run_data  # the data readers import the pass machinery
        from graphopt.pipeline.session import RunState, Services, Session
        from graphopt.targets import GENERIC_FP32  # the targets declare presets with the passes' options

        data = read_run_data(
            example_inputs, calibration_data=calibration_data, train_data=train_data,
            validation_data=validation_data, eval_data=eval_data,
        )  # fmt: skip
        defaults = Services()
        services = Services(timing or defaults.timing, training or defaults.training)
        self.session = Session(target or GENERIC_FP32, data, teacher, services)
        self.state = RunState()

    @classmethod
    def of(cls, session: Session, state: RunState | None = None) -> PassContext:
        """The context of a run: ``session`` (built once by the driver) and its ``state`` (a new one by
        default: a nested run, such as ``probe_int8``'s candidates, leaves nothing in the caller's)."""
        from graphopt.pipeline.session import RunState

        context = cls.__new__(cls)
        context.session, context.state = session, state if state is not None else RunState()
        return context

    # -- the session: fixed for the run ---------------------------------------------------------------
    @property
    def target(self) -> Target:
        """The run's :class:`~graphopt.targets.Target` object (a custom one is no preset: never look it up
        by name)."""
        return self.session.target

    @property
    def example_inputs(self) -> tuple[torch.Tensor, ...]:
        return self.session.data.example_inputs

    @property
    def dynamic(self) -> DynamicDims:
        """The input dims ``dynamic_shapes`` declares (besides the batch)."""
        return self.session.data.dynamic

    @property
    def teacher(self) -> nn.Module | None:
        """The original model, frozen: what recovery distills from."""
        return self.session.teacher

    @property
    def calibration_data(self) -> CalibrationBatches | None:
        """Input tuples, read and checked against the example inputs."""
        self.state.data_read.add("calibration_data")
        return self.session.data.calibration

    @property
    def train_data(self) -> LabelledTensors | None:
        """Labelled training data, read and checked into tensors."""
        self.state.data_read.add("train_data")
        return self.session.data.train

    @property
    def validation_data(self) -> LabelledTensors | None:
        """Labelled data the model was not trained on (read, checked :class:`LabelledTensors`): decisions
        that trade accuracy for cost (early-exit thresholds) are calibrated on it."""
        self.state.data_read.add("validation_data")
        return self.session.data.validation

    @property
    def eval_data(self) -> list[Batch] | None:
        """Held-out labelled batches ``(inputs, labels)``; the report measures accuracy on them after every
        pass, and accuracy-driven passes (``accuracy_budget``) decide with them."""
        return self.session.data.eval

    @property
    def timing(self) -> TimingService:
        """Where a pass times models in a target's runtime (:mod:`graphopt.pipeline.services`)."""
        return self.session.services.timing

    @property
    def training(self) -> TrainingService:
        """Where a pass trains (recovery, QAT, exit heads): :mod:`graphopt.pipeline.services`."""
        return self.session.services.training

    # -- the run state: what passes leave behind ------------------------------------------------------
    @property
    def notes(self) -> list[str]:
        """Sentences a pass wants shown in the report (for example why a lossy rewrite was not recovered)."""
        return self.state.notes

    @notes.setter
    def notes(self, value: list[str]) -> None:  # ``context.notes += [...]`` assigns the extended list back
        self.state.notes = value

    @property
    def tables(self) -> dict[str, list[dict[str, object]]]:
        """Extra per-layer tables a pass wants in the report (e.g. "int8": scales and SQNR per layer)."""
        return self.state.tables

    @property
    def declined(self) -> dict[str, str]:
        """Later passes a pass measured would not pay here, by name, with why (:class:`RunState`)."""
        return self.state.declined

    @property
    def epochs_added(self) -> dict[str, int]:
        """Epochs a pass hands to a later training pass, by that pass's name."""
        return self.state.epochs_added

    @property
    def data_read(self) -> frozenset[str]:
        """The names of the data passes have read so far."""
        return frozenset(self.state.data_read)

    def mark_read(self, names: frozenset[str] | set[str]) -> None:
        """Record ``names`` as read by this run: a pass that reads data in a nested run of its own (the
        candidates ``probe_int8`` builds) reports it here, so the data is not reported unused."""
        self.state.data_read |= set(names)

    def unused_data(self) -> list[str]:
        """Names of the data the caller gave that no pass read (eval data is the report's: always read)."""
        given = [name for name in self.session.data.given() if name != "eval_data"]
        return [name for name in given if name not in self.state.data_read]


class Pass:
    """Base class of rewrite passes. See the module docstring for the contract."""

    name: ClassVar[str]
    description: ClassVar[str]
    exact: ClassVar[bool]
    Options: ClassVar[type[PassOptions]] = PassOptions
    #: Where the pass belongs in a plan (:data:`graphopt.pipeline.plan.SLOT_ORDER`); the planner places the
    #: slots a call's options add relative to it. Passes outside graphopt's own slots are ``"custom"``.
    slot: ClassVar[str] = "custom"
    #: Data the pass cannot run without (``"calibration_data"``, ``"train_data"``; ``"a|b"``: either one):
    #: optimize checks up front.
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
