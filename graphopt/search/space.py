"""The search space: one :class:`SearchPoint` per combination of the plan slots a search may set.

    prune ratio x importance x int8 (off / on / improved / on with per-layer fp32 fall-backs)
        x int8 weight bits (each width; with a size goal, each narrow width mixed with 8) x early exits
        x backend

Points are ordered so that shared stages are computed once and cheap decisions come first: grouped by
pruning (ratio ascending, then importance: the pruned-and-recovered model is the start of its fp32, int8 and
exit variants), within a group fp32, int8, int8 with fall-backs, then each with exits (exits reuse the
finished backbone). Before anything runs, :func:`bound` rules out points that cannot meet a goal whatever
their accuracy, from estimates that err on the generous side:

    speed-up <= 1 / (1 - r)^2  x  (4 if int8)  x  (1 / first exit fraction if exits)
    bytes    >= params x (1 - r)^2 x (b / 8 bytes for int8 with b-bit weights, else 4)

(pruning a fraction ``r`` of the channels of a layer whose inputs are pruned too leaves ``(1 - r)^2`` of its
MACs and weights; int8 kernels do at most 4x the fp32 MACs per cycle on these CPUs; a sample leaving at the
first exit costs at least that exit's fraction of the backbone).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

from graphopt.early_exit.config import EarlyExitConfig
from graphopt.errors import ConfigError
from graphopt.pruning.config import Importance
from graphopt.quant.scheme import INT4_BITS
from graphopt.reporting.numerics import finite_number

if TYPE_CHECKING:
    from graphopt.search.engine import SearchResult

Int8Mode = Literal["off", "on", "improved", "fallbacks"]
#: The int8 modes a search tries unless told: ``improved`` is asked for (AdaRound costs tens of seconds).
DEFAULT_INT8_MODES: tuple[Int8Mode, ...] = ("off", "on", "fallbacks")
#: The int8 modes in search order, and how a point's label names each (``{int8}``: int8 or WbA8).
INT8_MODE_LABELS = {
    "off": "fp32", "on": "{int8}", "improved": "{int8} improved", "fallbacks": "{int8}+fp32 fall-backs",
}  # fmt: skip
TieBreak = Literal["speed", "accuracy", "size"]

#: The most int8 kernels gain over fp32 per MAC on the CPUs graphopt targets (VNNI: 4 int8 MACs per lane).
INT8_CEILING = 4.0


@dataclass(frozen=True)
class SearchConfig:
    """What a goal-driven ``optimize`` may try, and for how long.

    ``int8`` modes apply to int8 targets (``"fallbacks"`` keeps the layers most sensitive to int8 in fp32
    within half the accuracy goal, and needs an accuracy goal; a dynamic int8 target falls back by its own
    cosine threshold instead, goal or not); fp32 targets try ``"off"`` only. ``exits``
    needs ``train_data`` (heads train) and labelled ``validation_data`` (thresholds); ``early_exit`` is the
    configuration exit candidates use. ``backends`` defaults to the target's. ``max_candidates`` and
    ``max_minutes`` stop the search (a candidate is not started when the time left is less than the mean
    candidate so far). ``reuse``: the :class:`SearchResult` of an earlier search on the same model and data,
    whose stages and measured candidates this one reuses. ``tie_break``: among candidates meeting every
    goal, the fastest (``"speed"``), the most accurate or the smallest wins; the other two break ties.
    ``weight_bits``: the widths (2..8) int8 points store their conv / linear weights in (``(8, 4)`` tries
    W4A8 beside int8: a size goal is what it is for); the caller's ``weights=`` otherwise.
    """

    prune_ratios: tuple[float, ...] = (0.0, 0.25, 0.5, 0.7)
    importances: tuple[str, ...] = ("l2",)
    int8: tuple[Int8Mode, ...] = DEFAULT_INT8_MODES
    weight_bits: tuple[int, ...] = (8,)
    exits: tuple[bool, ...] = (False, True)
    early_exit: EarlyExitConfig | None = None
    backends: tuple[str, ...] | None = None
    max_candidates: int = 24
    max_minutes: float = 20.0
    tie_break: TieBreak = "speed"
    #: A folder where measured candidates are kept, so that a rerun or a wider search (another process,
    #: the command line) does not measure them again (:mod:`graphopt.search.store`).
    cache_dir: str | Path | None = None
    #: Share of validation_data on which candidates tune (exit thresholds, fall-backs); scored on the rest.
    tune_share: float = 0.5
    quiet: bool = False
    reuse: SearchResult | None = field(default=None, compare=False, repr=False)
    #: Where candidates are built: None, this process; ``"local:N"``, a Dask cluster of N worker processes
    #: started here; ``"tcp://host:port"``, a running Dask scheduler joined (:mod:`graphopt.search.cluster`).
    cluster: str | None = None

    def __post_init__(self) -> None:
        # sequences are kept as tuples: a list would make the frozen config unhashable, a string would be
        # iterated character by character
        ratios = _choices(self, "prune_ratios", "(0.0, 0.5)")
        for r in ratios:
            if finite_number(r) is None or not 0 <= r < 1:
                raise ConfigError(
                    f"SearchConfig.prune_ratios must be fractions in [0, 1), e.g. (0.0, 0.5); got {r!r} "
                    "(the share of channels removed: 0.5 removes half)"
                )
        object.__setattr__(self, "prune_ratios", tuple(float(r) for r in ratios))
        _choices(self, "importances", "('l2', 'l1')", get_args(Importance))
        _choices(self, "int8", "('off', 'on')", get_args(Int8Mode))
        _choices(self, "exits", "(False, True)", (False, True), kind=bool)
        _choices(self, "weight_bits", "(8, 4)", tuple(range(2, 9)), kind=int)
        if self.backends is not None:
            from graphopt.backends import BACKENDS  # on use: the backends import torch and onnx

            _choices(self, "backends", "('onnx',)", tuple(BACKENDS))
        if self.early_exit is not None and not isinstance(self.early_exit, EarlyExitConfig):
            raise ConfigError("SearchConfig.early_exit must be a graphopt.EarlyExitConfig or None")
        count = self.max_candidates
        if not isinstance(count, int) or isinstance(count, bool) or count < 1:
            raise ConfigError(
                f"SearchConfig.max_candidates must be a whole number >= 1, e.g. 24; got {count!r}"
            )
        minutes = finite_number(self.max_minutes)
        if minutes is None or minutes <= 0:
            raise ConfigError(
                f"SearchConfig.max_minutes must be a finite number of minutes > 0, e.g. 20.0; "
                f"got {self.max_minutes!r}"
            )
        if self.tie_break not in get_args(TieBreak):
            raise ConfigError(
                f"SearchConfig.tie_break is 'speed', 'accuracy' or 'size'; got {self.tie_break!r}"
            )
        _check_cache_dir(self.cache_dir)
        share = finite_number(self.tune_share)
        if share is None or not 0 < share < 1:
            raise ConfigError(
                f"SearchConfig.tune_share must be a fraction in (0, 1), e.g. 0.5; got {self.tune_share!r}"
            )
        if not isinstance(self.quiet, bool):
            raise ConfigError(f"SearchConfig.quiet must be True or False, got {self.quiet!r}")
        _check_reuse(self.reuse)
        if self.cluster is not None:
            from graphopt.search.cluster import ClusterSpec

            ClusterSpec.parse(self.cluster)


def _choices(
    config: SearchConfig, name: str, example: str, allowed: tuple[Any, ...] | None = None, kind: type = object
) -> tuple[Any, ...]:
    """``config.<name>`` as a non-empty tuple of allowed values (stored back as a tuple), or a ConfigError."""
    value = getattr(config, name)
    what = f"SearchConfig.{name} must be a non-empty tuple"
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise ConfigError(f"{what}, e.g. {name}={example}; got {value!r}")
    if not value:
        raise ConfigError(f"{what}: an empty one leaves nothing to search; e.g. {name}={example}")
    for item in value:
        if allowed is not None and (not isinstance(item, kind) or item not in allowed):
            known = ", ".join(repr(a) for a in allowed)
            raise ConfigError(f"SearchConfig.{name}: {item!r} is not one of {known}; e.g. {name}={example}")
    object.__setattr__(config, name, tuple(value))
    return tuple(value)


def _check_cache_dir(folder: object) -> None:
    if folder is None or (isinstance(folder, os.PathLike) and str(folder)):
        return
    if not isinstance(folder, str) or not folder.strip():
        raise ConfigError(
            f"SearchConfig.cache_dir must be a folder path (str or pathlib.Path), e.g. "
            f"cache_dir='search-cache', or None; got {folder!r}"
        )


def _check_reuse(reuse: object) -> None:
    if reuse is None:
        return
    from graphopt.search.engine import SearchResult  # on use: the engine imports the API, which imports this

    if not isinstance(reuse, SearchResult):
        raise ConfigError(
            f"SearchConfig.reuse must be the .search of an earlier search's result (res.search), or None; "
            f"got {type(reuse).__name__}"
        )


@dataclass(frozen=True)
class SearchPoint:
    """One plan the search can run."""

    prune: float = 0.0
    importance: str = "l2"
    int8: Int8Mode = "off"
    exits: bool = False
    backend: str = "onnx"
    weight_bits: int = 8  # of an int8 point's weights (W4A8 at 4); 8 for fp32 points
    #: Layers at ``weight_bits`` only as far as a size goal needs, the rest at 8 (search/byte_budget.py)
    mixed: bool = False

    @property
    def label(self) -> str:
        parts = [f"prune={self.prune:g}" + (f"/{self.importance}" if self.prune else "")]
        int8 = "int8" if self.weight_bits == 8 else f"W{self.weight_bits}A8"
        if self.mixed:
            int8 = f"W{self.weight_bits}/W8 mixed"
        parts.append(INT8_MODE_LABELS[self.int8].format(int8=int8))
        if self.exits:
            parts.append("exits")
        return " ".join(parts) + f" [{self.backend}]"

    def speedup_ceiling(self, first_exit_fraction: float) -> float:
        ceiling = 1.0 / (1.0 - self.prune) ** 2
        if self.int8 != "off":
            ceiling *= INT8_CEILING
        if self.exits:
            ceiling /= first_exit_fraction
        return ceiling

    def bytes_floor(self, params: int) -> float:
        return params * (1.0 - self.prune) ** 2 * (self.weight_bits / 8 if self.int8 != "off" else 4)


@dataclass(frozen=True)
class SpaceLimits:
    """What the call allows: int8 only on int8 targets, exits only with the data they need."""

    int8_target: bool
    can_exit: bool
    #: An accuracy goal to give fall-backs a budget, or a target that falls back by itself.
    can_fall_back: bool
    #: A target that calibrates static int8, which the accuracy driver works on.
    can_improve: bool
    backends: tuple[str, ...]
    #: A size goal: mixed 8 / narrow widths are tried where ``weight_bits`` has both.
    size_goal: bool = False


def enumerate_points(config: SearchConfig, limits: SpaceLimits) -> list[SearchPoint]:
    """Every point of the space the call allows, in search order (module docstring)."""
    int8_modes = [m for m in INT8_MODE_LABELS if m in config.int8]
    if not limits.int8_target:
        int8_modes = ["off"]
    if not limits.can_fall_back:
        int8_modes = [m for m in int8_modes if m != "fallbacks"]
    if not limits.can_improve:
        int8_modes = [m for m in int8_modes if m != "improved"]
    exits = [e for e in (False, True) if e in config.exits and (limits.can_exit or not e)]
    points = []
    for ratio in sorted(set(config.prune_ratios)):
        importances = config.importances if ratio > 0 else config.importances[:1]
        for importance, with_exits, mode, backend in itertools.product(
            importances, exits, int8_modes, limits.backends
        ):
            for bits, mixed in _widths(config, limits) if mode != "off" else ((8, False),):
                points.append(SearchPoint(ratio, importance, mode, with_exits, backend, bits, mixed))  # type: ignore[arg-type]
    return points


def _widths(config: SearchConfig, limits: SpaceLimits) -> list[tuple[int, bool]]:
    """``(bits, mixed)`` of an int8 point: each width of ``weight_bits``, and with a size goal and 8 among
    them, each width the file stores narrower (2..4 bits) mixed with 8 (graphopt/search/byte_budget.py)."""
    widths = [(bits, False) for bits in config.weight_bits]
    if limits.size_goal and 8 in config.weight_bits:  # 5..7 bits are stored as int8: nothing to allocate
        widths += [(bits, True) for bits in config.weight_bits if bits <= INT4_BITS]
    return widths
