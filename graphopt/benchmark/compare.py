"""Do two benchmark runs agree? Every speed-up ratio of every row present in both, side by side.

The relative difference of a ratio is ``|a - b| / b``; two runs reproduce when every relative difference is
within the tolerance (5 % by default). Latencies themselves move with the machine's load; ratios measured
in one interleaved run should not.
"""

from __future__ import annotations

from dataclasses import dataclass

from .schema import REFERENCES, BenchResult

RATIOS = tuple(REFERENCES)


@dataclass(frozen=True)
class RatioDifference:
    row: str
    ratio: str
    first: float
    second: float

    @property
    def relative(self) -> float:
        return abs(self.first - self.second) / abs(self.second)


@dataclass(frozen=True)
class Comparison:
    differences: list[RatioDifference]
    tolerance: float
    only_in_one: list[str]
    steal: tuple[float | None, float | None] = (None, None)  # CPU steal while each run timed

    @property
    def worst(self) -> RatioDifference | None:
        return max(self.differences, key=lambda d: d.relative, default=None)

    @property
    def ok(self) -> bool:
        return bool(self.differences) and all(d.relative <= self.tolerance for d in self.differences)

    def summary(self) -> str:
        lines = [f"{'row':60s} {'ratio':20s} {'first':>8s} {'second':>8s} {'diff':>7s}"]
        for d in sorted(self.differences, key=lambda d: -d.relative):
            flag = "" if d.relative <= self.tolerance else "  <- over tolerance"
            lines.append(f"{d.row:60s} {d.ratio:20s} {d.first:8.3f} {d.second:8.3f} {d.relative:7.1%}{flag}")
        worst = self.worst
        verdict = "no common ratios" if worst is None else (
            f"{len(self.differences)} ratios, worst {worst.relative:.1%} ({worst.row}, {worst.ratio}): "
            + ("within" if self.ok else "NOT within") + f" {self.tolerance:.0%}"
        )  # fmt: skip
        lines.append(verdict)
        lines += [f"only in one run (not compared): {key}" for key in self.only_in_one]
        if any(share is not None for share in self.steal):
            shares = " / ".join("unknown" if v is None else f"{v:.1%}" for v in self.steal)
            lines.append(f"CPU steal while timing (first / second): {shares}")
        return "\n".join(lines)


def compare_results(first: BenchResult, second: BenchResult, tolerance: float = 0.05) -> Comparison:
    rows_a = {r.key: r for r in first.rows}
    rows_b = {r.key: r for r in second.rows}
    differences = []
    for key in rows_a.keys() & rows_b.keys():
        for ratio in RATIOS:
            a, b = getattr(rows_a[key], ratio), getattr(rows_b[key], ratio)
            if a is not None and b is not None and (a, b) != (1.0, 1.0):
                differences.append(RatioDifference(key, ratio, a, b))
    only = sorted(rows_a.keys() ^ rows_b.keys())
    steal = (first.machine.get("steal_during_timing"), second.machine.get("steal_during_timing"))
    return Comparison(sorted(differences, key=lambda d: (d.row, d.ratio)), tolerance, only, steal)
