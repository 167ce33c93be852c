"""Every option of ``graphopt.optimize`` declared once: name, type, default, one doc line, how it shapes the
plan, its command-line flag and its bench token. Everything else derives from :data:`OPTIONS`:

- ``optimize()``'s docstring "Args" section (:func:`docstring_args`; the signature stays written out and a
  test holds it, and :class:`~graphopt.pipeline.driver.OptimizeCall`'s fields, to this table);
- the keywords of :class:`~graphopt.pipeline.driver.OptimizeCall` (:func:`call_keywords`) and of
  :func:`~graphopt.pipeline.plan.plan_options` (:func:`plan_keywords`);
- the flags of ``graphopt plan`` (the options that shape a plan) and ``graphopt optimize`` (every option
  with a flag, so every flag ``plan`` takes, ``optimize`` takes too) (:func:`add_option_flags`);
- the bench's pipeline tokens ``TARGET+prune=0.5+early-exit`` (:data:`BENCH_TOKENS`);
- ``docs/api.md``'s option table and ``graphopt options`` (:func:`options_table`).

Adding an option: a row here, the keyword in ``optimize``'s signature, a field of ``OptimizeCall`` (and a
``plan_options`` keyword and slot rule in :mod:`graphopt.pipeline.plan` when it shapes the plan), and
``graphopt options --markdown`` pasted into ``docs/api.md``; the tests name whichever is missing.

Only text becomes a flag, and only where the text is plain data (numbers, names): nothing given on the
command line is loaded as code or unpickled. Python objects (instruments, configs) have no flag.

This module imports no pipeline, pass or backend module (the facade, the planner and the CLI import it).
"""

from __future__ import annotations

import argparse
import re
import textwrap
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from graphopt.model_spec import non_negative_float, positive_int


def fraction(text: str) -> float:
    """An argparse ``type=`` for a share of channels or weights: a number in [0, 1)."""
    value = non_negative_float(text)
    if value >= 1:
        raise argparse.ArgumentTypeError(f"must be a fraction in [0, 1), e.g. 0.5; got {text!r}")
    return value


_PASS_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def pass_names(text: str) -> tuple[str, ...]:
    """An argparse ``type=`` for ``--passes``: comma-separated registered pass names (names only: a pass
    given on the command line is never imported from a module)."""
    names = tuple(part.strip() for part in text.split(","))
    if not all(_PASS_NAME.match(name) for name in names):
        raise argparse.ArgumentTypeError(
            f"must be comma-separated pass names like fold_batchnorm,eliminate_dead_code; got {text!r} "
            "(graphopt passes lists them)"
        )
    return names


def weight_bits(text: str) -> int:
    """An argparse ``type=`` for ``--weight-bits``: an integer from 2 to 8."""
    if not text.strip().isdigit() or not 2 <= int(text) <= 8:
        raise argparse.ArgumentTypeError(f"must be an integer from 2 to 8 (4: int4 weights); got {text!r}")
    return int(text)


def _same(value: Any) -> Any:
    return value


def _given(value: Any) -> bool:
    return value is not None


def _switched_on() -> bool:
    return True


def _default_early_exit() -> Any:
    from graphopt.early_exit.config import EarlyExitConfig  # lazy: this table imports no config module

    return EarlyExitConfig()


@dataclass(frozen=True)
class PlanRule:
    """How an option shapes the plan (:mod:`graphopt.pipeline.plan`)."""

    #: ``plan_options()``'s keyword; None: not a keyword (the target is ``make_plan``'s first argument).
    keyword: str | None
    #: The slot(s) it adds or fills (``plan.SLOT_ORDER``), as the docs say it.
    slot: str
    #: The ``optimize()`` value -> the keyword's value (``train_data`` -> ``has_train_data``).
    of: Callable[[Any], Any] = _same


@dataclass(frozen=True)
class Flag:
    """An option's form on ``graphopt plan`` / ``graphopt optimize``."""

    name: str  # "--prune"
    #: The text -> the ``optimize()`` value (an argparse ``type=``); None: a switch, no value.
    parse: Callable[[str], Any] | None = None
    metavar: str | None = None
    repeat: bool = False  # may be given several times: the value is the list
    #: A switch on ``graphopt optimize``: this piece of the named model's own data
    #: (:class:`~graphopt.benchmark.models.BenchModel` attribute); refused when the model has none.
    from_model: str | None = None
    #: A switch on ``graphopt plan`` (no model there): the value it stands for.
    planned: Callable[[], Any] = _switched_on

    @property
    def switch(self) -> bool:
        return self.parse is None


@dataclass(frozen=True)
class Option:
    """One ``optimize()`` keyword (module docstring)."""

    name: str
    type: str  # as the docs write it
    default: Any
    doc: str  # one line
    plan: PlanRule | None = None  # None: the plan does not depend on it
    flag: Flag | None = None  # None: no text form (Python objects, data)
    #: ``TARGET+<token>=<value>`` (a switch: ``TARGET+<token>``) in a bench pipeline label; None: none.
    bench_token: str | None = None
    #: The value as an ``OptimizeCall`` field; None: not a field (the facade hands it to the search).
    to_call: Callable[[Any], Any] | None = _same
    #: More for the docstring, where one line does not say enough (how it combines with other options).
    details: str = ""


OPTIONS: tuple[Option, ...] = (
    Option(
        "target", "str | Target", "generic-fp32",
        "a preset name (graphopt.TARGETS) or a graphopt.Target: its passes, numeric scheme and backend",
        plan=PlanRule(None, "every slot: the target's pipeline"),
        flag=Flag("--target", str, metavar="TARGET"),
    ),
    Option(
        "example_inputs", "tuple[Tensor, ...] | None", None,
        "input tensors for capture and shape propagation (the CLI: the model's own, or --input-shape)",
    ),
    Option(
        "calibration_data", "Iterable | None", None,
        "input batches (tensors or tuples) int8 calibration and BatchNorm re-estimation read; ~100 samples",
    ),
    Option(
        "train_data", "Iterable[(inputs, labels) | inputs] | None", None,
        "labelled batches, or inputs alone (distillation only): QAT, recovery, exit heads",
        plan=PlanRule("has_train_data", "training (QAT or recover); prune's recover", of=_given),
        flag=Flag("--train-data", from_model="train"),
        details="With ``train_data``, a training stage runs after the pipeline: ``qat`` (quantization-aware "
        "training) when it calibrates int8, else ``recover`` (distillation from the original model) when it "
        "has a lossy pass or ``recovery`` is given; unless the pipeline already names one of them. Inputs "
        "without labels train by distillation from the original alone (the student regresses its outputs); "
        "early exits need labels.",
    ),
    Option(
        "prune", "float | PruneConfig", 0.0, "fraction of prunable channels to remove (0: none), or a config",
        plan=PlanRule("prune", "prune"),
        flag=Flag("--prune", fraction, metavar="R"),
        bench_token="prune",
        details="A pruning stage first: structured channel pruning, BatchNorm re-estimation (on "
        "``calibration_data``, else the inputs of ``train_data``), and with ``train_data`` distillation "
        "recovery; quantization, if the target has it, follows.",
    ),
    Option(
        "early_exit", "EarlyExitConfig | None", None, "exit heads after early blocks (needs train_data)",
        plan=PlanRule("early_exit", "exits"),
        flag=Flag("--early-exit", from_model="early_exit", planned=_default_early_exit),
        bench_token="early-exit",
    ),
    Option(
        "passes", "Sequence[str | Pass] | None", None,
        "the pipeline instead of the target's: pass names, Pass objects",
        plan=PlanRule("passes", "every slot: replaces the target's pipeline"),
        flag=Flag("--passes", pass_names, metavar="NAME,NAME"),
    ),
    Option(
        "eval_data", "Iterable[(inputs, labels)] | None", None,
        "held-out labelled batches: an accuracy column in every report row",
    ),
    Option(
        "steps", "int", 1, "repeat the exact passes up to a fixed point, at most this many times",
        flag=Flag("--steps", positive_int, metavar="N"),
        details="Lossy passes (pruning, training, quantization) run once.",
    ),
    Option(
        "dump_ir", "str | Path | None", None, "write the IR after each pass to NNN_<pass>.txt in this folder",
        flag=Flag("--dump-ir", Path, metavar="DIR"),
    ),
    Option(
        "instruments", "Sequence[Instrument]", (), "before_pass / after_pass hooks, after graphopt's own",
        to_call=tuple,
    ),
    Option(
        "recovery", "RecoveryConfig | None", None, "how recover and QAT train (epochs, optimizer, distil)",
        plan=PlanRule("recovery", "prune, sparsify, training"),
    ),
    Option(
        "accuracy_budget", "float | None", None,
        "percentage points int8 may cost; the most sensitive layers stay fp32 (needs eval_data)",
        plan=PlanRule("accuracy_budget", "int8_budget"),
        flag=Flag("--accuracy-budget", non_negative_float, metavar="PP"),
        details="The drop is measured against the fp32 model that entered quantization (after pruning, the "
        "pruned one). Right after ``calibrate``, ``improve_int8`` tries equalization, AdaRound and bias "
        "correction, keeping each only if it helps, then ``accuracy_budget`` keeps layers in fp32 while the "
        "budget is missed; the report's ``improve_int8`` and ``accuracy_budget`` tables say what each did.",
    ),
    Option(
        "sparsify", "float | SparsifyConfig", 0.0, "fraction of weights to zero (0: none), or a config",
        plan=PlanRule("sparsify", "sparsify"),
        flag=Flag("--sparsify", fraction, metavar="S"),
        bench_token="sparsify",
        details="Zeroes the smallest-magnitude weights of every conv and linear just before quantization (or "
        "last), fine-tuning with the zeros held when ``train_data`` is given; later training keeps them "
        "zero. Latency does not change (dense kernels); the compressed artifact shrinks (``zipped_bytes``).",
    ),
    Option(
        "validation_data", "Iterable[(inputs, labels)] | None", None,
        "labelled batches the model was not trained on: exit thresholds, best-epoch choice, the search",
        details="Without it early exit holds out a share of ``train_data`` (the report warns the thresholds "
        "are then optimistic when the model was trained on those samples); with it recovery and QAT train "
        "on all of ``train_data`` and keep their best epoch by it.",
    ),
    Option(
        "dynamic_shapes", "Mapping | Sequence | None", None,
        'input dims that vary besides the batch, e.g. {"input_ids": {1: "seq"}}',
        details="Capture keeps them symbolic, the ONNX artifact declares them, and the artifact is checked "
        "at other sizes of each. Names are identifiers other than ``batch``; each named dim is at least 2 "
        "long in the example; a dim shared by several inputs is declared on each; one the model's code "
        "fixes is refused at capture with the fix.",
    ),
    Option(
        "weights", "int | WeightQuant | None", None,
        "weight bits (2..8) of a static int8 target's convs and linears, or a WeightQuant (per tensor/layer)",
        plan=PlanRule("weights", "int8: insert_fake_quant's scheme"),
        flag=Flag("--weight-bits", weight_bits, metavar="B"),
        details="Activations stay the target's 8 bits (``weights=4``: W4A8); 2..4-bit layers are stored as "
        "packed INT4 in the ONNX file (opset 21), other backends keep int8 storage and say so. "
        "``WeightQuant(per_channel=False)``: one scale per tensor; ``bits_by_layer={'conv1': 8}``: another "
        "width for named layers. Refused on fp32 and dynamic int8 targets (docs/int8.md).",
    ),
    Option(
        "goals", "Goals | None", None,
        "search for the best artifact that meets these (speed-up, accuracy, size)",
        flag=Flag("--goal", str, metavar="GOAL", repeat=True),
        to_call=None,
        details="``goals`` and/or ``search`` turn the call into a search over the plan slots (prune ratio, "
        "int8 with or without fp32 fall-backs, early exits, backend): every candidate is optimized, "
        "exported, timed and scored on ``validation_data``; ``res.search`` holds every candidate.",
    ),
    Option(
        "search", "SearchConfig | None", None, "the search's space and budget (CLI: the --search-* flags)",
        to_call=None,
    ),
)  # fmt: skip

OPTION = {option.name: option for option in OPTIONS}

#: The bench's pipeline tokens (``x86-int8+prune=0.5+early-exit``), by token.
BENCH_TOKENS = {o.bench_token: o for o in OPTIONS if o.bench_token is not None}

#: The options ``graphopt plan`` takes: those with a flag that shape the plan (a plan has no model or data).
PLAN_FLAGS = tuple(o for o in OPTIONS if o.flag is not None and o.plan is not None)
#: The options ``graphopt optimize`` takes: every one with a flag.
OPTIMIZE_FLAGS = tuple(o for o in OPTIONS if o.flag is not None)


# --- derived: the facade's and the planner's keywords --------------------------------------------------


def call_keywords(values: Mapping[str, Any]) -> dict[str, Any]:
    """``OptimizeCall``'s keywords from ``optimize()``'s (every option with a field)."""
    return {o.name: o.to_call(values[o.name]) for o in OPTIONS if o.to_call is not None}


def plan_keywords(values: Mapping[str, Any]) -> dict[str, Any]:
    """``plan_options()``'s keywords from a call's option values (absent ones: their defaults)."""
    return {
        o.plan.keyword: o.plan.of(values.get(o.name, o.default))
        for o in OPTIONS
        if o.plan is not None and o.plan.keyword is not None
    }


# --- derived: the command line ------------------------------------------------------------------------


def add_option_flags(
    parser: argparse.ArgumentParser, options: tuple[Option, ...], positional: tuple[str, ...] = ()
) -> None:
    """Each option's flag (``positional``: these as positional arguments, ``graphopt plan TARGET``). Flags
    default to None / False, "not given", so a command can tell what was asked (a search refuses what it
    chooses itself); :func:`flag_values` fills the defaults."""
    for option in options:
        flag = option.flag
        assert flag is not None, option.name
        help_text = option.doc.replace("%", "%%")
        if option.name in positional:
            parser.add_argument(option.name, type=flag.parse, metavar=flag.metavar, help=help_text)
        elif flag.switch:
            parser.add_argument(flag.name, dest=option.name, action="store_true", help=help_text)
        else:
            default = "" if option.default in (None, ()) else f" (default {option.default})"
            parser.add_argument(
                flag.name, dest=option.name, type=flag.parse, metavar=flag.metavar, default=None,
                action="append" if flag.repeat else "store", help=help_text + default,
            )  # fmt: skip


def given_flags(args: argparse.Namespace, options: tuple[Option, ...]) -> list[Option]:
    """The options whose flag was given on the command line."""
    return [o for o in options if _was_given(getattr(args, o.name, None))]


def flag_values(args: argparse.Namespace, options: tuple[Option, ...]) -> dict[str, Any]:
    """The parsed flags as ``optimize()`` keywords, defaults where not given. Switches stay ``True``: what
    they stand for depends on the command (:func:`planned_values`, or the model's data)."""
    values = {}
    for option in options:
        given = getattr(args, option.name)
        values[option.name] = given if _was_given(given) else option.default
    return values


def _was_given(parsed: object) -> bool:
    """A flag not given parses to None (a switch to False). By identity: ``--accuracy-budget 0`` parses to
    ``0.0``, which equals False but was given."""
    return parsed is not None and parsed is not False


def planned_values(values: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` with each given switch replaced by what it stands for on ``graphopt plan``."""
    return {
        name: OPTION[name].flag.planned() if value is True and _is_switch(name) else value  # type: ignore[union-attr]
        for name, value in values.items()
    }


def _is_switch(name: str) -> bool:
    flag = OPTION[name].flag
    return flag is not None and flag.switch


# --- derived: documentation -----------------------------------------------------------------------------


def docstring_args(indent: str = "    ") -> str:
    """``optimize()``'s "Args" entries, one per option, each with its type, default and doc line."""
    lines = []
    for o in OPTIONS:
        entry = f"{o.name} ({o.type}, default ``{o.default!r}``): {o.doc}. {o.details}"
        lines += textwrap.wrap(entry, 110, initial_indent=indent, subsequent_indent=indent + "    ")
    return "\n".join(lines)


def options_table(markdown: bool = False) -> str:
    """The registry as a table: name, type, default, flag, bench token, plan slot and doc line (``graphopt
    options``; with ``markdown``, the table of ``docs/api.md``)."""
    header = ("option", "type", "default", "flag", "bench", "plan", "doc")
    rows = [
        (o.name, o.type, repr(o.default), o.flag.name if o.flag else "-", o.bench_token or "-",
         o.plan.slot if o.plan else "-", o.doc)
        for o in OPTIONS
    ]  # fmt: skip
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(_code(cell, i) for i, cell in enumerate(row)) + " |" for row in rows]
        return "\n".join(lines)
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header) - 1)]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row[:-1], widths, strict=True)) + "  " + row[-1]
        for row in (header, *rows)
    )


def _code(cell: str, column: int) -> str:
    """Names, defaults, flags and tokens in code spans (``|`` escaped: it would split a Markdown cell)."""
    cell = cell.replace("|", "\\|")
    return cell if column >= 5 or cell == "-" else f"`{cell}`"
