"""The search table: one row per candidate, its goals met or missed, and the Pareto front.

A measured row is *dominated* when another measured row has at least its speed-up, at least as accurate (on
validation data: its accuracy drop, or without labels ``1 - cosine`` to the original's outputs) and at most
as large, and strictly better in one of the three; the rows nobody dominates
are the Pareto front. The returned artifact is, among rows meeting every goal, the best by the tie-break
(``speed``: highest speed-up, then smallest drop, then fewest bytes; ``accuracy`` and ``size`` put their
metric first); when no row meets every goal, the row whose misses add up to the least, each miss measured
relative to its limit (:attr:`~graphopt.search.goals.Miss.relative_gap`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from graphopt.search.goals import Goals, Miss
from graphopt.search.measure import Measured
from graphopt.search.space import SearchPoint, TieBreak

#: ``CandidateRow.ran_on`` of a candidate built by the search's own process.
IN_PROCESS = "this process"


@dataclass
class CandidateRow:
    point: SearchPoint
    status: str  # measured | reused | cached | duplicate | ruled out | failed | not run
    why: str = ""
    measured: Measured | None = None
    accuracy_drop: float | None = None  # pp on validation data, against the original
    test_drop: float | None = None  # pp on test data: reported, never used to choose
    seconds: float = 0.0
    misses: list[Miss] = field(default_factory=list)
    dominated: bool = False
    chosen: bool = False
    #: Where it was built: this process, or a cluster worker's address (with the retry after a lost worker).
    ran_on: str = IN_PROCESS

    @property
    def has_measurement(self) -> bool:
        return self.measured is not None

    def metrics(self) -> dict[str, float | None]:
        m = self.measured
        if m is None:
            return {}
        return {
            "speedup": m.speedup,
            "accuracy_drop": self.accuracy_drop,
            "bytes": float(m.bytes),
            "cosine": m.cosine,
        }

    @property
    def quality_loss(self) -> float:
        """What the candidate lost to the original: the accuracy drop (pp) where there are labels, else
        ``1 - cosine`` of its outputs to the original's, else 0 (nothing measured it)."""
        m = self.measured
        if self.accuracy_drop is not None:
            return self.accuracy_drop
        return 1.0 - m.cosine if m is not None and m.cosine is not None else 0.0

    def as_dict(self) -> dict[str, object]:
        m = self.measured
        row: dict[str, object] = {
            "candidate": self.point.label,
            "status": self.status,
            "latency_ms": None if m is None else round(m.latency_ms, 4),
            "speedup": None if m is None else round(m.speedup, 2),
            # measured against ORT fp32, or a cost model's ESTIMATE against the unpruned int8 original
            "latency_basis": None if m is None else m.latency_basis,
            "bytes": None if m is None else m.bytes,
            "macs": None if m is None else m.macs,
            "accuracy": None if m is None or m.accuracy is None else round(m.accuracy, 2),
            "drop_pp": self.accuracy_drop,
            "test_accuracy": None if m is None or m.test_accuracy is None else round(m.test_accuracy, 2),
            "test_drop_pp": self.test_drop,
            "cosine": None if m is None or m.cosine is None else round(m.cosine, 5),
            "shipped": None if m is None else ("fp32" if m.shipped_fp32 else self._numeric()),
            "goals": self._verdict(),
            "pareto": None if m is None else not self.dominated,
            "chosen": self.chosen,
            "seconds": round(self.seconds, 1),
            "ran_on": self.ran_on,
        }
        return row

    def _numeric(self) -> str:
        return "fp32" if self.point.int8 == "off" else "int8"

    def _verdict(self) -> str:
        if self.measured is None:
            return f"{self.status}: {self.why}" if self.why else self.status
        return "met" if not self.misses else "; ".join(str(m) for m in self.misses)


def judge(rows: list[CandidateRow], goals: Goals) -> None:
    """Fill in each measured row's misses and whether another row dominates it."""
    measured = [r for r in rows if r.has_measurement]
    for row in measured:
        row.misses = goals.misses(row.metrics())
    for row in measured:
        row.dominated = any(_dominates(other, row) for other in measured if other is not row)


def choose(rows: list[CandidateRow], tie_break: TieBreak) -> CandidateRow | None:
    """The row to return (module docstring), or None when nothing was measured."""
    measured = [r for r in rows if r.has_measurement]
    if not measured:
        return None
    meeting = [r for r in measured if not r.misses]
    if meeting:
        best = min(meeting, key=lambda r: _rank(r, tie_break))
    else:
        best = min(measured, key=lambda r: (sum(m.relative_gap for m in r.misses), _rank(r, tie_break)))
    best.chosen = True
    return best


def _rank(row: CandidateRow, tie_break: TieBreak) -> tuple[float, ...]:
    m = row.measured
    assert m is not None
    keys = {
        "speed": -round(m.speedup, 2),
        "accuracy": row.quality_loss,
        "size": float(m.bytes),
    }
    order = [tie_break, *(k for k in ("speed", "accuracy", "size") if k != tie_break)]
    return tuple(keys[k] for k in order)


def _dominates(a: CandidateRow, b: CandidateRow) -> bool:
    ma, mb = a.measured, b.measured
    assert ma is not None and mb is not None
    acc_a, acc_b = -a.quality_loss, -b.quality_loss
    # speed-ups, not milliseconds: each is a ratio from its own side-by-side timing with the original
    better_or_equal = ma.speedup >= mb.speedup and acc_a >= acc_b and ma.bytes <= mb.bytes
    strictly = ma.speedup > mb.speedup or acc_a > acc_b or ma.bytes < mb.bytes
    return better_or_equal and strictly
