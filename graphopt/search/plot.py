"""The search's Pareto plot: speed-up over ORT fp32 (on a cost-model backend such as Ethos-U: the ESTIMATED
speed-up over the unpruned original int8) against validation accuracy drop, one numbered point per
measured candidate, marker area proportional to the artifact's bytes; the front in blue, the returned
candidate starred, the goals drawn as dashed lines. A table beside the plot says what each number is (the
candidate, its speed-up, drops and size), so points close together stay readable (the numbers are placed
by :func:`graphopt.benchmark.plot.place_numbers`, which never overlaps two). Needs matplotlib
(``pip install 'graphopt[plot]'``)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from graphopt.benchmark.plot import (
    NumberedPoint,
    TableLine,
    finish_numbered_plot,
    pyplot,
    save_figure,
    table_figure,
)

if TYPE_CHECKING:
    from graphopt.search.engine import SearchResult
    from graphopt.search.rows import CandidateRow


#: What a caller without matplotlib can do instead of the plot, for the message (the CLI checks up front
#: with its own advice, --search-plot; an API caller has no flag to drop).
WITHOUT_PLOT = "skip the plot: the search's table is res.search.table()"

FRONT_COLOR = "tab:blue"
DOMINATED_COLOR = "gray"
CHOSEN_COLOR = "tab:red"
#: Marker area in points^2: the smallest artifact gets the base, the largest base + span.
AREA_BASE, AREA_SPAN = 30.0, 400.0


def plot_search(search: SearchResult, path: Path) -> Path:
    """Write the search's Pareto plot to ``path`` (PNG); return ``path``."""
    pyplot(instead=WITHOUT_PLOT)  # the advice for a caller without matplotlib, before any work
    return save_figure(search_figure(search), path)


def search_figure(search: SearchResult) -> Any:
    """The search's Pareto plot as a matplotlib figure (module docstring)."""
    plt = pyplot(instead=WITHOUT_PLOT)
    rows = [r for r in search.rows if r.measured is not None]
    handles = _legend_handles(search)
    legend_rows = math.ceil(len(handles) / 4)
    table = table_figure(plt, _table(search, rows), _footnote(search), legend_rows)
    ax = table.ax
    largest = max((r.measured.bytes for r in rows if r.measured), default=1)
    points = []
    for number, row in enumerate(rows, start=1):
        m = row.measured
        assert m is not None
        area = AREA_BASE + AREA_SPAN * m.bytes / largest
        color = DOMINATED_COLOR if row.dominated else FRONT_COLOR
        ax.scatter(m.speedup, _drop(row), s=area, alpha=0.6, color=color, zorder=3)
        radius = math.sqrt(area / math.pi)
        if row.chosen:
            ax.scatter(m.speedup, _drop(row), s=area, facecolors="none", edgecolors=CHOSEN_COLOR,
                       linewidths=2, zorder=4)  # fmt: skip
            ax.scatter(m.speedup, _drop(row), marker="*", s=120, color=CHOSEN_COLOR, zorder=5)
        points.append(NumberedPoint(number, m.speedup, _drop(row), CHOSEN_COLOR if row.chosen else color,
                                    radius + (2 if row.chosen else 0)))  # fmt: skip
    _draw_goals(ax, search)
    ax.margins(x=0.1, y=0.12)  # room for numbers beside the outermost points
    ax.set_xlabel(_speedup_label(rows))
    ax.set_ylabel("accuracy drop on validation data (pp; lower is better)")
    title = f"graphopt search: {len(rows)} candidates measured (marker area: artifact bytes)"
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    finish_numbered_plot(table, handles, points)
    return table.fig


def _speedup_label(rows: list[CandidateRow]) -> str:
    """What the x axis is: measured against ORT fp32, or a cost model's estimates (Ethos-U: Vela) against
    the unpruned original int8 compiled the same way; both where a search mixed them."""
    estimated = {r.measured.estimated for r in rows if r.measured is not None}
    if estimated == {True}:
        return "ESTIMATED speed-up vs the unpruned original int8, compiled the same way (x; right is faster)"
    if estimated == {False, True}:
        return "speed-up (x; right is faster): measured vs ORT fp32, or ESTIMATED vs the unpruned int8 one"
    return "speed-up vs the original in ONNX Runtime fp32 (x, batch 1; right is faster)"


def _drop(row: CandidateRow) -> float:
    return row.accuracy_drop if row.accuracy_drop is not None else 0.0


def _draw_goals(ax: Any, search: SearchResult) -> None:
    if search.goals.min_speedup is not None:
        ax.axvline(search.goals.min_speedup, ls="--", color="tab:green", zorder=1)
    if search.goals.max_accuracy_drop is not None:
        ax.axhline(search.goals.max_accuracy_drop, ls="--", color="tab:orange", zorder=1)


def _legend_handles(search: SearchResult) -> list[Any]:
    from matplotlib.lines import Line2D

    # not joined: the front is over speed-up, drop and bytes, so in this 2-D view it is no curve
    front = "on the Pareto front (speed-up, drop, size)"
    handles = [
        Line2D([], [], ls="", marker="o", ms=7, alpha=0.6, color=FRONT_COLOR, label=front),
        Line2D([], [], ls="", marker="o", ms=7, alpha=0.6, color=DOMINATED_COLOR, label="dominated"),
        Line2D([], [], ls="", marker="*", ms=10, color=CHOSEN_COLOR, label="returned"),
    ]
    if search.goals.min_speedup is not None:
        handles.append(Line2D([], [], ls="--", color="tab:green", label="speed-up goal"))
    if search.goals.max_accuracy_drop is not None:
        handles.append(Line2D([], [], ls="--", color="tab:orange", label="accuracy-drop goal"))
    return handles


def _table(search: SearchResult, rows: list[CandidateRow]) -> list[TableLine]:
    """Number -> candidate, with speed-up, validation and test drop, size, and its marks."""
    width = max((len(r.point.label) for r in rows), default=10)
    lines = [TableLine(f"{'#':>3} {'candidate':<{width}} {'speed-up':>8} {'drop':>6} {'test':>6} {'KB':>7}",
                       heading=True)]  # fmt: skip
    for number, row in enumerate(rows, start=1):
        lines.append(TableLine(_table_row(number, row, width), _color(row), number=number))
    notes = [
        "drop: validation accuracy drop, pp (what the search chooses on)",
        "test: test accuracy drop, pp (reported, never used to choose)",
        "R: returned  F: on the Pareto front  G: meets every goal",
    ]
    unmeasured = len(search.rows) - len(rows)
    if unmeasured:
        noun = "candidate" if unmeasured == 1 else "candidates"
        notes.append(f"{unmeasured} {noun} not measured (ruled out, failed or not run): res.search.table()")
    return [*lines, TableLine(""), *(TableLine(n, "dimgray") for n in notes)]


def _color(row: CandidateRow) -> str:
    return CHOSEN_COLOR if row.chosen else DOMINATED_COLOR if row.dominated else FRONT_COLOR


def _table_row(number: int, row: CandidateRow, width: int) -> str:
    m = row.measured
    assert m is not None
    marks = ("R" if row.chosen else "") + ("" if row.dominated else "F") + ("" if row.misses else "G")
    return (f"{number:>3} {row.point.label:<{width}} {m.speedup:>7.2f}x {_pp(row.accuracy_drop):>6} "
            f"{_pp(row.test_drop):>6} {m.bytes / 1000:>7.1f} {marks}")  # fmt: skip


def _pp(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _footnote(search: SearchResult) -> str:
    """The verdict (it names the goals and the returned candidate), else the goals."""
    if search.verdict:
        return search.verdict
    goals = [f"{goal.cli} {goal.op} {limit:g} {goal.unit}" for goal, limit in search.goals.active()]
    return f"goals: {', '.join(goals)}" if goals else "no goals"
