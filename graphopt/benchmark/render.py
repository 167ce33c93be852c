"""A benchmark result as a terminal table and as Markdown: the same rows, the same columns, the machine and
the data stated above them, notes and errors below."""

from __future__ import annotations

from graphopt.artifacts.result import WRITTEN
from graphopt.reporting.energy import SOURCE as ENERGY_SOURCE
from graphopt.reporting.report import _si

from .schema import BenchResult, BenchRow
from .stages import LOWERED_FP32, TIMED_AS_ARTIFACT, TOOK, UNCHANGED

HEADER = ("pipeline", "stage", "runtime", "type", "params", "MACs", "bytes", "latency ms (p10-p90)",
          "min ms", "vs ORT fp32", "vs eager", "vs ORT int8", "peak %", "energy µJ*", "accuracy", "cosine",
          "top-1", "peak RSS MiB")  # fmt: skip
LEFT = {0, 1, 2, 3}


def cells(row: BenchRow) -> tuple[str, ...]:
    lat = row.latency
    if lat is None:
        latency, minimum = "-", "-"
    else:
        centre = f"{row.mean_ms:.3f} mean" if row.mean_ms is not None else f"{lat.median_ms:.3f}"
        latency, minimum = f"{centre} ({lat.p10_ms:.3f}-{lat.p90_ms:.3f})", f"{lat.min_ms:.3f}"
    return (
        row.pipeline,
        row.stage,
        row.runtime,
        row.numeric,
        _si(row.params),
        _si(row.macs),
        _si(row.bytes, binary=True),
        latency,
        minimum,
        _ratio(row.speedup_vs_ort_fp32),
        _ratio(row.speedup_vs_eager),
        _ratio(row.speedup_vs_ort_int8),
        "-" if row.roofline is None else f"{100 * row.roofline:.1f}",
        "-" if row.energy_uj is None else f"{row.energy_uj:.2f}",
        "-" if row.accuracy is None else f"{100 * row.accuracy:.2f} %",
        "-" if row.cosine is None else f"{row.cosine:.5f}",
        "-" if row.top1 is None else f"{100 * row.top1:.1f} %",
        "-" if row.peak_rss_mib is None else f"{row.peak_rss_mib:.0f}",
    )


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


_STATISTICS = {
    "min": "fastest call over fastest call (the quiet-machine latency, which repeats best across runs)",
    "paired-median": "median over rounds of the ratio of round medians",
}


def header_lines(result: BenchResult) -> list[str]:
    m = result.machine
    fp32, int8 = m.get("peak_fp32_gmacs"), m.get("peak_int8_gmacs")
    peak = "peak not measured"
    if fp32 and int8:
        peak = f"measured peak (ORT GEMM and 3x3 conv, 1 thread): fp32 {fp32:.1f}, int8 {int8:.1f} GMAC/s"
    versions = ", ".join(f"{k} {v}" for k, v in m["versions"].items())
    pinned = m.get("pinned_core")
    where = f"core {pinned}" if pinned is not None else "not pinned"
    virtual = ", virtualized" if m.get("virtualized") else ""
    rounds, round_ms = result.settings["rounds"], result.settings["round_ms"]
    steal = m.get("steal_during_timing")
    stolen = f"; CPU steal while timing {steal:.1%}" if steal is not None else ""
    return [
        f"graphopt bench: {result.model}" + ("" if result.complete else " (INCOMPLETE: partial result)"),
        f"machine: {m['cpu']} ({m['arch']}, {m['cores']} cores{virtual}); flags: {' '.join(m['flags'])}",
        f"{peak}; timing: batch 1, 1 thread, {where}, {rounds} interleaved rounds of ~{round_ms:g} ms per "
        f"candidate, latency = median of round medians{stolen}",
        f"versions: {versions}",
        f"data: {result.data}",
    ]


def footer_lines(result: BenchResult) -> list[str]:
    lines = [
        "vs ORT fp32 / vs eager / vs ORT int8: the latency of the original model in ONNX Runtime fp32 / in "
        "eager PyTorch (the faster of contiguous and channels-last) / quantized by ORT quantize_static (best "
        "settings) over the row's, from the same run, "
        + _STATISTICS[result.settings.get("ratio_statistic", "paired-median")],
        "peak %: MACs per second over the measured GEMM peak of the row's type; bytes: the file for timed "
        "rows, parameters and buffers otherwise",
        "peak RSS MiB: the bench process's largest resident memory during the stage (artifact: its export), "
        "sampled every 5 ms plus the kernel's high-water mark; earlier pipelines' memory included",
        f"* energy: an ESTIMATE per inference from MACs and bytes moved, not a measurement ({ENERGY_SOURCE}; "
        "assumptions in graphopt/reporting/energy.py)",
        "peers: " + "; ".join(f"{r.stage}: {', '.join(r.notes)}" for r in result.rows if r.kind == "peer"),
    ]
    lines += [f"note: {n}" for n in result.notes]
    for row in result.rows:
        if row.mean_ms is not None:
            lines.append(f"note ({row.key}): latency {row.latency_basis}")
        if row.kind != "peer":
            lines += [f"note ({row.key}): {n}" for n in row.notes if _worth_listing(n)]
    lines += [f"ERROR ({e.pipeline}): {e.error}: {e.message}" for e in result.errors]
    return lines


#: Keys of the routine row notes (what every row of its kind says), left out of the notes under the table.
ROUTINE = frozenset({TOOK, UNCHANGED, LOWERED_FP32, WRITTEN, TIMED_AS_ARTIFACT})


def _worth_listing(note: str) -> bool:
    """Row notes that explain a number (skips, fallbacks, guards), not the routine ones (by key: a plain
    sentence, e.g. one read back from JSON, is listed)."""
    return getattr(note, "key", None) not in ROUTINE


def to_text(result: BenchResult) -> str:
    rows = [HEADER, *(cells(r) for r in result.rows)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(HEADER))]
    lines = header_lines(result)
    for i, row in enumerate(rows):
        lines.append("  ".join(c.ljust(w) if j in LEFT else c.rjust(w) for j, (c, w) in
                               enumerate(zip(row, widths, strict=True))).rstrip())  # fmt: skip
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines + footer_lines(result))


def to_markdown(result: BenchResult) -> str:
    head = "| " + " | ".join(HEADER) + " |"
    rule = "|" + "|".join("---" if i in LEFT else "---:" for i in range(len(HEADER))) + "|"
    body = ["| " + " | ".join(c.replace("|", "\\|") for c in cells(r)) + " |" for r in result.rows]
    top = [f"**{header_lines(result)[0]}**", "", *(f"- {line}" for line in header_lines(result)[1:]), ""]
    return "\n".join([*top, head, rule, *body, "", *(f"- {line}" for line in footer_lines(result))])
