"""Instruments: hooks the PassManager calls around every pass.

An instrument implements ``before_pass(pass_, gm, context)`` and ``after_pass(pass_, gm, context, record)``;
both are optional. ``after_pass`` sees the record the manager filled in (timing, sizes, stats) and may add to
it or raise. Built-ins: :class:`NumericCheck` (exact passes must preserve outputs), :class:`IRDump`
(``NNN_<pass>.txt`` per pass), :class:`ProgressLog` (one log line per pass).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch
import torch.fx as fx

from graphopt.numerics import Tolerance, allclose

if TYPE_CHECKING:
    from graphopt.pass_base import Pass, PassContext
    from graphopt.pass_manager import PassRecord

log = logging.getLogger("graphopt")


class Instrument(Protocol):
    def before_pass(self, pass_: Pass, gm: fx.GraphModule, context: PassContext) -> None: ...

    def after_pass(
        self, pass_: Pass, gm: fx.GraphModule, context: PassContext, record: PassRecord
    ) -> None: ...


class NumericCheckFailed(AssertionError):
    """Raised by :class:`NumericCheck` when an exact pass changed the outputs."""


#: ``|a - b| <= 1e-4 * max(1, max|outputs|) + 1e-5 * |b|``. Folding BatchNorm into ResNet-18 at 224x224
#: (logits up to 9.8) moved the outputs by 1.2e-5 of their scale, in float rounding alone; a wrong rewrite
#: moves them by far more than 1e-4 of it.
EXACT_PASS_TOLERANCE = Tolerance(rtol=1e-5, atol=1e-4)


class NumericCheck:
    """Checks every exact pass against the previous stage on the example inputs, within ``tolerance``
    scaled by the size of the outputs (:meth:`Tolerance.relative_to`).

    The previous stage's outputs are computed in ``before_pass`` (a forward pass, no copy of the model), the
    new ones in ``after_pass``; the max abs error goes into the record either way.
    """

    def __init__(self, tolerance: Tolerance | None = None):
        self.tolerance = tolerance or EXACT_PASS_TOLERANCE
        self._before: Any = None

    def before_pass(self, pass_: Pass, gm: fx.GraphModule, context: PassContext) -> None:
        self._before = _run(gm, context) if pass_.exact else None

    def after_pass(self, pass_: Pass, gm: fx.GraphModule, context: PassContext, record: PassRecord) -> None:
        if not pass_.exact:
            return
        tolerance = self.tolerance.relative_to(self._before)
        ok, max_abs = allclose(self._before, _run(gm, context), tolerance)
        record.max_abs_change = max_abs
        if not ok:
            raise NumericCheckFailed(
                f"exact pass changed the outputs by up to {max_abs:.3g} "
                f"(tolerance rtol={tolerance.rtol}, atol={tolerance.atol:.3g}: "
                f"{self.tolerance.atol} x max(1, max|outputs|))"
            )


class IRDump:
    """Writes the IR after every pass to ``directory/NNN_<pass>.txt`` (``000_original.txt`` first)."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._count = 0

    def dump(self, label: str, gm: fx.GraphModule) -> Path:
        path = self.directory / f"{self._count:03d}_{label}.txt"
        path.write_text(f"# {label}\n\n{gm.graph}\n\n# generated code\n{gm.code}")
        self._count += 1
        return path

    def before_pass(self, pass_: Pass, gm: fx.GraphModule, context: PassContext) -> None:
        if self._count == 0:
            self.dump("original", gm)

    def after_pass(self, pass_: Pass, gm: fx.GraphModule, context: PassContext, record: PassRecord) -> None:
        self.dump(pass_.name, gm)


class ProgressLog:
    """Logs one line per pass on the ``graphopt`` logger."""

    def before_pass(self, pass_: Pass, gm: fx.GraphModule, context: PassContext) -> None:
        log.info("running pass %s", pass_.name)

    def after_pass(self, pass_: Pass, gm: fx.GraphModule, context: PassContext, record: PassRecord) -> None:
        log.info(
            "pass %s: modified=%s in %.3f s, %s", pass_.name, record.modified, record.seconds, record.stats
        )


def _run(gm: fx.GraphModule, context: PassContext) -> Any:
    # The same RNG state for both runs, so a live random op (dropout with training=True) is not a mismatch.
    with torch.random.fork_rng(), torch.no_grad():
        torch.manual_seed(0)
        return gm(*context.example_inputs)
