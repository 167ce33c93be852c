"""Accuracy (or agreement) against latency, one point per timed row, the Pareto front marked.

A point is on the Pareto front when no other point is at least as fast and at least as accurate and better
in one of the two. The quality axis is test accuracy when the model has labels, else the minimum cosine with
the original's outputs over the probes. Needs matplotlib (``pip install 'graphopt[plot]'``).

Readable with many rows close together: each point carries a number and a table beside the plot says what
the number is (its row and key numbers). Numbers are placed by :func:`place_numbers`, which tries positions
around the point, nearest first, and takes the first whose box overlaps no other number and no marker, so
no two labels print on top of one another however crowded the points are. The stages of one pipeline are
one line in one colour (small points in pass order), its shipped artifact the big outlined point at its
end; peers are grey squares. The machine (CPU, flags, threads) is in a footnote.
"""

from __future__ import annotations

import io
import math
import os
import tempfile
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from graphopt.errors import ConfigError

from .schema import ORT_FP32, BenchResult, BenchRow

#: Pipeline colours, in pipeline order (tab10 without grey, which is the peers' colour, and without red,
#: which the search plot keeps for its returned candidate).
PIPELINE_COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:purple", "tab:brown", "tab:pink", "tab:olive")
PEER_COLOR = "dimgray"
FRONT_COLOR = "black"

# Sizes in points; the figure is laid out in inches (72 points each) so the table, legend and footnote
# never run into the plot whatever the number of rows.
TABLE_FONT = 7.0
NUMBER_FONT = 7.0
FOOTNOTE_FONT = 7.0
LINE_SPACING = 1.5  # table line pitch over its font size: a text line is about 1.2 font sizes tall
DPI = 110


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


# --------------------------------------------------------------------------------------------------------
# Shared by the bench and the search plots: a figure with a numbered-point table, and number placement.


@dataclass(frozen=True)
class TableLine:
    """One line of the table beside the plot: a row (``number`` set) or a heading."""

    text: str
    color: str = "black"
    number: int | None = None
    heading: bool = False


@dataclass(frozen=True)
class NumberedPoint:
    """A plotted point whose number :func:`place_numbers` writes next to it."""

    number: int
    x: float
    y: float
    color: str
    radius_pt: float  # the marker's radius: the number is kept off it (and off every other marker)


@dataclass(frozen=True)
class TableFigure:
    """The figure, its plot axes, and where the legend goes (figure fraction, top centre)."""

    fig: Any
    ax: Any
    legend_anchor: tuple[float, float]


def table_figure(plt: Any, lines: Sequence[TableLine], footnote: str, legend_rows: int) -> TableFigure:
    """A figure with the plot on the left, ``lines`` as a monospaced table on the right, the legend under
    the plot and ``footnote`` (wrapped) at the bottom; sized in inches from the table's longest line and
    line count, so every text line gets its own room."""
    pitch = TABLE_FONT * LINE_SPACING / 72  # inches per table line
    table_w = max((_mono_width_in(line.text, TABLE_FONT) for line in lines), default=1.0) + 0.2
    plot_w, left, gap = 6.4, 0.8, 0.35
    width = left + plot_w + gap + table_w
    foot_chars = int((width - 0.4) / _mono_width_in("x", FOOTNOTE_FONT))
    foot = textwrap.wrap(footnote, foot_chars) if footnote else []
    foot_h = len(foot) * FOOTNOTE_FONT * LINE_SPACING / 72 + 0.1
    legend_h = 0.12 + legend_rows * 0.2
    below = 0.55 + legend_h + foot_h  # tick labels and axis label, then the legend, then the footnote
    top = 0.45  # the title
    table_h = len(lines) * pitch
    plot_h = max(4.6, table_h - 0.2)
    height = top + plot_h + below
    fig = plt.figure(figsize=(width, height), dpi=DPI)
    ax = fig.add_axes((left / width, below / height, plot_w / width, plot_h / height))
    x0, y = (left + plot_w + gap) / width, 1 - top / height
    for line in lines:
        fig.text(x0, y, line.text, fontsize=TABLE_FONT, family="monospace", color=line.color,
                 weight="bold" if line.heading else "normal", va="top",
                 gid="table-line" if line.number is None else "table-row")  # fmt: skip
        y -= pitch / height
    y = (foot_h - 0.05) / height
    for text in foot:
        fig.text(0.2 / width, y, text, fontsize=FOOTNOTE_FONT, family="monospace", color="dimgray",
                 va="top", gid="footnote")  # fmt: skip
        y -= FOOTNOTE_FONT * LINE_SPACING / 72 / height
    anchor = ((left + plot_w / 2) / width, (foot_h + legend_h) / height)
    return TableFigure(fig, ax, anchor)


def _mono_width_in(text: str, size: float) -> float:
    """Width in inches of ``text`` in the monospaced font at the figure's dpi (Agg rounds each glyph's
    advance to whole pixels, so the width depends on the dpi and is measured, not estimated)."""
    from matplotlib.backends.backend_agg import RendererAgg
    from matplotlib.font_manager import FontProperties

    renderer = RendererAgg(1, 1, DPI)
    width, _, _ = renderer.get_text_width_height_descent(text, FontProperties(family="monospace", size=size),
                                                         ismath=False)  # fmt: skip
    return width / DPI


def place_numbers(ax: Any, points: Sequence[NumberedPoint]) -> list[Any]:
    """Write each point's number next to it where its box overlaps no other number's box, no marker and
    stays inside the axes; a number set off from its point gets a thin leader line. Call after the axes'
    limits are final (positions are worked out in pixels)."""
    import numpy as np

    fig = ax.figure
    renderer = fig.canvas.get_renderer()
    to_px = ax.transData.transform
    scale = fig.dpi / 72
    centers = [to_px((p.x, p.y)) for p in points]
    # every marker is an obstacle: a number on a marker hides which point is which
    obstacles = [_square(c, p.radius_pt * scale + 1) for c, p in zip(centers, points, strict=True)]
    inside = ax.get_window_extent(renderer)
    texts = []
    for point, (cx, cy) in zip(points, centers, strict=True):
        half_w, half_h = _half_size(ax, str(point.number), renderer)
        start = point.radius_pt * scale + max(half_w, half_h) + 2
        box = _first_free_box(cx, cy, half_w, half_h, start, np.array(obstacles), inside)
        dx, dy = (box[0] + box[2]) / 2 - cx, (box[1] + box[3]) / 2 - cy
        texts.append(_number_text(ax, point, dx / scale, dy / scale))
        obstacles.append(box)
    return texts


def _first_free_box(
    cx: float, cy: float, half_w: float, half_h: float, start: float, obstacles: Any, inside: Any
) -> tuple[float, float, float, float]:
    """The nearest free box around (cx, cy): rings outwards from ``start`` pixels, each ring starting up
    and to the right (the reader's first look) about 6 px between tries; the rings reach across the whole
    axes, so a free spot is found if there is one (else the first try, which can only happen when the
    axes are full)."""
    import numpy as np

    reach = math.hypot(inside.width, inside.height)
    first = None
    radius = start
    while radius <= reach:
        count = max(8, int(2 * math.pi * radius / 6))
        angles = math.pi / 4 + 2 * math.pi * np.arange(count) / count
        xs, ys = cx + radius * np.cos(angles), cy + radius * np.sin(angles)
        boxes = np.stack([xs - half_w, ys - half_h, xs + half_w, ys + half_h], axis=1)
        free = _fits(boxes, obstacles, inside)
        if free.any():
            return tuple(float(v) for v in boxes[int(np.argmax(free))])  # type: ignore[return-value]
        first = tuple(float(v) for v in boxes[0]) if first is None else first
        radius += 4
    return first or (cx - half_w, cy - half_h, cx + half_w, cy + half_h)


def _half_size(ax: Any, text: str, renderer: Any) -> tuple[float, float]:
    """Half the pixel size of the number's box (text plus its rounded pad and a pixel of air)."""
    probe = ax.text(0, 0, text, fontsize=NUMBER_FONT, weight="bold")
    box = probe.get_window_extent(renderer)
    probe.remove()
    pad = 0.3 * NUMBER_FONT * ax.figure.dpi / 72 + 1
    return box.width / 2 + pad, box.height / 2 + pad


def _fits(boxes: Any, obstacles: Any, inside: Any) -> Any:
    """Which candidate boxes (x0, y0, x1, y1) lie inside the axes and overlap no obstacle box."""
    within = (
        (boxes[:, 0] >= inside.x0 + 1) & (boxes[:, 2] <= inside.x1 - 1)
        & (boxes[:, 1] >= inside.y0 + 1) & (boxes[:, 3] <= inside.y1 - 1)
    )  # fmt: skip
    if len(obstacles) == 0:
        return within
    b, o = boxes[:, None, :], obstacles[None, :, :]
    apart_x = (b[..., 2] <= o[..., 0]) | (o[..., 2] <= b[..., 0])
    apart_y = (b[..., 3] <= o[..., 1]) | (o[..., 3] <= b[..., 1])
    return within & (apart_x | apart_y).all(axis=1)


def _square(center: Any, half: float) -> tuple[float, float, float, float]:
    return (center[0] - half, center[1] - half, center[0] + half, center[1] + half)


def _number_text(ax: Any, point: NumberedPoint, dx_pt: float, dy_pt: float) -> Any:
    """The number in a small white box at (dx, dy) points from its point, and a thin line from the marker's
    edge to the box (under it): in a cluster, which number is whose is then never a guess. The line is an
    artist of its own, so the number's extent is the text's alone."""
    from matplotlib.transforms import ScaledTranslation

    ax.annotate("", (point.x, point.y), xytext=(dx_pt, dy_pt), textcoords="offset points", zorder=5,
                arrowprops={"arrowstyle": "-", "color": point.color, "lw": 0.6, "shrinkA": 0,
                            "shrinkB": point.radius_pt})  # fmt: skip
    offset = ScaledTranslation(dx_pt / 72, dy_pt / 72, ax.figure.dpi_scale_trans)
    return ax.text(
        point.x, point.y, str(point.number), transform=ax.transData + offset, ha="center", va="center",
        fontsize=NUMBER_FONT, weight="bold", color=point.color, zorder=6, gid="point-number",
        bbox={"boxstyle": "round,pad=0.2", "fc": "white", "ec": point.color, "lw": 0.5, "alpha": 0.9},
    )  # fmt: skip


def finish_numbered_plot(table: TableFigure, handles: list[Any], points: Sequence[NumberedPoint]) -> None:
    """The legend under the plot, limits frozen (so pixel positions hold), then the numbers placed."""
    fig, ax = table.fig, table.ax
    ncol = min(4, max(1, len(handles)))
    fig.legend(handles=handles, loc="upper center", bbox_to_anchor=table.legend_anchor, ncol=ncol,
               fontsize=7.5, frameon=False)  # fmt: skip
    ax.set_xlim(ax.get_xlim())
    ax.set_ylim(ax.get_ylim())
    place_numbers(ax, points)


def save_figure(fig: Any, path: Path) -> Path:
    """Save ``fig`` as a PNG at ``path`` and close it: rendered in memory, then moved into place, so a
    failure leaves no file (and no half-written PNG) at ``path``; a folder that cannot be made or written
    is a ConfigError naming the path, found before the rendering."""
    path = Path(path)
    try:
        _make_folder(path)
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png")
    finally:
        pyplot().close(fig)
    tmp: str | None = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            f.write(buffer.getvalue())
        os.replace(tmp, path)
    except OSError as exc:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise _unwritable(path, exc) from exc
    return path


def _make_folder(path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _unwritable(path, exc) from exc


def _unwritable(path: Path, exc: OSError) -> ConfigError:
    cause = exc.strerror or str(exc)
    return ConfigError(f"cannot write the plot {path}: {cause}; choose a folder you can write to")


def number_axis_labels(axis: Any) -> None:
    """Plain numbers on a log axis (0.2, 0.3, 0.5, 1, 2), not 2x10^-1: readable at a glance."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 3.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


# --------------------------------------------------------------------------------------------------------
# The bench plot.


@dataclass(frozen=True)
class _Plotted:
    """A row that has a point: its number, coordinates and the table line that says what it is."""

    number: int
    row: BenchRow
    x: float
    y: float


def plot(result: BenchResult, path: Path) -> Path:
    """Write the bench plot of ``result`` to ``path`` (PNG); return ``path``."""
    return save_figure(bench_figure(result), path)


def bench_figure(result: BenchResult) -> Any:
    """The bench plot as a matplotlib figure (see the module docstring)."""
    plt = pyplot()
    plotted = _plotted_rows(result)
    labelled = any(p.row.accuracy is not None for p in plotted)
    pipelines = list(dict.fromkeys(p.row.pipeline for p in plotted if p.row.kind != "peer"))
    colors = {name: PIPELINE_COLORS[i % len(PIPELINE_COLORS)] for i, name in enumerate(pipelines)}
    lines = _bench_table(result, plotted, pipelines, colors, labelled)
    table = table_figure(plt, lines, _machine_footnote(result), legend_rows=1)
    ax = table.ax
    handles, points = _draw_bench_points(ax, plotted, pipelines, colors)
    front = _front(plotted, labelled)
    (front_line,) = ax.plot([plotted[i].x for i in front], [plotted[i].y for i in front], ls="--",
                            color=FRONT_COLOR, lw=0.8, zorder=1, label="Pareto front")  # fmt: skip
    ax.set_xscale("log")
    number_axis_labels(ax.xaxis)
    ax.margins(x=0.08, y=0.1)  # room for numbers beside the outermost points
    settings = result.settings
    threads = settings.get("threads", 1)
    ax.set_xlabel(f"latency per inference, ms (batch {settings.get('batch', 1)}, {threads} "
                  f"thread{'s' if threads != 1 else ''}; log scale; left is faster)")  # fmt: skip
    ax.set_ylabel("test accuracy, % (higher is better)" if labelled else
                  "min cosine with the original's outputs (higher is better)")  # fmt: skip
    ax.set_title(f"{result.model}: quality vs latency on {result.machine.get('cpu', 'an unnamed CPU')}",
                 fontsize=10)  # fmt: skip
    ax.grid(True, which="both", alpha=0.3)
    finish_numbered_plot(table, [*handles, front_line], points)
    return table.fig


def _plotted_rows(result: BenchResult) -> list[_Plotted]:
    """The rows with a latency and a quality, numbered peers first, then each pipeline's stages in pass
    order followed by its artifact (the order the table lists them)."""
    rows = _timed_rows(result)
    if any(r.accuracy is not None for r in rows):
        rows = [r for r in rows if r.accuracy is not None]  # one axis, one unit: no cosine on a % axis
    peers = [r for r in rows if r.kind == "peer"]
    pipelines = list(dict.fromkeys(r.pipeline for r in rows if r.kind != "peer"))
    ordered = peers + [r for name in pipelines for r in _pipeline_rows(rows, name)]
    return [_Plotted(i + 1, r, latency_ms(r), quality(r)) for i, r in enumerate(ordered)]  # type: ignore[arg-type]


def _timed_rows(result: BenchResult) -> list[BenchRow]:
    return [r for r in result.rows if latency_ms(r) is not None and quality(r) is not None]


def _front(plotted: list[_Plotted], labelled: bool) -> list[int]:
    """The Pareto front on quality as the table prints it (0.01 pp, 4 decimals of cosine): a cosine of
    1.0000000000000004 is not better than 0.9999999999999427, and eager fp32 is no front point for it."""
    digits = 2 if labelled else 4
    return pareto_front([(p.x, round(p.y, digits)) for p in plotted])


def _pipeline_rows(rows: list[BenchRow], pipeline: str) -> list[BenchRow]:
    mine = [r for r in rows if r.pipeline == pipeline and r.kind != "peer"]
    return [r for r in mine if r.kind == "stage"] + [r for r in mine if r.kind == "artifact"]


def _draw_bench_points(
    ax: Any, plotted: list[_Plotted], pipelines: list[str], colors: dict[str, str]
) -> tuple[list[Any], list[NumberedPoint]]:
    """Peers as grey squares; each pipeline a line through its stages (small points) to its artifact (big,
    outlined). Returns the legend handles and the points to number."""
    from matplotlib.lines import Line2D

    peers = [p for p in plotted if p.row.kind == "peer"]
    ax.scatter([p.x for p in peers], [p.y for p in peers], marker="s", s=36, color=PEER_COLOR, zorder=3)
    points = [NumberedPoint(p.number, p.x, p.y, PEER_COLOR, 3.5) for p in peers]
    handles = [Line2D([], [], ls="", marker="s", color=PEER_COLOR, label="peer (what you would run instead)")]
    for name in pipelines:
        color = colors[name]
        mine = [p for p in plotted if p.row.pipeline == name and p.row.kind != "peer"]
        ax.plot([p.x for p in mine], [p.y for p in mine], "-o", color=color, lw=1, ms=4, alpha=0.8, zorder=2)
        shipped = [p for p in mine if p.row.kind == "artifact"]
        ax.scatter([p.x for p in shipped], [p.y for p in shipped], s=130, color=color, edgecolors="black",
                   linewidths=1.5, zorder=4)  # fmt: skip
        points += [NumberedPoint(p.number, p.x, p.y, color, 6.5 if p.row.kind == "artifact" else 2.5)
                   for p in mine]  # fmt: skip
    # one entry per kind of mark, not per pipeline: the table's headings name each pipeline in its colour
    handles += [
        Line2D([], [], marker="o", ms=4, color="gray", label="pipeline: its stages in pass order"),
        Line2D([], [], ls="", marker="o", ms=10, color="lightgray", markeredgecolor="black",
               markeredgewidth=1.5, label="its shipped artifact"),
    ]  # fmt: skip
    points.sort(key=lambda p: p.number)
    return handles, points


def _bench_table(
    result: BenchResult, plotted: list[_Plotted], pipelines: list[str], colors: dict[str, str],
    labelled: bool,
) -> list[TableLine]:  # fmt: skip
    """Number -> row, with latency, speed-up over ORT fp32 and the quality; grouped under headings."""
    names = {p.number: _row_name(p.row) for p in plotted}
    width = max((len(n) for n in names.values()), default=10)
    front = {plotted[i].number for i in _front(plotted, labelled)}
    qname = "acc %" if labelled else "cosine"
    lines = [TableLine(f"{'#':>3} {'row':<{width}} {'ms':>7} {'speed-up':>8} {qname:>7}", heading=True)]
    groups = [("peers", PEER_COLOR)] + [(name, colors[name]) for name in pipelines]
    for group, color in groups:
        lines.append(TableLine(group if group == "peers" else f"pipeline {group}", color, heading=True))
        for p in plotted:
            if (p.row.kind == "peer") == (group == "peers") and (group == "peers" or p.row.pipeline == group):
                text = _table_row(p, names[p.number], width, p.number in front, labelled)
                lines.append(TableLine(text, color, number=p.number))
    lines += _table_notes(result, plotted, front)
    return lines


def _row_name(row: BenchRow) -> str:
    if row.kind == "peer":
        return row.stage
    name = "  " + row.stage
    if row.kind == "artifact":
        name += " (shipped)"
    return name + (" +" if row.mean_ms is not None else "")


def _table_row(p: _Plotted, name: str, width: int, on_front: bool, labelled: bool) -> str:
    speedup = p.row.speedup_vs_ort_fp32
    spd = f"{speedup:.2f}x" if speedup is not None else "-"
    q = f"{p.y:.2f}" if labelled else f"{p.y:.4f}"
    return f"{p.number:>3} {name:<{width}} {p.x:>7.3g} {spd:>8} {q:>7}" + (" F" if on_front else "")


def _table_notes(result: BenchResult, plotted: list[_Plotted], front: set[int]) -> list[TableLine]:
    notes = [
        f"speed-up: the original's {ORT_FP32} latency over the row's (same interleaved run)",
        "F: on the Pareto front (nothing else is both faster and better)",
    ]
    if any(p.row.mean_ms is not None for p in plotted):
        notes.append("+: early exit, mean latency per sample over the held-out split")
    skipped = sum(1 for r in result.rows if r.kind == "stage" and latency_ms(r) is None)
    if skipped:
        notes.append(f"{skipped} stage rows not timed (graph unchanged or not lowered): see bench.md")
    unlabelled = len(_timed_rows(result)) - len(plotted)
    if unlabelled:
        notes.append(f"{unlabelled} timed rows without a test accuracy left out: see bench.md")
    return [TableLine("")] + [TableLine(n, "dimgray") for n in notes]


def _machine_footnote(result: BenchResult) -> str:
    """CPU, flags, threads and runtime versions, from what the JSON has (older results have less)."""
    m = result.machine
    parts = []
    if m.get("cpu"):
        cpu = f"machine: {m['cpu']}"
        extra = [str(m[k]) for k in ("arch",) if m.get(k)]
        if m.get("cores"):
            extra.append(f"{m['cores']} cores")
        if m.get("virtualized"):
            extra.append("virtualized")
        parts.append(cpu + (f" ({', '.join(extra)})" if extra else ""))
    if m.get("flags"):
        parts.append("CPU flags: " + " ".join(m["flags"]))
    if m.get("threads") is not None:
        pinned = f", pinned to core {m['pinned_core']}" if m.get("pinned_core") is not None else ""
        parts.append(f"{m['threads']} thread{'s' if m['threads'] != 1 else ''}{pinned}")
    if m.get("int8_target"):
        parts.append(f"int8: {m['int8_target']}")
    versions = m.get("versions") or {}
    runtimes = [f"{k} {versions[k]}" for k in ("onnxruntime", "torch", "graphopt") if k in versions]
    if runtimes:
        parts.append(", ".join(runtimes))
    return "; ".join(parts)


def save_latency_plot(  # type: ignore[no-untyped-def]
    fig, ax, points: list[tuple[float, float]], ylabel: str, title: str, path: Path
) -> Path:
    """The Pareto front of ``points`` dashed, log latency axis, labels, grid; the figure saved and closed."""
    front = pareto_front(points)
    ax.plot([points[i][0] for i in front], [points[i][1] for i in front], "k--", lw=1, label="Pareto front")
    ax.set_xscale("log")
    number_axis_labels(ax.xaxis)
    ax.set_xlabel("latency, ms (batch 1, 1 thread; log scale)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    ax.set_xlim(ax.get_xlim())  # frozen: the labels are placed in pixels
    ax.set_ylim(ax.get_ylim())
    spread_labels(ax, points)
    return save_figure(fig, path)


def spread_labels(ax: Any, points: Sequence[tuple[float, float]], marker_pt: float = 4.0) -> None:
    """Move the axes' annotations (a name beside each point, as the seeds plot writes them) where no two
    overlap and none covers a marker or the legend, each with a thin line to its point: the same search
    as :func:`place_numbers`, with the label's own size. Call once the limits and layout are final."""
    import numpy as np
    from matplotlib.text import Annotation

    fig = ax.figure
    renderer = fig.canvas.get_renderer()
    scale = fig.dpi / 72
    obstacles = [_square(ax.transData.transform(p), marker_pt * scale + 1) for p in points]
    legend = ax.get_legend()
    if legend is not None:
        obstacles.append(tuple(legend.get_window_extent(renderer).extents))
    inside = ax.get_window_extent(renderer)
    for label in [t for t in ax.texts if isinstance(t, Annotation) and t.get_text()]:
        extent = label.get_window_extent(renderer)
        half_w, half_h = extent.width / 2 + 1.5, extent.height / 2 + 1.5
        cx, cy = ax.transData.transform(label.xy)
        start = marker_pt * scale + half_h + 1
        box = _first_free_box(cx, cy, half_w, half_h, start, np.array(obstacles), inside)
        dx, dy = ((box[0] + box[2]) / 2 - cx) / scale, ((box[1] + box[3]) / 2 - cy) / scale
        label.set_horizontalalignment("center")
        label.set_verticalalignment("center")
        label.xyann = (dx, dy)
        label.set_annotation_clip(False)
        ax.annotate("", label.xy, xytext=(dx, dy), textcoords="offset points",
                    arrowprops={"arrowstyle": "-", "color": "dimgray", "lw": 0.7, "shrinkA": 0,
                                "shrinkB": marker_pt})  # fmt: skip
        obstacles.append(box)
