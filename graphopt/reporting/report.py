"""The per-stage report: one row for the original, one per pass, one per lowered artifact.

Columns: nodes, params, MACs, bytes (parameter+buffer bytes for in-memory stages, file bytes for artifacts),
pass time, the process's peak resident memory during the stage (:mod:`graphopt.reporting.memory`), latency
in the backend runtime (median, when measured), speed-up against the original model run in ONNX Runtime fp32
(eager PyTorch is a weak baseline, so it is not the reference), output agreement with the original (max abs
error, cosine, top-1), accuracy on labelled data when given, and the pass statistics including every reason
a rewrite did not fire.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from graphopt.backends.timing import LatencyStats
from graphopt.reporting.energy import SOURCE as ENERGY_SOURCE
from graphopt.reporting.energy import EnergyEstimate
from graphopt.reporting.notes import Note, note_keys, the_note
from graphopt.reporting.numerics import Agreement

SCHEMA_VERSION = 1
StageKind = Literal["original", "pass", "artifact", "baseline"]


@dataclass
class StageRecord:
    stage: str
    kind: StageKind
    params: int
    macs: int
    bytes: int
    nodes: int | None = None
    seconds: float | None = None
    modified: bool | None = None
    latency: LatencyStats | None = None
    agreement: Agreement | None = None
    accuracy: float | None = None
    exact_check_max_abs: float | None = None  # exact passes: max output change vs the previous stage
    energy: EnergyEstimate | None = None  # an estimate from op counts (reporting.energy), never a measurement
    stats: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    backend: str | None = None  # artifact rows: the backend that wrote the file
    #: The process's peak resident set while the stage ran, in MiB (2**20 bytes): sampled every 5 ms plus
    #: the kernel's exact high-water mark (:mod:`graphopt.reporting.memory`); the whole process, not only
    #: what the stage allocated. Artifact rows: the whole export (lowering, latency guard, check).
    peak_rss_mib: float | None = None

    def note(self, key: str) -> Note:
        """The one note of this row filed under ``key`` (:mod:`graphopt.reporting.notes`); a ``KeyError``
        naming the row's keys when there is none or several."""
        return the_note(self, key)

    def note_keys(self) -> list[str]:
        """The keys of this row's keyed notes, in order (plain-sentence notes have none)."""
        return note_keys(self)


@dataclass
class Report:
    """Per-stage records of one ``optimize`` run (and of the artifacts exported from it)."""

    model: str
    target: str
    stages: list[StageRecord] = field(default_factory=list)
    leaves: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    tables: dict[str, list[dict[str, object]]] = field(default_factory=dict)
    #: Which capture built the IR ("torch.fx", "torch.export") and, when not fx, why.
    capture: str = "torch.fx"
    capture_seconds: float | None = None

    def add(self, record: StageRecord) -> StageRecord:
        self.stages.append(record)
        return record

    def stage(self, name: str) -> StageRecord:
        """The last record called ``name``."""
        for record in reversed(self.stages):
            if record.stage == name:
                return record
        raise KeyError(f"no stage {name!r}; stages: {[r.stage for r in self.stages]}")

    def artifact(self, backend: str = "onnx") -> StageRecord:
        """The last artifact exported with ``backend`` (whichever model the latency guard shipped)."""
        for record in reversed(self.stages):
            if record.kind == "artifact" and record.backend == backend:
                return record
        raise KeyError(f"no {backend} artifact; stages: {[r.stage for r in self.stages]}")

    def note(self, key: str) -> Note:
        """The one run-level note filed under ``key`` (:mod:`graphopt.reporting.notes`): what tests and
        tools read instead of the sentence; a ``KeyError`` naming the keys present when none or several."""
        return the_note(self, key)

    def note_keys(self) -> list[str]:
        """The keys of the run-level keyed notes, in order (a row's: ``report.stage(name).note_keys()``)."""
        return note_keys(self)

    @property
    def baseline_latency_ms(self) -> float | None:
        """Median latency of the original model in ONNX Runtime fp32, the speed-up reference."""
        for record in self.stages:
            if record.kind == "baseline" and record.latency is not None:
                return record.latency.median_ms
        return None

    def speedup(self, record: StageRecord) -> float | None:
        base = self.baseline_latency_ms
        if base is None or record.latency is None or record.latency.median_ms <= 0:
            return None
        return base / record.latency.median_ms

    # ----------------------------------------------------------------------------------------- rendering
    _HEADER = ("stage", "nodes", "params", "MACs", "bytes", "energy µJ (est.)", "time s", "peak RSS MiB",
               "latency ms", "vs ORT fp32", "max|Δ|", "cosine", "top-1", "accuracy", "stats")  # fmt: skip
    _LEFT = (0, 14)

    def rows(self) -> list[tuple[str, ...]]:
        return [self._row(r) for r in self.stages]

    def _row(self, r: StageRecord) -> tuple[str, ...]:
        agree = r.agreement
        speedup = self.speedup(r)
        stage = r.stage if r.modified is not False else f"{r.stage} (no change)"
        return (
            stage,
            _fmt(r.nodes),
            _si(r.params),
            _si(r.macs),
            _si(r.bytes, binary=True),
            _fmt(r.energy.total_uj if r.energy else None, ".2f"),
            _fmt(r.seconds, ".3f"),
            _fmt(r.peak_rss_mib, ".0f"),
            _fmt(r.latency.median_ms if r.latency else None, ".3f"),
            f"{speedup:.2f}x" if speedup is not None else "-",
            _fmt(agree.max_abs if agree else None, ".1e"),
            _fmt(agree.cosine if agree else None, ".6f"),
            _fmt(agree.top1 * 100 if agree and agree.top1 is not None else None, ".2f", "%"),
            _fmt(r.accuracy * 100 if r.accuracy is not None else None, ".2f", "%"),
            ", ".join(f"{k}={v:g}" for k, v in r.stats.items()) or "-",
        )

    def __str__(self) -> str:
        rows = [self._HEADER, *self.rows()]
        widths = [max(len(row[i]) for row in rows) for i in range(len(self._HEADER))]
        took = f" in {self.capture_seconds:.2f} s" if self.capture_seconds is not None else ""
        lines = [f"graphopt report: {self.model} -> {self.target} (captured with {self.capture}{took})"]
        for i, row in enumerate(rows):
            cells = [
                c.ljust(w) if j in self._LEFT else c.rjust(w)
                for j, (c, w) in enumerate(zip(row, widths, strict=True))
            ]
            lines.append("  ".join(cells).rstrip())
            if i == 0:
                lines.append("  ".join("-" * w for w in widths))
        lines.extend(self._footer())
        for title, rows in self.tables.items():
            lines.append(f"{title}:")
            lines.extend("  " + ", ".join(f"{k}={v}" for k, v in row.items()) for row in rows)
        return "\n".join(lines)

    def _footer(self) -> list[str]:
        lines = []
        if any(r.energy is not None for r in self.stages):
            lines.append(f"energy is an ESTIMATE from MACs and bytes moved, not measured ({ENERGY_SOURCE})")
        if any(r.peak_rss_mib is not None for r in self.stages):
            lines.append(
                "peak RSS: the whole process's largest resident memory while the stage ran (sampled every "
                "5 ms plus the kernel's high-water mark), not only what the stage allocated"
            )
        if self.baseline_latency_ms is not None:
            lines.append(
                "speed-up is against the original model run in ONNX Runtime fp32 (one thread, batch 1)"
            )
        for name, reason in self.leaves.items():
            lines.append(f"opaque leaf (not optimized inside): {name}: {reason}")
        lines.extend(f"note: {n}" for n in self.notes)
        for r in self.stages:
            lines.extend(f"note ({r.stage}): {n}" for n in r.notes)
        return lines

    def to_markdown(self) -> str:
        head = "| " + " | ".join(self._HEADER) + " |"
        rule = "|" + "|".join("---" if i in self._LEFT else "---:" for i in range(len(self._HEADER))) + "|"
        body = ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in self.rows()]
        extra = [f"- {line}" for line in self._footer()]
        return "\n".join([f"**{self.model} -> {self.target}**", "", head, rule, *body, "", *extra]).rstrip()

    def to_dict(self) -> dict[str, Any]:
        stages = []
        for r in self.stages:
            d = asdict(r)
            d["speedup_vs_ort_fp32"] = self.speedup(r)
            stages.append(d)
        return {"schema": SCHEMA_VERSION, "model": self.model, "target": self.target, "capture": self.capture,
                "capture_seconds": self.capture_seconds,
                "stages": stages, "leaves": dict(self.leaves), "notes": list(self.notes),
                "tables": self.tables}  # fmt: skip

    def to_json(self, indent: int = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)


def _fmt(value: float | int | None, spec: str = "", suffix: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{suffix}"


def _si(value: int, binary: bool = False) -> str:
    base, units = (1024.0, ("B", "KiB", "MiB", "GiB")) if binary else (1000.0, ("", "k", "M", "G"))
    v = float(value)
    for unit in units:
        if abs(v) < base or unit == units[-1]:
            return f"{v:.0f}{unit}" if unit in ("", "B") else f"{v:.2f}{unit}"
        v /= base
    return str(value)
