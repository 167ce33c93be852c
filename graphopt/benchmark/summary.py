"""One table across several benchmark results: for each model, what a user can ship (the peers and each
pipeline's artifact), how fast it runs against the references, and what it keeps of the original.

This is the table in the README; ``graphopt bench-summary docs/bench/*/bench.json`` regenerates it.
"""

from __future__ import annotations

from collections.abc import Sequence

from graphopt.reporting.energy import SOURCE as ENERGY_SOURCE
from graphopt.reporting.report import _si

from .render import header_lines
from .schema import EAGER_CHANNELS_LAST, BenchResult, BenchRow

HEADER = ("model", "what runs", "type", "MACs", "file (zipped)", "latency ms", "vs ORT fp32", "vs ORT int8",
          "vs eager", "energy µJ (est.)", "accuracy or agreement")  # fmt: skip
SKIPPED_PEERS = (EAGER_CHANNELS_LAST,)  # in the per-model tables; the summary keeps the references


def _quality(row: BenchRow) -> str:
    if row.accuracy is not None:
        return f"{100 * row.accuracy:.2f} %"
    if row.cosine is None:
        return "-"
    top1 = f", top-1 {100 * row.top1:.0f} %" if row.top1 is not None else ""
    return f"cosine {row.cosine:.4f}{top1}"


def _what(row: BenchRow) -> str:
    if row.kind == "peer":
        return row.stage
    fallback = " (fp32 shipped: int8 not faster)" if "fallback" in row.stage else ""
    return f"**graphopt {row.pipeline}**{fallback}"


def _cells(row: BenchRow) -> tuple[str, ...]:
    assert row.latency is not None
    latency = f"{row.mean_ms:.3f} mean/image" if row.mean_ms is not None else f"{row.latency.median_ms:.2f}"
    ratio = [("-" if v is None else f"{v:.2f}x") for v in
             (row.speedup_vs_ort_fp32, row.speedup_vs_ort_int8, row.speedup_vs_eager)]  # fmt: skip
    energy = "-" if row.energy_uj is None else f"{row.energy_uj:.1f}"
    size = _si(row.bytes, binary=True)
    if row.zipped_bytes is not None:
        size += f" ({_si(row.zipped_bytes, binary=True)})"
    return (row.model, _what(row), row.numeric, _si(row.macs), size, latency, *ratio, energy,
            _quality(row))  # fmt: skip


def summary_rows(result: BenchResult) -> list[tuple[str, ...]]:
    return [
        _cells(r)
        for r in result.rows
        if r.timed and (r.kind == "artifact" or (r.kind == "peer" and r.stage not in SKIPPED_PEERS))
    ]


def summary_markdown(results: Sequence[BenchResult]) -> str:
    head = "| " + " | ".join(HEADER) + " |"
    rule = "|" + "|".join("---" if i < 3 else "---:" for i in range(len(HEADER))) + "|"
    body = [
        "| " + " | ".join(c.replace("|", "\\|") for c in row) + " |"
        for r in results
        for row in summary_rows(r)
    ]
    machines = sorted({header_lines(r)[1] for r in results})
    lines = [f"- {machine}" for machine in machines]
    lines.append(
        "- timing: batch 1, 1 thread, one pinned core, interleaved rounds; latency = median of round "
        "medians; speed-ups from the statistic each run states (settings.ratio_statistic)"
    )
    lines.append(
        f"- energy: an ESTIMATE from MACs and bytes moved, not measured ({ENERGY_SOURCE}; "
        "graphopt/reporting/energy.py)"
    )
    for r in results:
        fp32, int8 = r.machine.get("peak_fp32_gmacs") or 0.0, r.machine.get("peak_int8_gmacs") or 0.0
        peaks = f"measured peak fp32 {fp32:.1f} / int8 {int8:.1f} GMAC/s"
        lines.append(f"- {r.model}: `{r.command}` ({r.created}; {peaks}; data: {r.data})")
    incomplete = [r.model for r in results if not r.complete or r.errors]
    lines += [f"- INCOMPLETE or with errors: {', '.join(incomplete)}"] if incomplete else []
    return "\n".join([head, rule, *body, "", *lines])
