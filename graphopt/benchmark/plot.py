"""Accuracy (or agreement) against latency, one point per timed row, the Pareto front marked.

A point is on the Pareto front when no other point is at least as fast and at least as accurate and better
in one of the two. The quality axis is test accuracy when the model has labels, else the minimum cosine with
the original's outputs over the probes. Needs matplotlib (``pip install 'graphopt[plot]'``).
"""

from __future__ import annotations

from pathlib import Path

from graphopt.errors import ConfigError

from .schema import BenchResult, BenchRow


def quality(row: BenchRow) -> float | None:
    if row.accuracy is not None:
        return 100 * row.accuracy
    return row.cosine


def latency_ms(row: BenchRow) -> float | None:
    if row.latency is None:
        return None
    return row.mean_ms if row.mean_ms is not None else row.latency.median_ms


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points (latency, quality) that no other point dominates, fastest first."""
    front = []
    for i, (lat, q) in enumerate(points):
        dominated = any(
            (lo <= lat and qo >= q) and (lo < lat or qo > q) for j, (lo, qo) in enumerate(points) if j != i
        )
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: points[i][0])


def pyplot(instead: str = "pass --no-plot"):  # type: ignore[no-untyped-def]
    """matplotlib's pyplot on the file-only backend, or a ConfigError naming the extra and what the caller
    can do without it (``instead``: each command has its own flag, and the API none)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ConfigError(
            f"the PNG plot needs matplotlib: pip install 'graphopt[plot]' (or {instead})"
        ) from exc
    return plt


def plot(result: BenchResult, path: Path) -> Path:
    plt = pyplot()
    rows = [r for r in result.rows if latency_ms(r) is not None and quality(r) is not None]
    points = [(latency_ms(r), quality(r)) for r in rows]
    labelled = any(r.accuracy is not None for r in rows)
    fig, ax = plt.subplots(figsize=(9, 6), dpi=110)
    colors = {"peer": "tab:gray", "stage": "tab:blue", "artifact": "tab:red"}
    for kind, color in colors.items():
        xs = [p[0] for p, r in zip(points, rows, strict=True) if r.kind == kind]
        ys = [p[1] for p, r in zip(points, rows, strict=True) if r.kind == kind]
        ax.scatter(xs, ys, c=color, label=kind, zorder=3)
    for (x, y), r in zip(points, rows, strict=True):
        name = r.stage if r.kind == "peer" else f"{r.pipeline}: {r.stage}"
        ax.annotate(name, (x, y), fontsize=7, xytext=(4, 3), textcoords="offset points")
    ylabel = "test accuracy, %" if labelled else "min cosine with the original's outputs"
    title = f"{result.model}: quality vs latency ({result.machine['cpu']})"
    return save_latency_plot(fig, ax, points, ylabel, title, path)


def save_latency_plot(  # type: ignore[no-untyped-def]
    fig, ax, points: list[tuple[float, float]], ylabel: str, title: str, path: Path
) -> Path:
    """The Pareto front of ``points`` dashed, log latency axis, labels, grid; the figure saved and closed."""
    front = pareto_front(points)
    ax.plot([points[i][0] for i in front], [points[i][1] for i in front], "k--", lw=1, label="Pareto front")
    ax.set_xscale("log")
    ax.set_xlabel("latency, ms (batch 1, 1 thread; log scale)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    pyplot().close(fig)
    return path
