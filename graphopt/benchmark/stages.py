"""One pipeline of a benchmark: run ``optimize`` with an instrument that keeps each pass's result, then turn
every stage into a candidate row and lower the artifact.

Which stages are timed: an fp32 stage whose graph cost (nodes, params, MACs) differs from the last timed one,
lowered to ONNX fp32 like the artifact. A stage that only changed values (BatchNorm re-estimation, recovery
training) runs the same kernels as the one before it, and an int8 stage before the last is the artifact's
graph with quantizers still training, so these are measured for accuracy but not timed; their rows say so.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch.fx as fx

from graphopt.artifacts.result import OptimizeResult
from graphopt.backends import OnnxRunner, backend_for, export_onnx
from graphopt.early_exit.measure import has_exits
from graphopt.ir.graph import deep_copy
from graphopt.ir.keys import EXPECTED_MACS_SHARE, SHIPPED_FP32, ZIPPED_BYTES
from graphopt.pipeline.driver import CacheScope, OptimizeCall, run_call
from graphopt.pipeline.pass_base import Pass, PassContext
from graphopt.pipeline.pass_manager import PassRecord
from graphopt.pipeline.stage_cache import StageCache
from graphopt.pruning.sparsity import zipped_bytes
from graphopt.quant import is_quantized
from graphopt.quant.modules import ActivationQuantizer
from graphopt.recovery.config import LABELS_ONLY
from graphopt.reporting.notes import Note
from graphopt.reporting.report import StageRecord

from .candidates import Candidate, EagerRunner
from .models import BenchModel
from .pipelines import Pipeline
from .schema import BenchRow

#: Note keys (graphopt.reporting.notes) of the notes the bench puts on its stage and artifact rows; the
#: routine ones (graphopt.benchmark.render.ROUTINE) are not listed under the table.
TOOK = "bench:took"
EXPECTED_MACS = "bench:expected_macs"
UNCHANGED = "bench:unchanged"
TIMED_AS_ARTIFACT = "bench:timed_as_artifact"
SAME_COST_NOT_TIMED = "bench:same_cost_not_timed"
LOWERED_FP32 = "bench:lowered_fp32"


class StageSnapshots:
    """Instrument: a copy of the graph after every pass that modified it."""

    def __init__(self) -> None:
        self.models: dict[str, fx.GraphModule] = {}

    def after_pass(self, pass_: Pass, gm: fx.GraphModule, context: PassContext, record: PassRecord) -> None:
        if record.modified:
            self.models[record.name] = deep_copy(gm)

    def state(self) -> dict[str, fx.GraphModule]:  # a resumed pipeline starts with the stages it shares
        return dict(self.models)  # the copies are private and never modified: sharing them is safe

    def restore(self, state: object) -> None:
        assert isinstance(state, dict)
        self.models = dict(state)


@dataclass
class PipelineRun:
    result: OptimizeResult
    rows: list[BenchRow]  # every stage and the artifact, in order
    candidates: list[Candidate]  # the rows that can be run (evaluated, and timed where their runtime is set)
    exits: bool


def run_pipeline(
    bench: BenchModel,
    pipeline: Pipeline,
    folder: Path,
    *,
    recovery_epochs: int,
    seed: int,
    quiet: bool,
    stages: StageCache | None = None,
) -> PipelineRun:
    """``stages``: shared by the pipelines of one run, so that those starting with the same passes (prune,
    recovery, QAT; then with or without exits) run them once (:mod:`graphopt.pipeline.stage_cache`)."""
    snapshots = StageSnapshots()
    # Training data goes to the stages that learn: recovery after pruning, QAT after int8, exit heads.
    lossy = bool(pipeline.prune or pipeline.sparsify) or pipeline.quantized
    train = bench.train if (lossy and recovery_epochs > 0) or pipeline.early_exit else None
    recovery = bench.fine_tuning(max(recovery_epochs, 1), seed, quiet)
    if pipeline.labels_only:
        recovery = replace(recovery, distill=LABELS_ONLY)
    calibration = bench.calibration if pipeline.quantized or pipeline.prune else None
    call = OptimizeCall(
        bench.model,
        pipeline.target,
        bench.example_inputs,
        calibration_data=calibration,
        train_data=train,
        eval_data=bench.eval,
        prune=pipeline.prune,
        sparsify=pipeline.sparsify,
        early_exit=bench.early_exit if pipeline.early_exit else None,
        validation_data=bench.validation,
        recovery=recovery if train is not None and lossy else None,
        instruments=(snapshots,),
    )
    # What a shared stage read besides its options: the model and seed, and which data it was given
    # (validation data is the bench's own held-out split whenever it has one, the same for every pipeline).
    scope = f"{bench.name}|seed={seed}|calibration={calibration is not None}|train={train is not None}"
    start = time.perf_counter()
    result = run_call(call, None if stages is None else CacheScope(stages, scope))
    backend = backend_for("", pipeline.spec.backend.backend)
    artifact = result.export(folder / f"{_file_stem(pipeline.label)}{backend.suffix}")
    seconds = time.perf_counter() - start
    rows, candidates = _stage_candidates(bench, pipeline, result, snapshots, folder)
    record = result.report.stages[-1]
    exits = has_exits(result.model)
    numeric = "int8" if is_quantized(result.model) and not record.stats.get(SHIPPED_FP32) else "fp32"
    row = _row(bench, pipeline, record, "artifact", numeric, backend.runtime)
    row.bytes, row.seconds = artifact.stat().st_size, seconds
    row.zipped_bytes = int(record.stats[ZIPPED_BYTES])  # export measured it
    if exits:
        row.macs = rows[-1].macs  # the expected MACs of the exit stage
    row.notes.append(Note(TOOK, f"optimize + export took {seconds:.1f} s", seconds=seconds))
    runner = backend.runner(artifact, threads=pipeline.spec.backend.threads)
    candidates.append(Candidate(row, runner, exits=exits, accuracy_measured=True))  # scored by the export
    return PipelineRun(result, [*rows, row], candidates, exits)


def _stage_candidates(
    bench: BenchModel, pipeline: Pipeline, result: OptimizeResult, snapshots: StageSnapshots, folder: Path
) -> tuple[list[BenchRow], list[Candidate]]:
    rows: list[BenchRow] = []
    candidates: list[Candidate] = []
    records = [r for r in result.report.stages if r.kind == "pass"]
    original = result.report.stages[0]
    last_timed = _cost(original)
    for record in records:
        model = snapshots.models.get(record.stage)
        if model is not None:
            int8 = any(isinstance(m, ActivationQuantizer) for m in model.modules())
        else:  # unchanged: the same numeric type as the row above
            int8 = bool(rows) and rows[-1].numeric == "int8"
        row = _row(bench, pipeline, record, "stage", "int8" if int8 else "fp32", "-")
        row.stage += " (no change)" if model is None else ""
        row.seconds = record.seconds
        if EXPECTED_MACS_SHARE in record.stats:  # an exit model's cost depends on where each input leaves
            backbone = rows[-1].macs if rows else original.macs
            row.macs = round(record.stats[EXPECTED_MACS_SHARE] * backbone)
            row.notes.append(Note(
                EXPECTED_MACS, "MACs: expected per input over the held-out samples the thresholds were set on"
            ))  # fmt: skip
        rows.append(row)
        if model is None:  # the model of the row above: its measurements stand for this one
            row.accuracy = row.cosine = row.top1 = None
            row.notes.append(Note(UNCHANGED, "the pass changed nothing"))
            continue  # no runner: the row keeps the report's numbers
        if has_exits(model):
            row.notes.append(
                Note(TIMED_AS_ARTIFACT, "timed as the artifact (exits run in the runtime's If)", why="exits")
            )
            candidates.append(Candidate(row, EagerRunner(model), exits=True))
            continue
        if int8 or _cost(record) == last_timed:
            row.notes.append(
                Note(TIMED_AS_ARTIFACT, "int8 stages are timed as the artifact", why="int8")
                if int8
                else Note(SAME_COST_NOT_TIMED, "same graph cost as the stage before: not timed")
            )
            # the stage reporter scored this very graph in eager PyTorch on the same held-out data
            candidates.append(Candidate(row, EagerRunner(model), accuracy_measured=True))
            continue
        path = export_onnx(
            model, bench.example_inputs, folder / f"{_file_stem(pipeline.label)}_{record.stage}.onnx"
        )
        row.runtime, row.bytes, last_timed = "onnxruntime", path.stat().st_size, _cost(record)
        row.zipped_bytes = zipped_bytes(path)
        row.notes.append(Note(LOWERED_FP32, "this stage lowered to ONNX fp32"))
        candidates.append(Candidate(row, OnnxRunner(path, threads=pipeline.spec.backend.threads)))
    return rows, candidates


def _cost(record: StageRecord) -> tuple[int | None, int, int]:
    return record.nodes, record.params, record.macs


def _row(
    bench: BenchModel, pipeline: Pipeline, record: StageRecord, kind: str, numeric: str, runtime: str
) -> BenchRow:
    return BenchRow(
        model=bench.name,
        pipeline=pipeline.label,
        stage=record.stage,
        kind=kind,  # type: ignore[arg-type]
        numeric=numeric,
        runtime=runtime,
        params=record.params,
        macs=record.macs,
        bytes=record.bytes,
        accuracy=record.accuracy,
        energy_uj=record.energy.total_uj if record.energy else None,
        peak_rss_mib=record.peak_rss_mib,
        cosine=record.agreement.cosine if record.agreement else None,
        top1=record.agreement.top1 if record.agreement else None,
        notes=[f"{k}={v:g}" for k, v in record.stats.items() if k.startswith("skipped")] + list(record.notes),
    )


def _file_stem(label: str) -> str:
    return label.replace("+", "_").replace("=", "")
