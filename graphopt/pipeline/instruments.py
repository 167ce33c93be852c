"""Instruments: hooks the PassManager calls around every pass.

An instrument implements ``before_pass(pass_, gm, context)`` and ``after_pass(pass_, gm, context, record)``;
both are optional. ``after_pass`` sees the record the manager filled in (timing, sizes, stats) and may add to
it or raise. Built-ins: :class:`NumericCheck` (exact passes must preserve outputs), :class:`IRDump`
(``NNN_<pass>.txt`` per pass), :class:`ProgressLog` (one log line per pass).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch
import torch.fx as fx

from graphopt.artifacts.destination import save_file
from graphopt.errors import ConfigError, WriteError
from graphopt.pipeline.snapshots import float64_copy, release, structural_copy
from graphopt.reporting.numerics import Tolerance, allclose, max_abs_difference

if TYPE_CHECKING:
    from graphopt.pipeline.pass_base import Pass, PassContext
    from graphopt.pipeline.pass_manager import PassRecord

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
    """Checks every exact pass against the previous stage on the example inputs.

    First in the model's own precision, within ``tolerance`` scaled by the size of the outputs
    (:meth:`Tolerance.relative_to`). Rounding grows with depth and with the size of the activations inside,
    not only of the outputs: in a 150-layer ResNet with large BatchNorm gains, folding moved float32 logits
    by 9.5 against a tolerance of 1.4, with nothing wrong. So when that first check fails, both graphs run
    again in float64, where activation rounding vanishes, and the rewrite is judged there:

        |f64(after) - f64(before)| <= max(atol, |f32(before) - f64(before)|) + rtol |f64(before)|

    i.e. the rewrite may move the outputs by no more than float rounding already moves the original (the
    rewritten weights are still stored in float32, so some rounding stays). On that network: 0.34 in
    float64 against 6.4 of rounding in the original; a fold that is really wrong moves float64 outputs by
    its own error, far above the original's rounding. Graphs that cannot run in float64 keep the first
    verdict.

    Memory: the previous stage is kept for the re-check as a structural copy that shares every tensor with
    the graph (:func:`~graphopt.pipeline.snapshots.structural_copy`: passes replace parameters rather than
    write into them), so a pass that checks out costs no copy of the weights. Only a failed first check
    pays: the copy is first confirmed to still give the outputs recorded before the pass (a pass that wrote
    into a shared tensor in place would change them: then the first verdict stands), and the two graphs are
    converted to float64 one after the other (:func:`~graphopt.pipeline.snapshots.float64_copy`).
    """

    def __init__(self, tolerance: Tolerance | None = None):
        self.tolerance = tolerance or EXACT_PASS_TOLERANCE
        self._before: Any = None
        self._snapshot: fx.GraphModule | None = None

    def before_pass(self, pass_: Pass, gm: fx.GraphModule, context: PassContext) -> None:
        self._before = _run(gm, context) if pass_.exact else None
        self._snapshot = _structural_copy(gm) if pass_.exact else None

    def after_pass(self, pass_: Pass, gm: fx.GraphModule, context: PassContext, record: PassRecord) -> None:
        if not pass_.exact:
            return
        snapshot, self._snapshot = self._snapshot, None
        try:
            self._judge(gm, context, record, snapshot)
        finally:
            release(snapshot)  # the tensors the pass replaced are freed now, not at the next cyclic GC

    def _judge(
        self, gm: fx.GraphModule, context: PassContext, record: PassRecord, snapshot: fx.GraphModule | None
    ) -> None:
        tolerance = self.tolerance.relative_to(self._before)
        ok, max_abs = allclose(self._before, _run(gm, context), tolerance)
        record.max_abs_change = max_abs
        if ok:
            return
        message = (
            f"exact pass changed the outputs by up to {max_abs:.3g} "
            f"(tolerance rtol={tolerance.rtol}, atol={tolerance.atol:.3g}: "
            f"{self.tolerance.atol} x max(1, max|outputs|))"
        )
        verdict = _float64_verdict(snapshot, gm, context, self._before, tolerance)
        if verdict.ok:
            return
        raise NumericCheckFailed(f"{message}; {verdict.note}")


@dataclass(frozen=True)
class _Float64Verdict:
    ok: bool
    note: str


def _float64_verdict(
    before: fx.GraphModule | None,
    after: fx.GraphModule,
    context: PassContext,
    before_own: Any,
    tolerance: Tolerance,
) -> _Float64Verdict:
    if before is None:
        return _Float64Verdict(False, "the previous stage could not be copied for a float64 re-check")
    # The copy shares tensors with the graph: it is the previous stage only if it still computes what
    # that stage computed (bit for bit: the same ops on the same tensors).
    if max_abs_difference(before_own, _run(before, context)) > 0:
        return _Float64Verdict(
            False,
            "the pass wrote into the weights in place, so the previous stage is gone and the float64 "
            "re-check cannot run (replace parameters instead of writing into them)",
        )
    try:
        before64 = _run_float64(before, context)
        after64 = _run_float64(after, context)
    except Exception as exc:  # ops that insist on float32 (fake quantization, hard-coded dtypes)
        return _Float64Verdict(False, f"the float64 re-check could not run ({type(exc).__name__})")
    rounding = max_abs_difference(before_own, before64)
    judged = Tolerance(rtol=tolerance.rtol, atol=max(tolerance.atol, rounding))
    ok, change = allclose(before64, after64, judged)
    return _Float64Verdict(
        ok,
        f"run in float64 the rewrite moved them by up to {change:.3g}, more than float rounding moves the "
        f"original ({rounding:.3g}): the rewrite is wrong",
    )


def _structural_copy(gm: fx.GraphModule) -> fx.GraphModule | None:
    try:
        return structural_copy(gm)
    except Exception:  # an opaque leaf that cannot be copied: the float64 re-check is skipped
        return None


def _run_float64(gm: fx.GraphModule, context: PassContext) -> Any:
    """``gm`` run in float64 on a converted copy, freed before returning (one float64 graph at a time)."""
    converted = float64_copy(gm)
    try:
        inputs = tuple(x.double() if x.is_floating_point() else x for x in context.example_inputs)
        with torch.random.fork_rng(), torch.no_grad():
            torch.manual_seed(0)
            return converted(*inputs)
    finally:
        release(converted)


class IRDump:
    """Writes the IR after every pass to ``directory/NNN_<pass>.txt`` (``000_original.txt`` first)."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        if self.directory.exists() and not self.directory.is_dir():
            raise ConfigError(f"dump_ir {self.directory} is a file: give a folder (it is created if missing)")
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"dump_ir folder {self.directory} cannot be created ({exc.strerror})") from exc
        self._count = 0

    def dump(self, label: str, gm: fx.GraphModule) -> Path:
        path = self.directory / f"{self._count:03d}_{label}.txt"
        save_file(path, f"# {label}\n\n{gm.graph}\n\n# generated code\n{gm.code}", "IR dump", WriteError)
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
