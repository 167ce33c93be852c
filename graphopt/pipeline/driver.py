"""The driver: one :class:`OptimizeCall` checked, captured, run through its plan, and reported.

    model ──copy, eval──▶ capture (torch.fx, opaque leaves if needed) ──PassManager──▶ OptimizeResult

The caller's model is never touched: graphopt works on a deep copy in eval mode. ``graphopt.optimize`` (the
facade, :mod:`graphopt.api`) builds a call and runs it here, or hands it to the search, which runs every
candidate here too; the search imports this module, never the facade.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from graphopt.artifacts.result import OptimizeResult
from graphopt.call_options import plan_keywords
from graphopt.data.batches import Batch
from graphopt.data.dims import DynamicDims
from graphopt.data.run_data import RunData, read_run_data
from graphopt.early_exit.config import EarlyExitConfig
from graphopt.early_exit.guard import exit_guard_samples
from graphopt.errors import CaptureError, InvalidInputError
from graphopt.frontend.capture import capture
from graphopt.frontend.inputs import (
    bake_parametrizations,
    check_example_inputs,
    check_model,
    input_names,
    private_eval_copy,
    run_reference,
)
from graphopt.ir.graph import deep_copy
from graphopt.ir.shapes import propagate_shapes
from graphopt.passes.insert_early_exit import check_classifier_output
from graphopt.passes.prune_channels import check_protected_names
from graphopt.passes.sparsify import SparsifyConfig
from graphopt.pipeline.instruments import Instrument, IRDump, NumericCheck, ProgressLog
from graphopt.pipeline.pass_base import Pass, PassContext
from graphopt.pipeline.pass_manager import PassManager, PassRecord
from graphopt.pipeline.plan import INT8_SLOTS, Plan, make_plan, plan_options
from graphopt.pipeline.services import TimingService, TrainingService
from graphopt.pipeline.session import Services, Session
from graphopt.pipeline.snapshots import structural_copy
from graphopt.pipeline.stage_cache import RunParts, StageCache
from graphopt.pipeline.stage_reporter import StageReporter
from graphopt.pruning.config import PruneConfig
from graphopt.quant.float_twin import float_twin, has_int8_layers
from graphopt.quant.options import WeightQuant
from graphopt.recovery.config import RecoveryConfig
from graphopt.reporting.notes import Note
from graphopt.reporting.numerics import Tolerance, allclose, flatten_outputs
from graphopt.reporting.report import Report
from graphopt.targets import Target, resolve_target

log = logging.getLogger("graphopt")

#: Capture must reproduce the model exactly (it only re-expresses the same ops as a graph).
CAPTURE_TOLERANCE = Tolerance(rtol=1e-5, atol=1e-6)

#: Note keys (graphopt.reporting.notes) of the run-level notes the driver writes; capture's own reasons
#: are keyed in graphopt.frontend.capture (FX_LEFT_LEAVES ...), with the fact ``method`` added here.
DATA_UNUSED = "data:unused"
FP32_KEEPS_QAT = "latency_guard:fp32_keeps_qat"
PARAMETRIZATIONS_BAKED = "capture:parametrizations_baked"


@dataclass(frozen=True)
class OptimizeCall:
    """Everything one :func:`optimize` call was given; a search varies its plan options
    (:func:`dataclasses.replace`) and runs each variant with :func:`run_call`."""

    model: nn.Module
    target: str | Target = "generic-fp32"
    example_inputs: tuple[torch.Tensor, ...] | None = None
    calibration_data: Iterable[Any] | None = None
    train_data: Iterable[Any] | None = None
    prune: float | PruneConfig = 0.0
    early_exit: EarlyExitConfig | None = None
    passes: Sequence[str | Pass] | None = None
    eval_data: Iterable[Batch] | None = None
    steps: int = 1
    dump_ir: str | Path | None = None
    instruments: tuple[Instrument, ...] = ()
    recovery: RecoveryConfig | None = None
    accuracy_budget: float | None = None
    sparsify: float | SparsifyConfig = 0.0
    validation_data: Iterable[Batch] | None = None
    dynamic_shapes: Mapping[str | int, Mapping[int, str]] | Sequence[Mapping[int, str]] | None = None
    weights: int | WeightQuant | None = None
    #: Where passes time candidates in the target's runtime (``probe_int8``, runtime-costed exits); None:
    #: :class:`~graphopt.pipeline.services.RuntimeTiming`. Not an ``optimize`` option: a driver's (tests hand
    #: a fake).
    timing: TimingService | None = None
    #: Where passes train (recovery, QAT, sparsity, exit heads); None:
    #: :class:`~graphopt.pipeline.services.InProcessTraining`. A driver's option too, like ``timing``.
    training: TrainingService | None = None


@dataclass(frozen=True)
class CacheScope:
    """A :class:`StageCache` and the name of the model, data and target it is shared under."""

    cache: StageCache
    scope: str


def plan_of(call: OptimizeCall) -> Plan:
    """What ``call`` will run, slot by slot (:mod:`graphopt.pipeline.plan`), checked, before anything runs."""
    options = plan_options(**plan_keywords(vars(call)))
    if options.prune is not None:
        check_protected_names(options.prune.protect, call.model)
    return make_plan(resolve_target(call.target), options)


def run_call(call: OptimizeCall, cached: CacheScope | None = None) -> OptimizeResult:
    """One plan on one model (the :func:`optimize` contract); with ``cached``, plans sharing a prefix of
    lossy passes with an earlier run resume from its state (:mod:`graphopt.pipeline.stage_cache`)."""
    check_model(call.model)
    inputs = check_example_inputs(call.example_inputs)
    dynamic = dynamic_dims(call.dynamic_shapes, call.model, inputs)
    spec = resolve_target(call.target)
    plan = plan_of(call)
    original = private_eval_copy(call.model)
    reference = run_reference(original, inputs)
    if call.early_exit is not None:
        check_classifier_output(reference)
    _check_needs(plan.passes(), spec, calibration_data=call.calibration_data, train_data=call.train_data,
                 eval_data=call.eval_data)  # fmt: skip
    session = Session(spec, read_call_data(call, inputs, dynamic, reference), original, _services(call))
    context = PassContext.of(session)
    gm, report = _capture_checked(call.model, inputs, reference, dynamic, spec.name)
    reporter = StageReporter(report, reference, context.eval_data)
    snapshot = Fp32Snapshot()
    try:  # a failed pass must not leave the memory sampler's thread running behind the exception
        report.add(reporter.measure("original", "original", gm, context))
        stateful = [i for i in call.instruments if hasattr(i, "state") and hasattr(i, "restore")]
        gm = _run_plan(call, plan, gm, reporter, RunParts(report, context, snapshot, stateful), cached)
    finally:
        reporter.memory.close()
    report.notes.extend(context.notes)
    report.tables.update(context.tables)
    report.notes.extend(
        Note(DATA_UNUSED, f"{name} was given but no pass read it", name=name)
        for name in context.unused_data()
    )
    if snapshot.trained_after:
        report.notes.append(Note(
            FP32_KEEPS_QAT,
            "the latency guard's fp32 alternative is the QAT-trained graph without its quantizers "
            "(dequantized int8 weights): a fall-back to fp32 keeps what QAT trained",
        ))  # fmt: skip
    return OptimizeResult(
        model=gm, report=report, target=spec, example_inputs=inputs, reference_outputs=reference,
        original=original, eval_data=context.eval_data, fp32_model=snapshot.model, dynamic=dynamic, plan=plan,
        guard_samples=exit_guard_samples(gm, context),
    )  # fmt: skip


def _run_plan(
    call: OptimizeCall,
    plan: Plan,
    gm: fx.GraphModule,
    reporter: StageReporter,
    parts: RunParts,
    cached: CacheScope | None,
) -> fx.GraphModule:
    """The plan's passes through the PassManager, after what a cached run resumes from."""
    hooks: list[Instrument] = [NumericCheck(), ProgressLog(), reporter, parts.snapshot, *call.instruments]
    if call.dump_ir is not None:
        hooks.append(IRDump(call.dump_ir))
    passes = plan.passes()
    done = 0
    if cached is not None:
        gm, done = cached.cache.resume(cached.scope, passes, parts, gm)
        hooks.append(cached.cache.recorder(cached.scope, passes, parts, done))  # last: after the row
    PassManager(passes[done:], steps=call.steps, instruments=hooks).run(gm, parts.context)
    return gm


def dynamic_dims(spec: object, model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> DynamicDims:
    """``dynamic_shapes`` read and checked against the example inputs before any work: the inputs and dims
    it names exist, its names are usable symbols, and the example can be traced with them dynamic (what
    the model's code does with them is checked at capture: :mod:`graphopt.frontend.capture_export`)."""
    dynamic = DynamicDims.of(spec, input_names(model, len(inputs)), len(inputs))
    dynamic.check_example(inputs)
    return dynamic


def read_call_data(
    call: OptimizeCall, inputs: tuple[torch.Tensor, ...], dynamic: DynamicDims, reference: Any
) -> RunData:
    """Every dataset the call gave, read and checked once, up front (bad data fails before any pass runs);
    labels must index the classes of the model's first output (its logits)."""
    logits = flatten_outputs(reference)
    data = read_run_data(
        inputs, dynamic, calibration_data=call.calibration_data, train_data=call.train_data,
        validation_data=call.validation_data, eval_data=call.eval_data,
        num_classes=logits[0].shape[-1] if logits else None,
    )  # fmt: skip
    if call.early_exit is not None and data.train is not None and not data.train.has_labels:
        raise InvalidInputError(
            "early_exit trains exit heads on labels, and train_data has none (inputs only): give "
            "(inputs, labels) batches, or drop early_exit"
        )
    return data


def _services(call: OptimizeCall) -> Services:
    """The call's services: those it hands (a test's fakes), the defaults for the rest."""
    defaults = Services()
    return Services(call.timing or defaults.timing, call.training or defaults.training)


def _capture_checked(
    model: nn.Module, inputs: tuple[torch.Tensor, ...], reference: Any, dynamic: DynamicDims, target: str
) -> tuple[fx.GraphModule, Report]:
    """Capture a private copy of ``model``, check the graph reproduces it, and start the report."""
    working = private_eval_copy(model)
    baked = bake_parametrizations(working)
    started = time.perf_counter()
    captured = capture(working, inputs, dynamic)
    seconds = time.perf_counter() - started
    gm = captured.gm
    for parameter in gm.parameters():  # graphopt's own copy: its training stages may update every weight,
        parameter.requires_grad_(True)  # whatever the caller froze in the model it handed over
    _check_capture(gm, inputs, reference)
    report = Report(model=type(model).__name__, target=target, leaves=dict(captured.leaves),
                    capture=captured.method, capture_seconds=round(seconds, 3))  # fmt: skip
    if captured.why:
        report.notes.append(_capture_note(captured.method, captured.why))
    if baked:
        report.notes.append(Note(
            PARAMETRIZATIONS_BAKED,
            f"parametrized weights baked into plain tensors ({', '.join(baked)}): same outputs; training "
            "stages train the weights themselves",
            tensors=tuple(baked),
        ))  # fmt: skip
    return gm, report


def _capture_note(method: str, why: str) -> str:
    """Which capture built the IR and why, under the key of the reason (:data:`Capture.why
    <graphopt.frontend.capture.Capture>`: ``capture:fx_left_leaves`` ...) with its facts and ``method``."""
    text = f"capture: {method}, because {why}"
    return Note(why.key, text, **{**why.facts, "method": method}) if isinstance(why, Note) else text


#: What each kind of data a pass may need is, for the message that asks for it (the form its reader in
#: graphopt.data checks).
_NEEDED_FORM = {
    "calibration_data": "an iterable of input batches (tensors or tuples of tensors) shaped like "
    "example_inputs; about 100 samples is typical",
    "train_data": "an iterable of (inputs, labels) pairs: inputs a tensor or tuple of tensors shaped like "
    "example_inputs, labels a 1-D int64 tensor of class ids, one per sample",
    "validation_data": "an iterable of held-out (inputs, labels) pairs, shaped like train_data's",
}


def _check_needs(pipeline: list[Pass], target: Target, **given: object) -> None:
    for p in pipeline:
        for need in p.needs:
            if need == "eval_data" and given.get(need) is None:
                raise InvalidInputError(
                    f"pass {p.name!r} needs eval_data=...: held-out labelled batches (inputs, labels) to "
                    "measure accuracy on"
                )
            options = need.split("|")  # "a|b": either one
            if all(given.get(name) is None for name in options):
                forms = [_NEEDED_FORM.get(name, _NEEDED_FORM["calibration_data"]) for name in options]
                wanted = (
                    f"{need}=...: {forms[0]}"
                    if len(options) == 1
                    else " or ".join(
                        f"{name}=... ({form})" for name, form in zip(options, forms, strict=True)
                    )
                )
                raise InvalidInputError(f"pass {p.name!r} of target {target.name} needs {wanted}")


#: Slots whose passes replace layers and parameters and never write into a tensor in place (checked pass by
#: pass: space_to_depth, insert_fake_quant, calibrate, quantize_dynamic, accuracy_budget): the fp32 snapshot
#: may share its tensors with the graph while only they run.
SHARING_SLOTS = (*INT8_SLOTS, "int8_budget")


class Fp32Snapshot:
    """Keeps a copy of the graph just before the int8 part of the plan (its :data:`INT8_SLOTS`: layout
    rewrites made for int8 kernels included): the fp32 model the latency guard compares with. A training
    stage on the int8 graph (QAT) moves the weights past that copy, so it is then replaced by the trained
    graph's fp32 twin (:func:`~graphopt.quant.float_twin.float_twin`): a fall-back keeps the training.

    The copy shares its tensors with the graph (:func:`~graphopt.pipeline.snapshots.structural_copy`), so it
    costs no weight bytes (a full copy was one more model in memory through every int8 export): the passes
    of :data:`SHARING_SLOTS` replace layers and parameters rather than write into them. Before any other
    pass (training, exits' joint fine-tuning, a custom pass) writes weights in place, the copy is made
    private (copy on write); training on the int8 graph then replaces it anyway."""

    def __init__(self) -> None:
        self.model: fx.GraphModule | None = None
        self.trained_after = False
        self.shared = False  # whether ``model`` still shares its tensors with the graph

    def before_pass(self, pass_: Pass, gm: fx.GraphModule, context: PassContext) -> None:
        if self.model is None and pass_.slot in INT8_SLOTS and pass_.name not in context.declined:
            self.model, self.shared = structural_copy(gm), True
        elif self.shared and pass_.slot not in SHARING_SLOTS:
            self.model, self.shared = deep_copy(self.model), False

    def after_pass(self, pass_: Pass, gm: fx.GraphModule, context: PassContext, record: PassRecord) -> None:
        trained_int8 = pass_.slot == "training" and record.modified and has_int8_layers(gm)
        if self.model is not None and trained_int8:
            self.model, self.trained_after, self.shared = float_twin(gm), True, False


def _check_capture(gm: fx.GraphModule, inputs: tuple[torch.Tensor, ...], reference: Any) -> None:
    try:
        captured = propagate_shapes(gm, inputs)
    except (
        Exception
    ) as exc:  # the traced graph fails where the eager model ran: a capture bug, not the user's
        raise CaptureError(
            f"the captured graph fails on the example inputs: {type(exc).__name__}: {exc}"
        ) from exc
    ok, max_abs = allclose(reference, captured, CAPTURE_TOLERANCE)
    if not ok:
        raise CaptureError(
            f"the captured graph disagrees with the model (max abs error {max_abs:.3g}); the model's "
            "forward probably depends on Python state that tracing froze. Make that submodule a leaf or "
            "remove the state."
        )
