"""The PassManager runs a pipeline of passes over a GraphModule and owns everything around a pass.

For each pass it: binds the :class:`PassContext`, checks ``requires``, times ``call``, checks that the pass
returned the same GraphModule object (passes work in place), runs ``graph.lint()`` and ``recompile()``,
refreshes the shape metadata, checks ``ensures``, records a :class:`PassRecord`, and calls the instruments
(by default :class:`~graphopt.pipeline.instruments.NumericCheck`, which holds exact passes to the previous
stage's outputs). Any failure becomes a :class:`PassError` naming the pass and the passes already run. A pass
an earlier one declined (:attr:`PassContext.declined`, e.g. int8 and QAT after ``probe_int8`` timed int8
slower) is not called: its record is unmodified, with ``skipped:<why>`` in its stats.

With ``steps > 1`` the exact passes are repeated until a whole sweep of them modifies nothing (a fixed
point) or the step budget is spent. Lossy passes (pruning, training, quantization) run once, in the
first sweep: repeating them would prune the pruned model again and train it again.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch.fx as fx

from graphopt.errors import ConfigError, PassError
from graphopt.ir.graph import count_nodes
from graphopt.ir.shapes import propagate_shapes
from graphopt.pipeline.instruments import Instrument, NumericCheck
from graphopt.pipeline.pass_base import Pass, PassContext, PassResult
from graphopt.reporting.cost import count_macs, count_params


@dataclass
class GraphSize:
    nodes: int
    params: int
    macs: int

    @classmethod
    def of(cls, gm: fx.GraphModule) -> GraphSize:
        return cls(nodes=count_nodes(gm), params=count_params(gm), macs=count_macs(gm))


@dataclass
class PassRecord:
    """One row per pass run: what it did and what it cost."""

    name: str
    exact: bool
    step: int
    modified: bool
    seconds: float
    before: GraphSize
    after: GraphSize
    stats: dict[str, float] = field(default_factory=dict)
    max_abs_change: float | None = None


class PassManager:
    """Runs ``passes`` in order; with ``steps > 1`` the exact ones up to a fixed point (module docstring)."""

    def __init__(
        self,
        passes: Sequence[Pass],
        *,
        steps: int = 1,
        instruments: Sequence[Instrument] | None = None,
    ):
        if not isinstance(steps, int) or steps < 1:
            raise ConfigError(f"steps must be a positive int, got {steps!r}")
        for p in passes:
            if not isinstance(p, Pass):
                raise ConfigError(f"PassManager takes Pass instances, got {type(p).__name__}")
        self.passes = list(passes)
        self.steps = steps
        self.instruments: list[Instrument] = (
            list(instruments) if instruments is not None else [NumericCheck()]
        )

    def run(self, gm: fx.GraphModule, context: PassContext) -> list[PassRecord]:
        """Run the pipeline on ``gm`` in place; return one record per pass executed."""
        records: list[PassRecord] = []
        gm.eval()
        propagate_shapes(gm, context.example_inputs)
        for step in range(self.steps):
            modified = False
            for pass_ in self.passes if step == 0 else [p for p in self.passes if p.exact]:
                record = self._run_one(pass_, gm, context, step, [r.name for r in records])
                records.append(record)
                modified |= record.modified and pass_.exact
            if not modified:
                break
        return records

    def _run_one(
        self, pass_: Pass, gm: fx.GraphModule, context: PassContext, step: int, already_run: list[str]
    ) -> PassRecord:
        before = GraphSize.of(gm)
        try:
            with pass_.bound(context):
                for instrument in self.instruments:
                    _call_hook(instrument, "before_pass", pass_, gm, context)
                start = time.perf_counter()
                result = self._call(pass_, gm, context)
                seconds = time.perf_counter() - start
                self._check_result(pass_, gm, result)
                # The IR is an inference graph between passes; modules a pass created start in training
                # mode (nn.Module's default), and a quantizer in training mode exports as fake-quant.
                gm.eval()
                gm.graph.lint()
                gm.recompile()
                propagate_shapes(gm, context.example_inputs)
                if pass_.name not in context.declined:
                    pass_.ensures(gm)
                record = PassRecord(
                    name=pass_.name,
                    exact=pass_.exact,
                    step=step,
                    modified=result.modified,
                    seconds=seconds,
                    before=before,
                    after=GraphSize.of(gm),
                    stats=dict(result.stats),
                )
                for instrument in self.instruments:
                    _call_hook(instrument, "after_pass", pass_, gm, context, record)
        except PassError:
            raise
        except Exception as exc:  # any failure inside a pass is reported as that pass's failure
            raise PassError(pass_.name, already_run, f"{type(exc).__name__}: {exc}") from exc
        return record

    @staticmethod
    def _call(pass_: Pass, gm: fx.GraphModule, context: PassContext) -> PassResult:
        """Run ``pass_``, unless an earlier pass declined it (:attr:`PassContext.declined`): then its record
        says why and the graph is untouched."""
        why = context.declined.get(pass_.name)
        if why is not None:
            return PassResult(gm, modified=False, stats={f"skipped:{why}": 1})
        pass_.requires(gm)
        return pass_.call(gm)

    @staticmethod
    def _check_result(pass_: Pass, gm: fx.GraphModule, result: object) -> None:
        if not isinstance(result, PassResult):
            raise TypeError(f"call() must return a PassResult, got {type(result).__name__}")
        if result.gm is not gm:
            raise TypeError("call() must mutate and return the GraphModule it was given, not a new one")
        if not isinstance(result.modified, bool):
            raise TypeError(f"PassResult.modified must be a bool, got {result.modified!r}")


def _call_hook(instrument: Instrument, hook: str, *args: object) -> None:
    method = getattr(instrument, hook, None)
    if method is not None:
        method(*args)
