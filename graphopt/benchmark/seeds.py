"""One benchmark over several training seeds: every timed peer and artifact row, its accuracy on every seed.

A claim such as "accuracy within 0.5 pp of the original" is a claim about training runs, not one run: the
original model, the recovery and the QAT each start from a seed. ``graphopt bench MODEL --seed 0 --seed 1
--seed 2`` runs the whole benchmark once per seed (``OUT/seed-N/bench.*``) and writes ``OUT/seeds.json``,
``seeds.md`` and ``seeds.png``: per row, the accuracy of each seed, their mean and worst, the drop against
the same seed's original (ORT fp32), and the speed-up and file ratio against it. ``graphopt bench-seeds
A.json B.json ...`` writes the same from runs made separately (in parallel, one per core).

    drop_s = acc(ORT fp32, seed s) - acc(row, seed s)        (percentage points)
    mean drop = mean_s drop_s,  worst drop = max_s drop_s
"""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from graphopt.artifacts.destination import save_file
from graphopt.errors import WriteError

from .plot import save_latency_plot
from .runner import BenchConfig, run_bench
from .schema import ORT_FP32, BenchResult, BenchRow

PEERS = "peers"


@dataclass(frozen=True)
class SeedRow:
    """One (pipeline, stage) across seeds; lists are in seed order."""

    pipeline: str
    stage: str
    kind: str
    numeric: str
    accuracy: list[float]  # %, per seed
    drop_pp: list[float]  # against the same seed's ORT fp32 original
    latency_ms: list[float]
    speedup: list[float]  # vs the same seed's ORT fp32
    file_ratio: list[float]  # bytes over the same seed's ORT fp32 file
    #: exit models: per-image mean latency over the same pipeline's artifact without exits (same run)
    vs_no_exits: list[float] = field(default_factory=list)

    @property
    def mean_accuracy(self) -> float:
        return statistics.fmean(self.accuracy)

    @property
    def worst_accuracy(self) -> float:
        return min(self.accuracy)


def seed_rows(results: list[BenchResult]) -> list[SeedRow]:
    """The rows every seed timed and scored, in the first seed's order."""
    keyed = [{(r.pipeline, r.stage): r for r in res.rows if _scored(r)} for res in results]
    originals = [res.row(PEERS, ORT_FP32) for res in results]
    rows = []
    for key, first in keyed[0].items():
        if not all(key in k for k in keyed):
            continue
        per_seed = [k[key] for k in keyed]
        rows.append(
            SeedRow(
                pipeline=first.pipeline,
                stage=first.stage,
                kind=first.kind,
                numeric=first.numeric,
                accuracy=[100 * _acc(r) for r in per_seed],
                drop_pp=[100 * (_acc(o) - _acc(r)) for o, r in zip(originals, per_seed, strict=True)],
                latency_ms=[_latency(r) for r in per_seed],
                speedup=[_speedup(o, r) for o, r in zip(originals, per_seed, strict=True)],
                file_ratio=[r.bytes / o.bytes for o, r in zip(originals, per_seed, strict=True)],
                vs_no_exits=[r.mean_ms / r.no_exit_mean_ms for r in per_seed if _has_no_exit_twin(r)],
            )
        )
    return rows


def _scored(row: BenchRow) -> bool:
    """A peer or artifact with a measured latency (a run cut short before timing has none) and accuracy."""
    timed = row.latency is not None or row.mean_ms is not None
    return row.kind in ("peer", "artifact") and timed and row.accuracy is not None


def _acc(row: BenchRow) -> float:
    assert row.accuracy is not None
    return row.accuracy


def _latency(row: BenchRow) -> float:
    """Per-image mean for exit models (their latency depends on the image), else the median call."""
    if row.mean_ms is not None:
        return row.mean_ms
    assert row.latency is not None
    return row.latency.median_ms


def _speedup(original: BenchRow, row: BenchRow) -> float:
    """The original's latency over the row's. An exit model's is the run's own ratio of per-image means over
    the same images: its mean against the original's median call of one input would mix two measures."""
    if row.mean_ms is not None and row.speedup_vs_ort_fp32 is not None:
        return row.speedup_vs_ort_fp32
    return _latency(original) / _latency(row)


def _has_no_exit_twin(row: BenchRow) -> bool:
    return row.mean_ms is not None and row.no_exit_mean_ms is not None


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def seeds_markdown(results: list[BenchResult], rows: list[SeedRow]) -> str:
    seeds, machine = [r.settings["seed"] for r in results], results[0].machine
    lines = [
        f"**graphopt bench {results[0].model}: {_count(len(seeds), 'seed')} ({', '.join(map(str, seeds))})**",
        "",
        f"- machine: {machine.get('cpu', '?')}; flags: {' '.join(machine.get('flags', []))}",
        f"- data: {results[0].data}",
        "- each seed trains the original, the recovery and QAT from that seed; drop and ratios are against "
        "the same seed's original in ORT fp32 (latency: median call, exit models per-image mean)",
        "",
        "| pipeline | artifact | type | latency ms (mean) | vs ORT fp32 (mean, worst) | file vs fp32 "
        "| accuracy mean | worst | drop pp mean | worst | per seed |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.pipeline} | {r.stage} | {r.numeric} | {statistics.fmean(r.latency_ms):.3f} "
            f"| {statistics.fmean(r.speedup):.2f}x, {min(r.speedup):.2f}x "
            f"| {statistics.fmean(r.file_ratio):.2f}x "
            f"| {r.mean_accuracy:.2f} % | {r.worst_accuracy:.2f} % | {statistics.fmean(r.drop_pp):+.2f} "
            f"| {max(r.drop_pp):+.2f} | {' / '.join(f'{a:.2f}' for a in r.accuracy)} |"
        )
    exits = [
        f"- {r.pipeline}: per test image {statistics.fmean(r.vs_no_exits):.2f}x the latency of the same "
        f"pipeline without exits (mean; per seed {' / '.join(f'{v:.2f}x' for v in r.vs_no_exits)}; the same "
        "images, interleaved)"
        for r in rows
        if r.vs_no_exits
    ]
    return "\n".join(lines + (["", *exits] if exits else []))


def run_seeds(config: BenchConfig, seeds: list[int]) -> tuple[list[BenchResult], list[SeedRow]]:
    """``config`` once per seed, each into ``out_dir/seed-N``; the seeds' table into ``out_dir``."""
    results = []
    for seed in seeds:
        out = config.out_dir / f"seed-{seed}" if config.out_dir is not None else None
        results.append(run_bench(replace(config, seed=seed, out_dir=out)))
    rows = seed_rows(results)
    if config.out_dir is not None:
        write_seed_outputs(results, rows, config.out_dir, plot=config.plot)
    return results, rows


def write_seed_outputs(
    results: list[BenchResult], rows: list[SeedRow], out_dir: Path, *, plot: bool
) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "seeds.json", "markdown": out_dir / "seeds.md"}
    save_file(paths["json"], json.dumps([asdict(r) for r in rows], indent=1), "seeds JSON", WriteError)
    save_file(paths["markdown"], seeds_markdown(results, rows) + "\n", "seeds Markdown", WriteError)
    if plot:
        paths["png"] = plot_seeds(results[0], rows, out_dir / "seeds.png")
    return paths


def plot_seeds(first: BenchResult, rows: list[SeedRow], path: Path) -> Path:
    """Mean accuracy against mean latency, a bar from the worst to the best seed, the Pareto front dashed."""
    from .plot import pyplot

    plt = pyplot()  # matplotlib is optional: imported when a plot is asked for
    points = [(statistics.fmean(r.latency_ms), r.mean_accuracy) for r in rows]
    fig, ax = plt.subplots(figsize=(9, 6), dpi=110)
    for (x, y), r in zip(points, rows, strict=True):
        color = "tab:gray" if r.kind == "peer" else "tab:red"
        spread = [[y - min(r.accuracy)], [max(r.accuracy) - y]]
        ax.errorbar(x, y, yerr=spread, fmt="o", color=color, capsize=3, zorder=3)
        name = r.stage if r.kind == "peer" else r.pipeline
        ax.annotate(name, (x, y), fontsize=7, xytext=(4, 3), textcoords="offset points")
    ax.scatter([], [], c="tab:gray", label="peer")
    ax.scatter([], [], c="tab:red", label="graphopt")
    seeds = len(rows[0].accuracy) if rows else 0
    ylabel = f"test accuracy, % (mean of {seeds} seeds; bar: worst to best)"
    title = f"{first.model}: accuracy vs latency ({first.machine.get('cpu', '?')})"
    return save_latency_plot(fig, ax, points, ylabel, title, path)
