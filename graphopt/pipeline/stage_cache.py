"""Run states after the expensive passes of a plan, so that plans sharing a prefix run it once.

A search tries many plans on one model: ``prune=0.5`` in fp32, the same with int8, the same with int8 and
early exits. They share their first passes (prune, re-estimate BatchNorm, distillation recovery; then
calibration and QAT), and those are the expensive ones. After each lossy pass (training, pruning,
calibration) the run's state is kept under the key

    (scope, repr(pass_1), ..., repr(pass_k))

where ``scope`` names the model, its data and the target settings (the caller's business: a
:class:`StageCache` must only be shared between runs on the same model and data). A later run whose plan
starts with the same passes resumes from the longest cached prefix: the graph, the report rows so far, the
notes and tables the passes wrote, the latency guard's fp32 snapshot and the state of stateful instruments
(:class:`StatefulInstrument`) are restored, then the remaining passes run. Passes are deterministic given
their options (their seeds are options), so a resumed run ends where a full run would.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch.fx as fx

from graphopt.ir.graph import deep_copy
from graphopt.pipeline.pass_base import Pass, PassContext
from graphopt.pipeline.pass_manager import PassRecord
from graphopt.pipeline.session import RunState
from graphopt.reporting.notes import Note
from graphopt.reporting.report import Report, StageRecord

#: Note key (graphopt.reporting.notes) of a run that resumed from the cache; fact ``stages``: pass names.
REUSED = "stage_cache:reused"


@dataclass
class SavedStage:
    """What a run has built up to some pass: the graph and everything the report and the guard hold."""

    gm: fx.GraphModule
    stages: list[StageRecord]
    #: The passes' run state (notes, tables, declined passes, epochs handed over, data read), a copy.
    run: RunState
    fp32_model: fx.GraphModule | None
    trained_after: bool
    instruments: list[object]  # each stateful instrument's state, in RunParts.instruments order


class StatefulInstrument(Protocol):
    """An instrument that builds something up over a run (the benchmark's stage snapshots) and so takes
    part in a resumed run: its state at a cached point is kept and put back."""

    def state(self) -> object: ...

    def restore(self, state: object) -> None: ...


class Fp32Holder(Protocol):
    """What :class:`StageCache` needs of the latency guard's fp32 snapshot
    (:class:`graphopt.pipeline.driver.Fp32Snapshot`)."""

    model: fx.GraphModule | None
    trained_after: bool


@dataclass
class RunParts:
    """The live objects of one optimize run that a cached state is read from and restored into."""

    report: Report
    context: PassContext
    snapshot: Fp32Holder
    instruments: list[StatefulInstrument]

    def capture(self, gm: fx.GraphModule) -> SavedStage:
        return SavedStage(
            gm=deep_copy(gm),
            stages=copy.deepcopy(self.report.stages),
            run=copy.deepcopy(self.context.state),
            fp32_model=None if self.snapshot.model is None else deep_copy(self.snapshot.model),
            trained_after=self.snapshot.trained_after,
            instruments=[instrument.state() for instrument in self.instruments],
        )

    def restore(self, state: SavedStage) -> fx.GraphModule:
        """Put ``state`` back into this run's report, context and snapshot; return a private graph."""
        self.report.stages[:] = copy.deepcopy(state.stages)
        run = copy.deepcopy(state.run)
        read_here = set(self.context.state.data_read)  # what this run's passes read so far stays read
        for each in dataclasses.fields(run):  # every field: one added to RunState is restored too
            setattr(self.context.state, each.name, getattr(run, each.name))
        self.context.state.data_read |= read_here
        self.snapshot.model = None if state.fp32_model is None else deep_copy(state.fp32_model)
        self.snapshot.trained_after = state.trained_after
        for instrument, saved in zip(self.instruments, state.instruments, strict=True):
            instrument.restore(saved)
        return deep_copy(state.gm)


class StageCache:
    """Run states keyed by the plan prefix that produced them (module docstring)."""

    def __init__(self) -> None:
        self._states: dict[tuple[str, ...], SavedStage] = {}
        self.hits = 0  # runs that resumed from a cached prefix
        self.passes_skipped = 0  # passes those runs did not run again

    def __len__(self) -> int:
        return len(self._states)

    def resume(
        self, scope: str, passes: Sequence[Pass], parts: RunParts, gm: fx.GraphModule
    ) -> tuple[fx.GraphModule, int]:
        """The graph to continue from and how many of ``passes`` it already has: the longest cached
        prefix restored into ``parts``, or ``gm`` and 0."""
        keys = _prefix_keys(scope, passes)
        for done in range(len(passes), 0, -1):
            state = self._states.get(keys[done - 1])
            if state is not None:
                self.hits += 1
                self.passes_skipped += done
                names = tuple(p.name for p in passes[:done])
                restored = parts.restore(state)
                parts.context.notes.append(Note(
                    REUSED,
                    f"stages {', '.join(names)} reused from an earlier run of the same passes on the same "
                    "model and data (stage cache)",
                    stages=names,
                ))  # fmt: skip
                return restored, done
        return gm, 0

    def recorder(self, scope: str, passes: Sequence[Pass], parts: RunParts, start: int) -> StageRecorder:
        return StageRecorder(self, _prefix_keys(scope, passes), parts, start)

    def store(self, key: tuple[str, ...], state: SavedStage) -> None:
        self._states[key] = state


class StageRecorder:
    """The instrument that stores the run state after each lossy pass (put it last: after the report row
    of that pass is written)."""

    def __init__(self, cache: StageCache, keys: list[tuple[str, ...]], parts: RunParts, start: int):
        self.cache, self.keys, self.parts, self.index = cache, keys, parts, start

    def after_pass(self, pass_: Pass, gm: fx.GraphModule, context: PassContext, record: PassRecord) -> None:
        if record.step > 0:  # fixed-point sweeps repeat exact passes: not a plan prefix
            return
        key = self.keys[self.index]
        self.index += 1
        if not pass_.exact:
            self.cache.store(key, self.parts.capture(gm))


def _prefix_keys(scope: str, passes: Sequence[Pass]) -> list[tuple[str, ...]]:
    reprs = [repr(p) for p in passes]
    return [(scope, *reprs[: i + 1]) for i in range(len(reprs))]
