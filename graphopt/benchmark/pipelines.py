"""What a benchmark runs through ``optimize``: a target preset, optionally with pruning and early exit.

Written on the command line as ``TARGET[+prune=R][+sparsify=S][+early-exit]``, for example ``x86-int8``,
``x86-int8+prune=0.5``, ``x86-int8+sparsify=0.8`` or ``generic-fp32+early-exit``.
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
    sparsify: float = 0.0

    def __post_init__(self) -> None:
        resolve_target(self.target)  # unknown names fail here, with the known ones listed
        for option, value in (("prune", self.prune), ("sparsify", self.sparsify)):
            if not 0.0 <= value < 1.0:
                raise ConfigError(f"{option} must be a fraction in [0, 1), got {value} in {self.label!r}")

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
        if self.sparsify:
            parts.append(f"sparsify={self.sparsify:g}")
        if self.early_exit:
            parts.append("early-exit")
        return "+".join(parts)


def parse_pipeline(text: str) -> Pipeline:
    """``TARGET[+prune=R][+early-exit]`` as a :class:`Pipeline`."""
    target, *options = text.strip().split("+")
    fractions, early_exit = {"prune": 0.0, "sparsify": 0.0}, False
    for option in options:
        key, _, value = option.partition("=")
        if key in fractions and value:
            try:
                fractions[key] = float(value)
            except ValueError:
                raise ConfigError(f"{key}= needs a fraction like 0.5, got {value!r} in {text!r}") from None
        elif key == "early-exit" and not value:
            early_exit = True
        else:
            raise ConfigError(
                f"unknown pipeline option {option!r} in {text!r}; write "
                "TARGET[+prune=R][+sparsify=S][+early-exit], e.g. x86-int8+prune=0.5"
            )
    return Pipeline(target=target, early_exit=early_exit, **fractions)
