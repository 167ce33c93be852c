"""Buy int8 accuracy back while keeping the bits: equalize, correct biases, learn the rounding.

Runs after ``calibrate`` and before ``accuracy_budget`` (which buys accuracy with fp32 layers, giving away
the speed int8 was for, so it comes last). Each step of :attr:`ImproveInt8Options.steps` is tried on a copy
of the graph and kept only when it raises the score; the run stops once the int8 graph is within the budget:

- ``equalize`` (cross-layer equalization) changes the fp32 weights, so it rebuilds: the graph that entered
  quantization (:func:`~graphopt.quant.float_twin.float_twin`, unrounded) is equalized (exact: checked
  numerically like every exact pass), quantized again with the same schemes layer by layer, and calibrated;
- ``sequential_mse``, ``bias_correction`` and ``adaround`` change the frozen int8 graph itself and run on a
  copy of it.

The score: with held-out labelled data (``eval_data``) the accuracy in percent, and the budget test is
``acc(fp32 graph that entered quantization) - acc(int8) <= budget_pp`` (the same drop ``accuracy_budget``
measures); without it, the output SQNR against that fp32 graph on the calibration inputs,
``10 log10(sum y^2 / sum (y - y_q)^2)`` dB, and every step is tried (a budget in points cannot be checked
without labels). A step whose pass is not registered, or that fails, is reported as not kept with why.

The report's ``improve_int8`` table has one row per step: the score before and after, kept or not, seconds.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

import torch
import torch.fx as fx

from graphopt.data.batches import as_input_tuple
from graphopt.errors import ConfigError, GraphoptError
from graphopt.ir.graph import deep_copy
from graphopt.passes.equalize import EqualizeOptions
from graphopt.pipeline.pass_base import Pass, PassContext, PassOptions, PassResult
from graphopt.pipeline.pass_manager import PassManager, PassRecord
from graphopt.pipeline.registry import list_passes, make_pass
from graphopt.quant.float_twin import float_twin
from graphopt.quant.modules import ActivationQuantizer, QuantizedLayer
from graphopt.quant.options import InsertFakeQuantOptions
from graphopt.quant.scheme import sqnr_db
from graphopt.reporting.evaluation import accuracy
from graphopt.reporting.notes import Note
from graphopt.reporting.numerics import flatten_outputs

#: Note keys (graphopt.reporting.notes).
RESULT = "improve_int8:result"
NOT_APPLIED = "improve_int8:not_applied"

#: Steps of these slots rewrite the fp32 graph (equalize): the int8 graph is rebuilt from their result.
REBUILDING_SLOTS = frozenset({"cleanup", "int8_layout"})
#: Calibration inputs scored when there are no labels (the first ones: the same for every step).
SCORE_BATCHES = 16


@dataclass(frozen=True)
class ImproveInt8Options(PassOptions):
    """``budget_pp``: stop once the int8 graph is within this many points of its fp32 graph (needs
    ``eval_data``; None: try every step); ``steps``: registered pass names, ``(name, options)`` pairs or
    Pass instances, tried in this order. Equalization twice: exact first, then with ReLU6 replaced by ReLU
    (lossy in fp32, DFQ's choice: what lets a MobileNet's ReLU6 pairs equalize; it starts again from the
    graph that entered quantization and is kept only if it scores higher still). The sequential MSE
    range search before AdaRound: it sets the scales, AdaRound learns the rounding on them. AdaRound
    before bias correction: a bias corrected for nearest rounding is wrong once the rounding is learned,
    while a correction measured after AdaRound sees the integers that ship."""

    budget_pp: float | None = None
    steps: tuple[str | tuple[str, PassOptions] | Pass, ...] = (
        "equalize",
        ("equalize", EqualizeOptions(relu6="replace_with_relu")),
        "sequential_mse",
        "adaround",
        "bias_correction",
    )

    def __post_init__(self) -> None:
        if self.budget_pp is not None and not 0 <= self.budget_pp < 100:
            raise ConfigError(f"budget_pp must be in [0, 100) percentage points, got {self.budget_pp}")
        if isinstance(self.steps, str) or not all(_is_step(s) for s in self.steps):
            raise ConfigError(
                f"steps must be a tuple of pass names, (name, options) pairs or Pass instances, got "
                f"{self.steps!r}"
            )


def _is_step(spec: object) -> bool:
    if isinstance(spec, tuple):
        return len(spec) == 2 and isinstance(spec[0], str) and isinstance(spec[1], PassOptions)
    return isinstance(spec, (str, Pass))


def step_label(spec: str | tuple[str, PassOptions] | Pass) -> str:
    """A step's name in the table, with the options it sets away from their defaults:
    ``equalize (relu6='replace_with_relu')``."""
    if isinstance(spec, str):
        return spec
    name, options = spec if isinstance(spec, tuple) else (spec.name, spec.options)
    changed = [
        f"{f.name}={getattr(options, f.name)!r}"
        for f in dataclasses.fields(options)
        if f.default is not dataclasses.MISSING and getattr(options, f.name) != f.default
    ]
    return f"{name} ({', '.join(changed)})" if changed else name


@dataclass
class _Scorer:
    """Scores a graph: accuracy on labelled data, or output SQNR against ``reference`` logits."""

    labelled: list | None
    inputs: list[tuple[torch.Tensor, ...]]
    reference: torch.Tensor | None = None

    @property
    def unit(self) -> str:
        return "% accuracy" if self.labelled else "dB output SQNR"

    def __call__(self, gm: torch.nn.Module) -> float:
        if self.labelled:
            return 100 * accuracy(gm, self.labelled)
        assert self.reference is not None
        return sqnr_db(self.reference, _logits(gm, self.inputs))


class ImproveInt8(Pass):
    name = "improve_int8"
    slot = "int8_budget"
    description = "Equalize, correct biases, learn rounding: each step kept only if int8 accuracy improves."
    exact = False
    Options = ImproveInt8Options
    needs = ("calibration_data",)

    def call(self, gm: fx.GraphModule) -> PassResult:
        layers = [m for m in gm.modules() if isinstance(m, QuantizedLayer) and m.frozen]
        calibration = self.context.calibration_data
        if not layers or not calibration:
            why = "no int8 layer" if not layers else "no calibration_data"
            self.context.notes.append(Note(NOT_APPLIED, f"improve_int8: not applied ({why})", why=why))
            return PassResult(gm, modified=False, stats={f"skipped:{why.replace(' ', '_')}": 1})
        entering = float_twin(gm, unrounded=True)
        scorer = _Scorer(self.context.eval_data, [as_input_tuple(b) for b in calibration[:SCORE_BATCHES]])
        if not scorer.labelled:
            scorer.reference = _logits(entering, scorer.inputs)
        fp32_score = scorer(entering)
        current, score = gm, scorer(gm)
        first = score
        rows: list[dict[str, object]] = []
        for spec in self.options.steps:
            step = step_label(spec)
            if self._within_budget(fp32_score, score, scorer):
                rows.append(_row(step, score, None, False, 0.0, "already within the budget"))
                continue
            start = time.perf_counter()
            candidate, why = self._try(spec, current, entering)
            seconds = time.perf_counter() - start
            after = scorer(candidate) if candidate is not None else None
            kept = after is not None and after > score
            if after is not None and not kept:
                why = f"did not improve the score ({after:.3f} <= {score:.3f} {scorer.unit})"
            rows.append(_row(step, score, after, kept, seconds, why))
            if kept:
                assert candidate is not None and after is not None
                current, score = candidate, after
        kept_steps = tuple(str(r["step"]) for r in rows if r["kept"])
        if current is not gm:
            _replace_in_place(gm, current)
        self.context.tables["improve_int8"] = rows
        self._note(kept_steps, fp32_score, score, scorer)
        stats = {
            "steps_kept": len(kept_steps),
            "score_before": round(first, 3),
            "score_after": round(score, 3),
        }
        return PassResult(gm, modified=bool(kept_steps), stats=stats)

    def _within_budget(self, fp32_score: float, score: float, scorer: _Scorer) -> bool:
        budget = self.options.budget_pp
        return budget is not None and bool(scorer.labelled) and fp32_score - score <= budget

    def _try(
        self, spec: str | tuple[str, PassOptions] | Pass, current: fx.GraphModule, entering: fx.GraphModule
    ) -> tuple[fx.GraphModule | None, str]:
        """The graph after ``spec`` (None and why when it could not run)."""
        name, options = spec if isinstance(spec, tuple) else (spec, None)
        if isinstance(name, str) and name not in list_passes():
            return None, f"no pass named {name!r} is registered"
        step = make_pass(name, options)
        try:
            if step.slot in REBUILDING_SLOTS:
                return self._rebuilt(step, current, entering), ""
            candidate = deep_copy(current)
            (record,) = self._run([step], candidate)
            if not record.modified:  # say why it did nothing: its skipped:* stats (e.g. per-group scales)
                return None, _did_nothing(record.stats)
            return candidate, ""
        except GraphoptError as exc:
            return None, f"failed: {exc}"

    def _rebuilt(self, step: Pass, current: fx.GraphModule, entering: fx.GraphModule) -> fx.GraphModule:
        """``entering`` through ``step`` (checked numerically when exact), then quantized as ``current``
        is, layer by layer, and calibrated."""
        candidate = deep_copy(entering)
        self._run([step], candidate, checked=True)
        options = _quantization_options(current)
        self._run([make_pass("insert_fake_quant", options)], candidate)
        schemes = {name: m.scheme for name, m in current.named_modules() if isinstance(m, QuantizedLayer)}
        for name, layer in candidate.named_modules():
            if isinstance(layer, QuantizedLayer) and name in schemes:
                layer.scheme = schemes[name]  # per-layer bit widths survive the rebuild
        self._run([make_pass("calibrate")], candidate)
        return candidate

    def _run(self, passes: list[Pass], gm: fx.GraphModule, *, checked: bool = False) -> list[PassRecord]:
        """``passes`` on ``gm`` with the run's data and services and a state of their own, whose tables and
        notes become this pass's (prefixed by the step); their records."""
        context = PassContext.of(self.context.session)
        records = PassManager(passes, instruments=None if checked else []).run(gm, context)
        self.context.mark_read(context.data_read)
        for name, table in context.tables.items():
            if name != "int8":
                self.context.tables[f"improve_int8.{name}"] = table
        return records

    def _note(self, kept: tuple[str, ...], fp32_score: float, score: float, scorer: _Scorer) -> None:
        gap = fp32_score - score
        text = (
            f"improve_int8: kept {', '.join(kept) or 'no step'}; int8 now {score:.3f} {scorer.unit} "
            f"({gap:.3f} below the fp32 graph that entered quantization)"
        )
        self.context.notes.append(
            Note(
                RESULT,
                text,
                kept=kept,
                score=round(score, 4),
                fp32_score=round(fp32_score, 4),
                unit=scorer.unit,
            )
        )


def _row(
    step: str, before: float, after: float | None, kept: bool, seconds: float, why: str
) -> dict[str, object]:
    return {
        "step": step,
        "before": round(before, 3),
        "after": None if after is None else round(after, 3),
        "kept": kept,
        "seconds": round(seconds, 2),
        "why": why,
    }


def _quantization_options(gm: fx.GraphModule) -> InsertFakeQuantOptions:
    """The options ``gm`` was quantized with, read back from its first activation quantizer."""
    quantizer = next(m for m in gm.modules() if isinstance(m, ActivationQuantizer))
    return InsertFakeQuantOptions(scheme=quantizer.scheme, observer=quantizer.observer_config)


def _logits(model: torch.nn.Module, inputs: list[tuple[torch.Tensor, ...]]) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([flatten_outputs(model(*x))[0].reshape(len(x[0]), -1) for x in inputs])


def _replace_in_place(gm: fx.GraphModule, source: fx.GraphModule) -> None:
    """Make ``gm`` compute what ``source`` computes (a pass mutates the graph module it was given): its
    submodules, parameters and buffers become ``source``'s, then its graph."""
    for name in [*dict(gm.named_children()), *dict(gm.named_parameters(recurse=False))]:
        delattr(gm, name)
    for name in dict(gm.named_buffers(recurse=False)):
        delattr(gm, name)
    for name, child in source.named_children():
        gm.add_submodule(name, child)
    for name, param in source.named_parameters(recurse=False):
        gm.register_parameter(name, param)
    for name, tensor in source.named_buffers(recurse=False):
        gm.register_buffer(name, tensor)
    gm.graph = source.graph  # ``source`` is a discarded copy: its graph moves over
    gm.recompile()


def _did_nothing(stats: dict[str, float]) -> str:
    """Why a step left the graph as it was: its ``skipped:*`` counts, when it kept any."""
    skipped = [
        f"{key.removeprefix('skipped:')} {value:g}"
        for key, value in stats.items()
        if key.startswith("skipped:")
    ]
    return "changed nothing" + (f" (skipped: {', '.join(skipped)})" if skipped else "")
