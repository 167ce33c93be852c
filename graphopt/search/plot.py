"""The search's Pareto plot: speed-up over ORT fp32 against validation accuracy drop, one point per
measured candidate, marker area proportional to the artifact's bytes; the front joined, the returned
candidate starred, the goals drawn as dashed lines. Needs matplotlib (``pip install 'graphopt[plot]'``)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from graphopt.benchmark.plot import pyplot

if TYPE_CHECKING:
    from graphopt.search.engine import SearchResult


#: What a caller without matplotlib can do instead of the plot, for the message (the CLI checks up front
#: with its own advice, --search-plot; an API caller has no flag to drop).
WITHOUT_PLOT = "skip the plot: the search's table is res.search.table()"


def plot_search(search: SearchResult, path: Path) -> Path:
    plt = pyplot(instead=WITHOUT_PLOT)
    rows = [r for r in search.rows if r.measured is not None]
    fig, ax = plt.subplots(figsize=(9, 6), dpi=110)
    largest = max((r.measured.bytes for r in rows if r.measured), default=1)
    for row in rows:
        m = row.measured
        assert m is not None
        drop = row.accuracy_drop if row.accuracy_drop is not None else 0.0
        ax.scatter(m.speedup, drop, s=30 + 400 * m.bytes / largest, alpha=0.6,
                   color="tab:blue" if not row.dominated else "tab:gray")  # fmt: skip
        ax.annotate(row.point.label, (m.speedup, drop), fontsize=7, xytext=(4, 4), textcoords="offset points")
        if row.chosen:
            ax.scatter(m.speedup, drop, marker="*", s=300, color="tab:red", zorder=3, label="returned")
    front = sorted(
        (r for r in rows if not r.dominated), key=lambda r: r.measured.speedup if r.measured else 0
    )
    xs = [r.measured.speedup for r in front if r.measured]
    ax.plot(xs, [r.accuracy_drop or 0.0 for r in front], color="tab:blue", lw=1, label="Pareto front")
    if search.goals.min_speedup is not None:
        ax.axvline(search.goals.min_speedup, ls="--", color="tab:green", label="speed-up goal")
    if search.goals.max_accuracy_drop is not None:
        ax.axhline(search.goals.max_accuracy_drop, ls="--", color="tab:orange", label="accuracy-drop goal")
    ax.set_xlabel("speed-up vs the original in ONNX Runtime fp32 (batch 1)")
    ax.set_ylabel("accuracy drop on validation data (pp, lower is better)")
    ax.set_title(f"graphopt search: {len(rows)} candidates measured (marker area: artifact bytes)")
    ax.legend(loc="best", fontsize=8)
    ax.grid(alpha=0.3)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
