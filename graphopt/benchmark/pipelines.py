"""What a benchmark runs through ``optimize``: a target preset, optionally with pruning and early exit.

Written on the command line as ``TARGET[+prune=R][+early-exit]``, for example ``x86-int8``,
``x86-int8+prune=0.5`` or ``generic-fp32+early-exit``.
"""

from __future__ import annotations

from dataclasses import dataclass

from graphopt.errors import ConfigError
from graphopt.targets import TARGETS, Target, resolve_target


@dataclass(frozen=True)
class Pipeline:
    target: str
    prune: float = 0.0
    early_exit: bool = False

    def __post_init__(self) -> None:
        resolve_target(self.target)  # unknown names fail here, with the known ones listed
        if not 0.0 <= self.prune < 1.0:
            raise ConfigError(f"prune must be a fraction in [0, 1), got {self.prune} in {self.label!r}")

    @property
    def spec(self) -> Target:
        return TARGETS[self.target]

    @property
    def quantized(self) -> bool:
        return any(p.name == "calibrate" for p in self.spec.passes)

    @property
    def label(self) -> str:
        parts = [self.target]
        if self.prune:
            parts.append(f"prune={self.prune:g}")
        if self.early_exit:
            parts.append("early-exit")
        return "+".join(parts)


def parse_pipeline(text: str) -> Pipeline:
    """``TARGET[+prune=R][+early-exit]`` as a :class:`Pipeline`."""
    target, *options = text.strip().split("+")
    prune, early_exit = 0.0, False
    for option in options:
        key, _, value = option.partition("=")
        if key == "prune" and value:
            try:
                prune = float(value)
            except ValueError:
                raise ConfigError(f"prune= needs a fraction like 0.5, got {value!r} in {text!r}") from None
        elif key == "early-exit" and not value:
            early_exit = True
        else:
            raise ConfigError(
                f"unknown pipeline option {option!r} in {text!r}; write TARGET[+prune=R][+early-exit], "
                "e.g. x86-int8+prune=0.5"
            )
    return Pipeline(target=target, prune=prune, early_exit=early_exit)
