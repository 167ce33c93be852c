"""The bench and search plots are readable: every point numbered once, one table line per number, the stages
of a pipeline one line in pass order, the machine in a footnote, and no two texts printed on top of one
another (checked on the drawn figure, with crowded points like MobileNetV2's eight rows at cosine 1.0)."""

from __future__ import annotations

import itertools
from pathlib import Path
from types import SimpleNamespace

import pytest

pytest.importorskip("matplotlib")

from matplotlib.text import Text

from graphopt.backends.timing import LatencyStats
from graphopt.benchmark.plot import NumberedPoint, bench_figure, place_numbers, plot, pyplot, spread_labels
from graphopt.benchmark.schema import BenchResult, BenchRow
from graphopt.errors import ConfigError
from graphopt.search.engine import SearchResult
from graphopt.search.goals import Goals
from graphopt.search.measure import Measured
from graphopt.search.plot import plot_search, search_figure
from graphopt.search.rows import CandidateRow, judge

MACHINE = {"cpu": "Test CPU", "arch": "x86_64", "cores": 2, "flags": ["avx2", "fma"], "threads": 1,
           "pinned_core": 0, "versions": {"onnxruntime": "1.32.0", "torch": "2.13.0"}}  # fmt: skip


def _row(pipeline: str, stage: str, kind: str, ms: float | None, cosine: float | None, **extra) -> BenchRow:
    latency = None if ms is None else LatencyStats(ms, ms, ms, ms, 10)
    speedup = None if ms is None else 10.0 / ms
    return BenchRow("m", pipeline, stage, kind, "fp32", "onnxruntime", 1, 1, 1, latency=latency,
                    cosine=cosine, speedup_vs_ort_fp32=speedup, **extra)  # fmt: skip


def _crowded_result() -> BenchResult:
    """MobileNetV2's shape: peers and two pipelines' stages all at cosine 1.0 within 10 % of 10 ms, one
    untimed stage, and a pruned pipeline far below."""
    peers = ["ORT fp32", "eager fp32", "TorchScript fp32", "ORT quantize_static (default)",
             "ORT quantize_static (best)", "Torch-Pruning 0.5"]  # fmt: skip
    rows = [_row("peers", name, "peer", 10.0 + 0.1 * i, 1.0) for i, name in enumerate(peers)]
    for pipeline in ("generic-fp32", "x86-int8"):
        rows += [_row(pipeline, "fold_batchnorm", "stage", 10.2, 1.0),
                 _row(pipeline, "eliminate_dead_code", "stage", None, 1.0),
                 _row(pipeline, "remove_identity", "stage", 10.3, 1.0),
                 _row(pipeline, "artifact:onnx", "artifact", 10.1, 1.0)]  # fmt: skip
    rows += [_row("x86-int8+prune=0.5", "prune_channels", "stage", 4.0, 0.68),
             _row("x86-int8+prune=0.5", "fold_batchnorm", "stage", 4.0, 0.43),
             _row("x86-int8+prune=0.5", "artifact:onnx", "artifact", 3.6, 0.43)]  # fmt: skip
    return BenchResult("m", "graphopt bench", "now", MACHINE, {"batch": 1, "threads": 1}, "probes", rows)


def _timed(result: BenchResult) -> list[BenchRow]:
    return [r for r in result.rows if r.latency is not None]


def _drawn_texts(fig) -> list[Text]:
    """Every text the figure draws: visible, not empty, and (for tick labels) inside the axis limits."""
    fig.canvas.draw()
    hidden = set()
    for ax in fig.axes:
        for axis, limits in ((ax.xaxis, ax.get_xlim()), (ax.yaxis, ax.get_ylim())):
            lo, hi = sorted(limits)
            for loc, label in zip(axis.get_majorticklocs(), axis.get_majorticklabels(), strict=False):
                if not lo <= loc <= hi:
                    hidden.add(id(label))  # matplotlib does not draw a tick outside the limits
    return [t for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip() and id(t) not in hidden]


def _overlapping(fig) -> list[tuple[str, str]]:
    renderer = fig.canvas.get_renderer()
    texts = _drawn_texts(fig)
    boxes = [(t.get_text(), t.get_window_extent(renderer)) for t in texts]
    return [(a, b) for (a, box_a), (b, box_b) in itertools.combinations(boxes, 2) if box_a.overlaps(box_b)]


def _numbers(fig) -> list[str]:
    return [t.get_text() for t in fig.findobj(Text) if t.get_gid() == "point-number"]


def _numbered_table_lines(fig) -> list[str]:
    return [t.get_text().split()[0] for t in fig.findobj(Text) if t.get_gid() == "table-row"]


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    pyplot().close("all")


def test_the_bench_plot_is_written_as_a_png_and_leaves_no_temporary_file(tmp_path):
    path = plot(_crowded_result(), tmp_path / "out" / "bench.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in path.parent.iterdir()] == ["bench.png"]


def test_a_plot_that_cannot_be_written_is_a_config_error_and_leaves_nothing(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(ConfigError, match=r"cannot write the plot .*choose a folder you can write to"):
        plot(_crowded_result(), blocker / "bench.png")
    assert [p.name for p in tmp_path.iterdir()] == ["file"]


def test_every_timed_row_has_one_unique_number_and_one_table_line():
    result = _crowded_result()
    fig = bench_figure(result)
    numbers = _numbers(fig)
    expected = [str(i) for i in range(1, len(_timed(result)) + 1)]
    assert sorted(numbers, key=int) == expected  # the untimed stages have none, no number twice
    assert _numbered_table_lines(fig) == expected


def test_no_two_texts_of_a_crowded_bench_plot_overlap():
    fig = bench_figure(_crowded_result())
    assert _overlapping(fig) == []


def test_the_old_label_per_point_would_have_overlapped():
    """The check above can fail: the same rows labelled beside their points (the old plot) overlap."""
    result = _crowded_result()
    fig, ax = pyplot().subplots(figsize=(9, 6), dpi=110)
    for r in _timed(result):
        ax.annotate(f"{r.pipeline}: {r.stage}", (r.latency.median_ms, r.cosine), xytext=(4, 3),
                    textcoords="offset points", fontsize=7)  # fmt: skip
    assert _overlapping(fig)


def test_a_pipeline_is_one_line_through_its_stages_in_order_ending_at_its_artifact():
    result = _crowded_result()
    fig = bench_figure(result)
    lines = [line for line in fig.axes[0].get_lines() if line.get_marker() == "o"]
    pruned = [r for r in _timed(result) if r.pipeline == "x86-int8+prune=0.5"]
    xs = [list(line.get_xdata()) for line in lines]
    assert [r.latency.median_ms for r in pruned] in xs  # stages in pass order, then the artifact
    assert len(lines) == 3  # one line per pipeline, none for the peers


def test_the_table_gives_each_rows_speedup_and_quality_and_the_footnote_the_machine():
    fig = bench_figure(_crowded_result())
    texts = [t.get_text() for t in fig.findobj(Text)]
    row = next(t for t in texts if t.split()[:1] == ["1"] and "ORT fp32" in t)
    assert "1.00x" in row and "1.0000" in row
    footnote = " ".join(t.get_text() for t in fig.findobj(Text) if t.get_gid() == "footnote")
    assert "Test CPU" in footnote and "avx2 fma" in footnote and "1 thread" in footnote
    assert "ms" in fig.axes[0].get_xlabel() and "cosine" in fig.axes[0].get_ylabel()


def test_rows_without_accuracy_stay_off_an_accuracy_axis():
    result = _crowded_result()
    for r in result.rows:
        r.accuracy = None if r.stage == "ORT fp32" else 0.9
    fig = bench_figure(result)
    assert len(_numbers(fig)) == len(_timed(result)) - 1
    assert any("without a test accuracy left out" in t.get_text() for t in fig.findobj(Text))


def test_numbers_of_points_at_one_spot_still_never_overlap():
    fig, ax = pyplot().subplots(figsize=(4, 3), dpi=110)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    points = [NumberedPoint(i, 0.5, 0.5, "black", 3.0) for i in range(1, 31)]
    texts = place_numbers(ax, points)
    assert sorted(int(t.get_text()) for t in texts) == list(range(1, 31))
    assert _overlapping(fig) == []


def _candidate(label: str, speedup: float, drop: float, size: int, chosen: bool) -> CandidateRow:
    measured = Measured(Path("c.onnx"), 1.0, speedup, size, 1, 1, 90.0, 90.0, False, "exits" in label)
    point = SimpleNamespace(label=label)  # the plot reads only the label
    return CandidateRow(point, "measured", measured=measured, accuracy_drop=drop, test_drop=drop + 0.1,
                        chosen=chosen)  # type: ignore[arg-type]  # fmt: skip


def test_the_names_beside_crowded_points_are_spread_apart():
    """The seeds plot writes a name beside each point: spread_labels (save_latency_plot) moves them apart."""
    fig, ax = pyplot().subplots(figsize=(6, 4), dpi=110)
    points = [(1.0 + 0.01 * i, 92.0) for i in range(8)] + [(3.0, 92.5)]
    for i, (x, y) in enumerate(points):
        ax.annotate(f"eager fp32 channels_last {i}", (x, y), xytext=(4, 3), textcoords="offset points")
    ax.scatter(*zip(*points, strict=True))
    ax.set_xscale("log")
    assert _overlapping(fig)  # as written: on top of one another
    spread_labels(ax, points)
    assert _overlapping(fig) == []


def _search() -> SearchResult:
    specs = [  # label, speed-up, drop, bytes, chosen: several close together, one chosen
        ("prune=0.5/l2 fp32 [onnx]", 2.48, 2.00, 180_000, False),
        ("prune=0.5/l2 fp32 exits [onnx]", 2.50, 2.04, 310_000, False),
        ("prune=0.5/l2 int8 [onnx]", 1.49, 0.72, 68_000, False),
        ("prune=0.5/l2 int8 exits [onnx]", 1.50, 0.70, 410_000, False),
        ("prune=0.6/l2 int8 [onnx]", 1.17, 2.08, 53_000, False),
        ("prune=0.6/l2 int8+fp32 fall-backs [onnx]", 1.18, 2.08, 52_000, True),
    ]
    rows = [_candidate(*spec) for spec in specs]
    rows.append(CandidateRow(SimpleNamespace(label="prune=0.9/l2 fp32 [onnx]"), "ruled out", why="estimate"))
    goals = Goals(min_speedup=3.0, max_accuracy_drop=0.5)
    judge(rows, goals)
    return SearchResult(goals, rows, "search: no candidate meets every goal", 1.0, 1.0, None, {})  # type: ignore[arg-type]


def test_the_search_plot_is_written(tmp_path):
    path = plot_search(_search(), tmp_path / "front.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_each_measured_candidate_has_one_number_and_one_table_line_and_the_returned_one_is_marked():
    fig = search_figure(_search())
    assert sorted(_numbers(fig), key=int) == [str(i) for i in range(1, 7)]
    assert _numbered_table_lines(fig) == [str(i) for i in range(1, 7)]
    rows = [t.get_text() for t in fig.findobj(Text) if t.get_gid() == "table-row"]
    returned = [row for row in rows if row.split()[-1].startswith("R")]
    assert len(returned) == 1 and "int8+fp32 fall-backs" in returned[0]
    notes = [t.get_text() for t in fig.findobj(Text) if t.get_gid() == "table-line"]
    assert any("1 candidate not measured" in line for line in notes)


def test_no_two_texts_of_the_search_plot_overlap():
    assert _overlapping(search_figure(_search())) == []
