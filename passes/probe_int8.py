"""Probe int8 before training: is the pruned graph faster as int8 than as fp32 where it will ship?

Pruning moves a network below the size where int8 pays on some CPUs: per-operator costs (quantize and
dequantize at the edges, requantization, re-layout) stay while the MACs int8 speeds up shrink. Measured on
Fashion-MNIST's 28x28 ResNet on an AVX2 CPU without VNNI, ORT one thread: unpruned (20 M MACs) int8 1.45x
faster than fp32; pruned 0.5 (5 M MACs) int8 0.245-0.450 ms vs fp32 0.200-0.295 ms (three seeds), slower.
The latency guard then ships fp32 at export, and the epochs QAT trained were spent on a graph that does not
ship (with them given to recovery instead, the three seeds' mean drop went from 0.74 to 0.09 pp).

So right after pruning (BatchNorm re-estimated, nothing trained yet) this pass builds both candidates from
a copy of the graph with the target's own passes (cleanup; cleanup then int8 layout, fake-quant and
calibration) and has the run's timing service lower them with the target's backend and time them side by
side (:class:`~graphopt.pipeline.services.TimingService`). Weights do not change which is faster, so the
untrained graph answers for the trained one. When int8 is not faster, the plan's int8 passes and QAT are
declined (:attr:`~graphopt.pipeline.pass_base.PassContext.declined`: their rows say
``skipped:int8_not_faster``) and QAT's epochs go to recovery. The graph itself is never changed.

Not run (and said so) for a target of another CPU family than this machine's: its runtime cannot be timed
here, so int8 and QAT run as planned.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.fx as fx

from graphopt.errors import ConfigError
from graphopt.ir.graph import deep_copy
from graphopt.pipeline.pass_base import Pass, PassContext, PassOptions, PassResult
from graphopt.pipeline.pass_manager import PassManager
from graphopt.pipeline.registry import make_pass
from graphopt.reporting.notes import Note
from graphopt.targets import Target

#: The target's passes each candidate is built with, by slot: both are cleaned up (BatchNorm folded) as
#: the shipped graph will be; the int8 one is then quantized and calibrated.
CANDIDATE_SLOTS = {"fp32": ("cleanup",), "int8": ("cleanup", "int8_layout", "int8")}
DECLINED = "int8_not_faster"

#: Note keys (graphopt.reporting.notes): what tests and tools read instead of the sentences.
UNAVAILABLE = "probe_int8:unavailable"
INT8_FASTER = "probe_int8:int8_faster"
INT8_NOT_FASTER = "probe_int8:int8_not_faster"


@dataclass(frozen=True)
class ProbeInt8Options(PassOptions):
    """``target``: whose passes build the candidates and whose runtime times them (None: the run's target,
    ``PassContext.target``); ``declines``: the plan's passes that go when int8 is not faster;
    ``moved_epochs`` of training then go to ``train_pass``."""

    target: Target | None = None  # a Target object, never a name: a custom target is no preset
    declines: tuple[str, ...] = ("insert_fake_quant", "calibrate", "qat")
    moved_epochs: int = 0
    train_pass: str = "recover"

    def __post_init__(self) -> None:
        if self.target is not None and not isinstance(self.target, Target):
            raise ConfigError(
                f"probe_int8's target must be a graphopt.Target (or None: the run's target), got "
                f"{self.target!r}; give the object, e.g. graphopt.TARGETS[{self.target!r}]"
            )
        if self.moved_epochs < 0:
            raise ConfigError(f"moved_epochs must be >= 0, got {self.moved_epochs}")


class ProbeInt8(Pass):
    name = "probe_int8"
    slot = "prune"
    description = "Time the graph as int8 and as fp32 where it ships; skip int8 and QAT if int8 is slower."
    exact = False  # changes nothing, but must run once: a fixed-point sweep would time it again
    Options = ProbeInt8Options
    needs = ("calibration_data",)

    def call(self, gm: fx.GraphModule) -> PassResult:
        target = self.options.target or self.context.target
        unavailable = self.context.timing.unavailable(target)
        if unavailable is not None:
            self.context.notes.append(
                Note(UNAVAILABLE, f"probe_int8: {unavailable}; int8 and QAT run as planned", why=unavailable)
            )
            return PassResult(gm, modified=False, stats={"skipped:foreign_isa": 1})
        candidates = {kind: self._candidate(gm, target, slots) for kind, slots in CANDIDATE_SLOTS.items()}
        timed = self.context.timing.time(target, candidates, self.context.example_inputs)
        ms = timed.ms
        stats = {"probe_int8_ms": round(ms["int8"], 4), "probe_fp32_ms": round(ms["fp32"], 4)}
        timing = f"int8 {ms['int8']:.3f} ms vs fp32 {ms['fp32']:.3f} ms in {timed.runtime}"
        measured = {"int8_ms": ms["int8"], "fp32_ms": ms["fp32"], "runtime": timed.runtime}
        if ms["int8"] < ms["fp32"]:
            self.context.notes.append(
                Note(
                    INT8_FASTER,
                    f"probe_int8: {timing}: int8 is faster, int8 and QAT run as planned",
                    **measured,
                )
            )
            return PassResult(gm, modified=False, stats={**stats, "int8_faster": 1})
        self._decline(timing, measured)
        return PassResult(gm, modified=False, stats={**stats, "int8_faster": 0})

    def _candidate(self, gm: fx.GraphModule, target: Target, slots: tuple[str, ...]) -> fx.GraphModule:
        """A copy of ``gm`` through the target's passes of ``slots``, quietly (no report, no checks: the
        shipped graph gets both when the plan runs these passes for real)."""
        passes = [make_pass(spec.name, spec.options) for spec in target.passes]
        candidate = deep_copy(gm)
        self.context.mark_read({"calibration_data"})  # the int8 candidate calibrates on it
        context = PassContext.of(self.context.session)  # the run's data and services, a state of its own
        PassManager([p for p in passes if p.slot in slots], instruments=[]).run(candidate, context)
        return candidate

    def _decline(self, timing: str, measured: dict[str, object]) -> None:
        options, context = self.options, self.context
        context.declined.update(dict.fromkeys(options.declines, DECLINED))
        moved = ""
        if options.moved_epochs:
            context.epochs_added[options.train_pass] = (
                context.epochs_added.get(options.train_pass, 0) + options.moved_epochs
            )
            moved = f"; {options.train_pass} trains QAT's {options.moved_epochs} epochs as well"
        context.notes.append(Note(
            INT8_NOT_FASTER,
            f"probe_int8: {timing}: int8 is not faster here, so {', '.join(options.declines)} are skipped "
            f"and the fp32 graph ships{moved}",
            **measured, declined=options.declines, moved_epochs=options.moved_epochs,
            train_pass=options.train_pass,
        ))  # fmt: skip
