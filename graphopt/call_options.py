"""The ``optimize()`` options that shape a plan, declared once: keyword, CLI flag, parser, default, help and
bench token. ``graphopt plan`` and ``graphopt optimize`` take the same flags from this table, the bench reads
its ``TARGET+prune=R`` tokens from it, and a test checks that ``optimize`` and ``plan_options`` take every
keyword it declares (their lists once drifted: ``graphopt plan`` took ``--prune``, ``--sparsify`` and
``--accuracy-budget``, ``graphopt optimize`` none of them).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from graphopt.model_spec import non_negative_float


def fraction(text: str) -> float:
    """An argparse ``type=`` for a share of channels or weights: a number in [0, 1)."""
    value = non_negative_float(text)
    if value >= 1:
        raise argparse.ArgumentTypeError(f"must be a fraction in [0, 1), e.g. 0.5; got {text!r}")
    return value


@dataclass(frozen=True)
class CallOption:
    name: str  # the optimize() keyword, and plan_options()'s
    flag: str  # on `graphopt plan` and `graphopt optimize`
    parse: Callable[[str], Any]
    default: Any
    help: str
    #: ``TARGET+<token>=<value>`` in a bench pipeline label; None: not a bench pipeline option.
    bench_token: str | None = None


CALL_OPTIONS = (
    CallOption("prune", "--prune", fraction, 0.0, "fraction of channels to prune (0: none)", "prune"),
    CallOption("sparsify", "--sparsify", fraction, 0.0, "fraction of weights to zero (0: none)", "sparsify"),
    CallOption(
        "accuracy_budget", "--accuracy-budget", non_negative_float, None,
        "percentage points int8 may cost; the most sensitive layers stay fp32 (needs labelled data)",
    ),
)  # fmt: skip

#: The bench's numeric pipeline tokens (``x86-int8+prune=0.5``), by token.
BENCH_TOKENS = {o.bench_token: o for o in CALL_OPTIONS if o.bench_token is not None}


def add_call_options(parser: argparse.ArgumentParser) -> None:
    for option in CALL_OPTIONS:
        parser.add_argument(option.flag, type=option.parse, default=option.default, help=option.help)


def call_options(args: argparse.Namespace) -> dict[str, Any]:
    """The parsed flags as ``optimize()`` / ``plan_options()`` keywords."""
    return {option.name: getattr(args, option.name) for option in CALL_OPTIONS}
