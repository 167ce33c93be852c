"""What a benchmark runs through ``optimize``: a target preset, optionally with pruning and early exit.

Written on the command line as ``TARGET[+prune=R][+sparsify=S][+early-exit][+labels-only]``, for example
``x86-int8``, ``x86-int8+prune=0.5``, ``x86-int8+sparsify=0.8`` or ``generic-fp32+early-exit``.
``+labels-only`` fine-tunes (recovery and QAT) on the labels alone, with no teacher: the ablation that
measures what distillation adds at the same training budget.

The ``optimize()`` options among the tokens (``prune=``, ``sparsify=``, ``early-exit``) are those with a
``bench_token`` in :mod:`graphopt.call_options`: a value token is a fraction, a switch token a flag; a
:class:`Pipeline` has a field of the option's name for each. ``labels-only`` is the bench's own.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from graphopt.call_options import BENCH_TOKENS
from graphopt.errors import ConfigError
from graphopt.targets import Target, resolve_target


@dataclass(frozen=True)
class Pipeline:
    target: str | Target  # a preset's name, or a Target (a custom one is no preset: it runs as given)
    prune: float = 0.0
    early_exit: bool = False
    sparsify: float = 0.0
    labels_only: bool = False  # recovery and QAT without the teacher (distillation's ablation)

    def __post_init__(self) -> None:
        resolve_target(self.target)  # unknown names fail here, with the known ones listed
        for option in VALUE_TOKENS.values():
            value = getattr(self, option.name)
            if not 0.0 <= value < 1.0:
                raise ConfigError(
                    f"{option.name} must be a fraction in [0, 1), got {value} in {self.label!r}"
                )

    @property
    def spec(self) -> Target:
        return resolve_target(self.target)

    @property
    def quantized(self) -> bool:
        return any(p.name == "calibrate" for p in self.spec.passes)

    @property
    def label(self) -> str:
        parts = [self.spec.name]
        values = {token: getattr(self, o.name) for token, o in VALUE_TOKENS.items()}
        parts += [f"{token}={value:g}" for token, value in values.items() if value]
        parts += [flag for flag, field in FLAGS.items() if getattr(self, field)]
        return "+".join(parts)

    @property
    def without_exits(self) -> Pipeline:
        """The same pipeline without early exits: what an exit model's latency is compared with."""
        return replace(self, early_exit=False)


#: The ``TOKEN=R`` options of a pipeline label: the ``optimize()`` options with a value bench token.
VALUE_TOKENS = {token: o for token, o in BENCH_TOKENS.items() if o.flag is None or not o.flag.switch}
#: The value-less options of a pipeline label and the Pipeline field each one sets: the ``optimize()``
#: switches with a bench token, then the bench's own.
FLAGS = {
    **{token: o.name for token, o in BENCH_TOKENS.items() if token not in VALUE_TOKENS},
    "labels-only": "labels_only",
}
EARLY_EXIT_FLAG = "early-exit"
assert FLAGS[EARLY_EXIT_FLAG] == "early_exit"  # the registry's token for early_exit


def without_exits_label(label: str) -> str:
    """A pipeline label without its ``+early-exit`` token: the label of :attr:`Pipeline.without_exits`
    (labels list their options in one order), found without parsing the label, since a custom Target's
    name is no preset."""
    return "+".join(part for part in label.split("+") if part != EARLY_EXIT_FLAG)


USAGE = "TARGET" + "".join(
    [*(f"[+{token}={o.flag.metavar if o.flag else 'R'}]" for token, o in VALUE_TOKENS.items()),
     *(f"[+{flag}]" for flag in FLAGS)]
)  # fmt: skip


def parse_pipeline(text: str) -> Pipeline:
    """:data:`USAGE` (``TARGET[+prune=R][+sparsify=S][+early-exit][+labels-only]``) as a
    :class:`Pipeline`."""
    target, *options = text.strip().split("+")
    fractions: dict[str, float] = {}
    flags: dict[str, bool] = {}
    for option in options:
        key, _, value = option.partition("=")
        if key in VALUE_TOKENS and value:
            try:  # the range is checked with the whole label in the message
                fractions[VALUE_TOKENS[key].name] = float(value)
            except ValueError:
                raise ConfigError(f"{key}= needs a fraction like 0.5, got {value!r} in {text!r}") from None
        elif key in FLAGS and not value:
            flags[FLAGS[key]] = True
        else:
            raise ConfigError(
                f"unknown pipeline option {option!r} in {text!r}; write {USAGE}, e.g. x86-int8+prune=0.5"
            )
    return Pipeline(target=target, **fractions, **flags)
