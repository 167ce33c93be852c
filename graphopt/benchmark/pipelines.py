"""What a benchmark runs through ``optimize``: a target preset, optionally with pruning and early exit.

Written on the command line as ``TARGET[+prune=R][+sparsify=S][+early-exit][+labels-only]``, for example
``x86-int8``, ``x86-int8+prune=0.5``, ``x86-int8+sparsify=0.8`` or ``generic-fp32+early-exit``.
``+labels-only`` fine-tunes (recovery and QAT) on the labels alone, with no teacher: the ablation that
measures what distillation adds at the same training budget.
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
        for option, value in (("prune", self.prune), ("sparsify", self.sparsify)):
            if not 0.0 <= value < 1.0:
                raise ConfigError(f"{option} must be a fraction in [0, 1), got {value} in {self.label!r}")

    @property
    def spec(self) -> Target:
        return resolve_target(self.target)

    @property
    def quantized(self) -> bool:
        return any(p.name == "calibrate" for p in self.spec.passes)

    @property
    def label(self) -> str:
        parts = [self.spec.name]
        if self.prune:
            parts.append(f"prune={self.prune:g}")
        if self.sparsify:
            parts.append(f"sparsify={self.sparsify:g}")
        parts += [flag for flag, field in FLAGS.items() if getattr(self, field)]
        return "+".join(parts)

    @property
    def without_exits(self) -> Pipeline:
        """The same pipeline without early exits: what an exit model's latency is compared with."""
        return replace(self, early_exit=False)


#: The value-less options of a pipeline label and the Pipeline field each one sets.
EARLY_EXIT_FLAG = "early-exit"
FLAGS = {EARLY_EXIT_FLAG: "early_exit", "labels-only": "labels_only"}


def without_exits_label(label: str) -> str:
    """A pipeline label without its ``+early-exit`` token: the label of :attr:`Pipeline.without_exits`
    (labels list their options in one order), found without parsing the label, since a custom Target's
    name is no preset."""
    return "+".join(part for part in label.split("+") if part != EARLY_EXIT_FLAG)


USAGE = "TARGET[+prune=R][+sparsify=S][+early-exit][+labels-only]"


def parse_pipeline(text: str) -> Pipeline:
    """``TARGET[+prune=R][+sparsify=S][+early-exit][+labels-only]`` as a :class:`Pipeline`."""
    target, *options = text.strip().split("+")
    fractions = {token: BENCH_TOKENS[token].default for token in BENCH_TOKENS}
    flags: dict[str, bool] = {}
    for option in options:
        key, _, value = option.partition("=")
        if key in fractions and value:
            try:
                fractions[key] = float(value)  # the range is checked with the whole label in the message
            except ValueError:
                raise ConfigError(f"{key}= needs a fraction like 0.5, got {value!r} in {text!r}") from None
        elif key in FLAGS and not value:
            flags[FLAGS[key]] = True
        else:
            raise ConfigError(
                f"unknown pipeline option {option!r} in {text!r}; write {USAGE}, e.g. x86-int8+prune=0.5"
            )
    return Pipeline(target=target, **fractions, **flags)
