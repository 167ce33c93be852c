"""The benchmark result: rows, the machine they were measured on, and a versioned JSON form.

Schema ``graphopt.bench/1`` (bump :data:`SCHEMA` when a field changes meaning or goes away; adding a field is
compatible). Each row is one thing timed or measured:

- ``kind="peer"``: what a user would run instead (eager fp32, ORT fp32, ORT ``quantize_static``, ...),
- ``kind="stage"``: the model after one pass of a graphopt pipeline (timed when its graph changed),
- ``kind="artifact"``: the file a pipeline ships, run in its backend's runtime.

Ratios: ``speedup_vs_ort_fp32`` is the original model's ORT fp32 latency over the row's,
``speedup_vs_eager`` the original's eager PyTorch latency (the faster of contiguous and channels-last) over
the row's, ``speedup_vs_ort_int8`` ORT ``quantize_static`` (best settings) over the row's; all come from
the same interleaved run (see ``REFERENCES``). ``roofline`` is the row's MACs per second over the measured
peak of its numeric type.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from graphopt.backends.timing import LatencyStats
from graphopt.errors import ConfigError, SerializationError, first_line

SCHEMA = "graphopt.bench/1"
RowKind = Literal["peer", "stage", "artifact"]
ORT_FP32 = "ORT fp32"  # the peer every speed-up is measured against
EAGER_FP32 = "eager fp32"
ORT_INT8 = "ORT quantize_static (best)"
EAGER_CHANNELS_LAST = "eager fp32 channels_last"
#: Each speed-up field and the peers it is measured against: the fastest of them in the run. Eager is the
#: faster of contiguous and channels-last, the best eager PyTorch does on this CPU (and the steadier
#: reference: on ResNet-18 contiguous eager's own fastest call moved 4-6 % between processes).
REFERENCES: dict[str, tuple[str, ...]] = {
    "speedup_vs_ort_fp32": (ORT_FP32,),
    "speedup_vs_eager": (EAGER_FP32, EAGER_CHANNELS_LAST),
    "speedup_vs_ort_int8": (ORT_INT8,),
}


@dataclass
class BenchRow:
    model: str
    pipeline: str  # "peers" for peer rows, else the pipeline label (x86-int8+prune=0.5)
    stage: str
    kind: RowKind
    numeric: str  # fp32 or int8
    runtime: str  # onnxruntime, torch.jit, eager, or "-" for stages not timed
    params: int
    macs: int
    bytes: int
    latency: LatencyStats | None = None
    mean_ms: float | None = None  # early exit: mean per-sample latency over the held-out split
    #: early exit: the same pipeline's artifact without exits, mean per sample over the same samples, timed
    #: interleaved with the exit model (the comparison early exit is for)
    no_exit_mean_ms: float | None = None
    speedup_vs_ort_fp32: float | None = None
    speedup_vs_eager: float | None = None
    speedup_vs_ort_int8: float | None = None  # against ORT quantize_static at its best settings, when run
    roofline: float | None = None
    accuracy: float | None = None  # fraction of labelled test samples right
    cosine: float | None = None  # min over probes of the cosine with the original's outputs
    top1: float | None = None  # fraction of probes whose argmax matches the original's
    spearman: float | None = None  # sentence encoders: Spearman against human similarity ratings
    mean_cosine: float | None = None  # mean over probes (documents) of the cosine with the original's
    #: sentence encoders: min over documents of the cosine between a document's embedding in a right-padded
    #: batch of 8 and its embedding alone, in the same file (1.0: padding and batch mates change nothing)
    padded_cosine: float | None = None
    zipped_bytes: int | None = None  # the file compressed with zlib, for rows that have a file
    energy_uj: float | None = None  # ESTIMATED from MACs and bytes moved (reporting.energy), never measured
    seconds: float | None = None  # how long the pass (stage) or the whole optimize + export (artifact) took
    #: The bench process's peak resident memory (MiB) during the stage, or during the export for an
    #: artifact row (the report's ``peak_rss_mib``: the whole process, earlier pipelines' leftovers included)
    peak_rss_mib: float | None = None
    latency_basis: str = "example input, batch 1"
    notes: list[str] = field(default_factory=list)

    @property
    def key(self) -> str:
        return f"{self.pipeline} / {self.stage}"

    @property
    def timed(self) -> bool:
        return self.latency is not None


@dataclass
class BenchError:
    pipeline: str
    error: str
    message: str


@dataclass
class BenchResult:
    model: str
    command: str
    created: str
    machine: dict[str, Any]
    settings: dict[str, Any]
    data: str
    rows: list[BenchRow] = field(default_factory=list)
    errors: list[BenchError] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    complete: bool = False

    def row(self, pipeline: str, stage: str) -> BenchRow:
        for r in self.rows:
            if r.pipeline == pipeline and r.stage == stage:
                return r
        raise KeyError(f"no row {pipeline} / {stage}; rows: {[r.key for r in self.rows]}")

    def to_dict(self) -> dict[str, Any]:
        return {"schema": SCHEMA, **asdict(self)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BenchResult:
        """The result a :meth:`to_dict` wrote; anything else (another schema, a list, rows that are not
        objects) is refused with a :class:`ConfigError` naming what is wrong."""
        if not isinstance(data, dict):
            raise ConfigError(f"not a {SCHEMA} result: a JSON {type(data).__name__}, not an object")
        if data.get("schema") != SCHEMA:
            raise ConfigError(f"not a {SCHEMA} result (schema {data.get('schema')!r}); rerun graphopt bench")
        rows = [_row(r) for r in _objects(data, "rows", required=True)]
        errors = [BenchError(**e) for e in _objects(data, "errors")]
        known = {f.name for f in fields(cls)} - {"rows", "errors"}
        return cls(**{k: v for k, v in data.items() if k in known}, rows=rows, errors=errors)

    @classmethod
    def load(cls, path: str | Path) -> BenchResult:
        """The result saved at ``path``. A file that is not one (unreadable, not UTF-8 JSON, nested too deep
        to parse, of another form) is refused with a :class:`SerializationError` naming the file."""
        try:
            return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))
        # UnicodeDecodeError and JSONDecodeError are ValueErrors; a deeply nested file exhausts the parser's
        # recursion; ConfigError (a ValueError) is from_dict's refusal of a well-formed file of another form.
        except (OSError, ValueError, RecursionError, KeyError, TypeError) as exc:
            raise SerializationError(
                f"cannot read a benchmark result from {path}: {type(exc).__name__}: {first_line(exc)}; "
                "give a bench.json that `graphopt bench` wrote"
            ) from exc


def _objects(data: dict[str, Any], key: str, *, required: bool = False) -> list[dict[str, Any]]:
    """``data[key]``, a list of JSON objects (an absent key: none, unless ``required``)."""
    if required and key not in data:
        raise ConfigError(f"not a {SCHEMA} result: it has no {key!r}")
    items = data.get(key, [])
    if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
        raise ConfigError(f"not a {SCHEMA} result: {key!r} must be a list of objects, got {items!r:.80}")
    return items


def _row(data: dict[str, Any]) -> BenchRow:
    known = {f.name for f in fields(BenchRow)}
    values = {k: v for k, v in data.items() if k in known}
    if values.get("latency") is not None:
        if not isinstance(values["latency"], dict):
            raise ConfigError(f"not a {SCHEMA} result: a row's latency is {values['latency']!r:.80}")
        values["latency"] = LatencyStats(**values["latency"])
    return BenchRow(**values)
