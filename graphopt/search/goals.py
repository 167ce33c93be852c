"""What the user needs, as numbers: ``Goals(min_speedup=3, max_accuracy_drop=0.5, max_bytes=2_000_000)``.

Each goal is a row of :data:`GOAL_METRICS`: the metric it reads from a measured candidate, the direction
that is better, how its gap is normalised, and how the command line spells it (``--goal speedup>=3``,
``--goal accuracy-drop<=0.5``, ``--goal size<=2MB``). A candidate meets a goal when

    speedup  = ORT fp32 latency of the original / the candidate's latency     >= min_speedup
    drop     = accuracy of the original - the candidate's (pp, validation)     <= max_accuracy_drop
    bytes    = size of the candidate's artifact file                           <= max_bytes
    cosine   = mean over validation samples of cos(candidate output, original)  >= min_cosine

and misses it by ``gap``: how far the value is from the limit, in the metric's unit; ``relative_gap`` is
that gap over the limit (over 1 pp for the accuracy drop, whose limit may be 0; over the headroom
``1 - limit`` for the cosine, where 0.98 against 0.99 is as far off as 0.90 against 0.95), so misses of
different goals can be added up to find the closest candidate when none meets every goal.

The cosine goal needs no labels: ``validation_data`` may be the model's inputs alone (a sentence encoder's
``(input_ids, attention_mask)`` batches), and it measures how faithful the candidate is to the original
(each sample's output flattened to one vector).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from graphopt.errors import ConfigError
from graphopt.reporting.numerics import finite_number


@dataclass(frozen=True)
class GoalMetric:
    field: str  # the Goals field
    metric: str  # the candidate measurement it limits
    cli: str  # how --goal names it
    op: str  # ">=" (at least) or "<="  (at most)
    unit: str
    scale_floor: float  # the gap is divided by max(limit, this) to compare misses across goals
    example: str  # a --goal that reads well in a message
    #: The gap is divided by ``max(1 - limit, scale_floor)`` instead: a metric bounded by 1 (a cosine).
    headroom: bool = False

    def scale(self, limit: float) -> float:
        return max(1 - limit if self.headroom else abs(limit), self.scale_floor)


GOAL_METRICS: tuple[GoalMetric, ...] = (
    GoalMetric("min_speedup", "speedup", "speedup", ">=", "x", 1.0, "speedup>=3"),
    GoalMetric("max_accuracy_drop", "accuracy_drop", "accuracy-drop", "<=", "pp", 1.0, "accuracy-drop<=0.5"),
    GoalMetric("max_bytes", "bytes", "size", "<=", "B", 1.0, "size<=2MB"),
    GoalMetric("min_cosine", "cosine", "cosine", ">=", "", 1e-3, "cosine>=0.95", headroom=True),
)

#: The largest size goal: the most bytes a file can have (a larger limit leaves size free: use None).
MAX_FILE_BYTES = 2**63 - 1

_SIZE_UNITS = {"": 1, "b": 1, "kb": 1000, "mb": 1000**2, "gb": 1000**3, "kib": 1024, "mib": 1024**2}


@dataclass(frozen=True)
class Miss:
    """A goal a candidate does not meet, and by how much."""

    goal: GoalMetric
    value: float
    limit: float

    @property
    def gap(self) -> float:
        return self.limit - self.value if self.goal.op == ">=" else self.value - self.limit

    @property
    def relative_gap(self) -> float:
        return self.gap / self.goal.scale(self.limit)

    def __str__(self) -> str:
        return (
            f"{self.goal.cli} {_fmt(self.value, self.goal.unit)} misses {self.goal.op} "
            f"{_fmt(self.limit, self.goal.unit)} by {_fmt(self.gap, self.goal.unit)}"
        )


@dataclass(frozen=True)
class Goals:
    """Requirements on the returned artifact; ``None`` leaves a metric free (module docstring)."""

    min_speedup: float | None = None
    max_accuracy_drop: float | None = None
    max_bytes: int | None = None
    min_cosine: float | None = None

    def __post_init__(self) -> None:
        speedup = _finite_or_none(self, "min_speedup", "min_speedup=3.0 for 3x")
        if speedup is not None and speedup <= 0:
            raise ConfigError(f"Goals.min_speedup must be > 0, e.g. min_speedup=3.0 for 3x; got {speedup}")
        drop = _finite_or_none(self, "max_accuracy_drop", "max_accuracy_drop=0.5 for 0.5 pp")
        if drop is not None and not 0 <= drop <= 100:
            raise ConfigError(
                f"Goals.max_accuracy_drop is in percentage points of accuracy, in [0, 100], e.g. "
                f"max_accuracy_drop=0.5 for 0.5 pp; got {drop}"
            )
        _check_bytes(self)
        cosine = _finite_or_none(self, "min_cosine", "min_cosine=0.95")
        if cosine is not None and not 0 < cosine <= 1:
            raise ConfigError(
                f"Goals.min_cosine is the mean cosine of the candidate's outputs to the original's, in "
                f"(0, 1], e.g. min_cosine=0.95; got {cosine}"
            )

    def active(self) -> list[tuple[GoalMetric, float]]:
        return [(g, getattr(self, g.field)) for g in GOAL_METRICS if getattr(self, g.field) is not None]

    @property
    def needs_accuracy(self) -> bool:
        return self.max_accuracy_drop is not None

    @property
    def needs_validation(self) -> bool:
        """Whether a goal is scored on validation data (labelled for accuracy; inputs do for the cosine)."""
        return self.needs_accuracy or self.min_cosine is not None

    def misses(self, measured: dict[str, float | None]) -> list[Miss]:
        """The goals ``measured`` (metric name -> value) does not meet; an unmeasured metric misses by the
        whole limit."""
        out = []
        for goal, limit in self.active():
            value = measured.get(goal.metric)
            if value is None:
                value = 0.0 if goal.op == ">=" else float("inf")
            ok = value >= limit if goal.op == ">=" else value <= limit
            if not ok:
                out.append(Miss(goal, float(value), float(limit)))
        return out

    def __str__(self) -> str:
        parts = [f"{g.cli} {g.op} {_fmt(limit, g.unit)}" for g, limit in self.active()]
        return ", ".join(parts) if parts else "no goals"


def _finite_or_none(goals: Goals, name: str, example: str) -> float | None:
    """``goals.<name>`` as a finite float (None stays None); else a ConfigError naming the field."""
    value = getattr(goals, name)
    if value is None:
        return None
    number = finite_number(value)  # an int past float's range: no candidate is measured against it
    if number is None:
        raise ConfigError(
            f"Goals.{name} must be a finite number or None, e.g. {example}; got {_short(value)}"
        )
    return number


def _check_bytes(goals: Goals) -> None:
    """A whole number of bytes a file can have; a float holding one (2e6) is taken as that int."""
    value = goals.max_bytes
    if value is None:
        return
    if isinstance(value, float) and math.isfinite(value) and value == int(value):
        value = int(value)
        object.__setattr__(goals, "max_bytes", value)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 < value <= MAX_FILE_BYTES:
        raise ConfigError(
            f"Goals.max_bytes must be a whole number of bytes in [1, 2**63 - 1], e.g. max_bytes=2_000_000 "
            f"for 2 MB, or None to leave size free; got {_short(value)}"
        )


def parse_goals(texts: list[str]) -> Goals:
    """``["speedup>=3", "accuracy-drop<=0.5", "size<=2MB"]`` as :class:`Goals` (the ``--goal`` syntax)."""
    values: dict[str, float] = {}
    for text in texts:
        goal, limit = _parse_one(text)
        if goal.field in values:
            raise ConfigError(f"--goal {goal.cli} is given twice; give each goal once")
        values[goal.field] = limit
    if "max_bytes" in values:
        values["max_bytes"] = int(values["max_bytes"])
    return Goals(**values)  # type: ignore[arg-type]


def _parse_one(text: str) -> tuple[GoalMetric, float]:
    known = ", ".join(f"{g.cli}{g.op}N" for g in GOAL_METRICS)
    if not isinstance(text, str):
        raise ConfigError(f"a goal is a string like 'speedup>=3'; got {_short(text)}; the goals are: {known}")
    match = re.fullmatch(r"\s*([a-z-]+)\s*(>=|<=)\s*([0-9.]+)\s*([a-zA-Z]*)\s*", text)
    if match is None:
        raise ConfigError(f"--goal {text!r} is not NAME>=N or NAME<=N; the goals are: {known}")
    name, op, number, unit = match.groups()
    goal = next((g for g in GOAL_METRICS if g.cli == name), None)
    if goal is None:
        raise ConfigError(f"--goal {text!r}: unknown goal {name!r}; the goals are: {known}")
    if op != goal.op:
        raise ConfigError(f"--goal {text!r}: {name} is a bound {goal.op} N (e.g. {goal.cli}{goal.op}3)")
    factor = _unit_factor(goal, unit, text)
    try:
        limit = float(number) * factor
    except ValueError:
        raise ConfigError(f"--goal {_short(text)}: {_short(number)} is not a number") from None
    if not math.isfinite(limit) or (goal.unit == "B" and limit > MAX_FILE_BYTES):
        raise ConfigError(
            f"--goal {_short(text)}: the limit is too large to be a goal (e.g. {goal.example}); "
            "leave the goal out to leave that metric free"
        )
    return goal, limit


def _unit_factor(goal: GoalMetric, unit: str, text: str) -> float:
    if goal.unit == "B":
        if unit.lower() not in _SIZE_UNITS:
            raise ConfigError(f"--goal {text!r}: size unit must be one of B, kB, MB, GB, KiB, MiB")
        return _SIZE_UNITS[unit.lower()]
    if unit.lower() not in ("", goal.unit):
        raise ConfigError(f"--goal {text!r}: {goal.cli} is in {goal.unit}, got unit {unit!r}")
    return 1.0


def _short(value: object) -> str:
    """``repr(value)`` cut short: a 400-digit number in a message helps nobody."""
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:37]}..."


def _fmt(value: float, unit: str) -> str:
    if unit == "B":
        return f"{value / 1e6:.3g} MB" if abs(value) >= 1e5 else f"{value / 1e3:.3g} kB"
    if unit == "x":
        return f"{value:.2f}x"
    if not unit:
        return f"{value:.4f}"
    return f"{value:.2f} {unit}"
