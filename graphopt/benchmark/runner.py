"""``run_bench``: one model, one or more pipelines, every peer, one interleaved timing run, one result.

    load model + data ─▶ check every pipeline can run ─▶ machine facts + GEMM peak ─▶ peers
        ─▶ each pipeline: optimize + export (a failure is recorded, the others go on)
        ─▶ accuracy / agreement of every candidate ─▶ interleaved timing ─▶ ratios ─▶ JSON, Markdown, PNG

Timing: one pinned core, one thread, batch 1. Every candidate is called for about ``round_ms`` per round
(at least once), round after round (``rounds``), so a slow patch of the machine hits every candidate of a
round alike; a speed-up is the median over rounds of the ratio of round medians (``paired_ratio``). Models
with early exits are timed per held-out sample instead, interleaved sample by sample with the original in
ORT fp32 and eagerly; their ratios are ratios of means.

The result is written after every step that measured something, so a run that fails or is interrupted still
leaves what it measured (``complete`` says whether it finished).
"""

from __future__ import annotations

import datetime
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from graphopt.backends.timing import (
    calls_for,
    edge_timing,
    interleaved_rounds,
    paired_ratio,
    stats_of_rounds,
    summarize,
)
from graphopt.early_exit.measure import sample_latencies
from graphopt.errors import ConfigError, GraphoptError
from graphopt.progress import Progress

from .candidates import Candidate
from .evaluate import evaluate, probes_of, reference_outputs
from .machine import gemm_peaks, machine_facts
from .models import BenchModel, load_bench_model
from .outputs import write_outputs
from .peer_rows import PEERS, build_peers
from .pipelines import Pipeline
from .schema import REFERENCES, BenchError, BenchResult
from .stages import run_pipeline

Rounds = dict[str, list[np.ndarray]]  # per-call milliseconds of each candidate, round by round


@dataclass(frozen=True)
class BenchConfig:
    model: str
    pipelines: tuple[Pipeline, ...]
    input_shape: tuple[int, ...] | None = None
    synthetic_data: bool = False  # calibrate a pkg.module:factory model on N(0, 1) inputs
    seed: int = 0
    calibration_samples: int = 32
    recovery_epochs: int = 10  # distillation after pruning, and QAT, when the model has training data
    rounds: int = 100
    round_ms: float = 20.0
    measure_peak: bool = True
    out_dir: Path | None = None
    plot: bool = True
    keep_artifacts: bool = False  # keep every timed file in out_dir/artifacts (else a temporary folder)
    quiet: bool = False
    command: str = ""
    extra_notes: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        if not self.pipelines:
            raise ConfigError("give at least one pipeline, e.g. x86-int8")
        if self.rounds < 1 or self.round_ms <= 0 or self.calibration_samples < 1:
            raise ConfigError(
                f"rounds, round_ms and calibration_samples must be positive, got {self.rounds}, "
                f"{self.round_ms}, {self.calibration_samples}"
            )


def run_bench(config: BenchConfig) -> BenchResult:
    bench = load_bench_model(
        config.model,
        input_shape=config.input_shape,
        synthetic_data=config.synthetic_data,
        seed=config.seed,
        calibration_samples=config.calibration_samples,
        quiet=config.quiet,
    )
    for pipeline in config.pipelines:
        bench.check_can_run(pipeline)
    with edge_timing() as core, tempfile.TemporaryDirectory() as tmp:
        folder = config.out_dir / "artifacts" if config.out_dir and config.keep_artifacts else Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        result = _new_result(config, bench, core)
        return _run(config, bench, result, folder)


def _new_result(config: BenchConfig, bench: BenchModel, core: int | None) -> BenchResult:
    machine = machine_facts(threads=1, pinned_core=core, measure_peak=config.measure_peak)
    return BenchResult(
        model=bench.name,
        command=config.command,
        created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        machine=machine.to_dict(),
        settings={
            "batch": 1,
            "threads": 1,
            "pinned_core": core,
            "rounds": config.rounds,
            "round_ms": config.round_ms,
            "seed": config.seed,
            "recovery_epochs": config.recovery_epochs,
            "pipelines": [p.label for p in config.pipelines],
        },
        data=bench.data,
        notes=list(config.extra_notes),
    )


def _run(config: BenchConfig, bench: BenchModel, result: BenchResult, folder: Path) -> BenchResult:
    def save() -> None:
        if config.out_dir is not None:
            write_outputs(result, config.out_dir, plot=config.plot and result.complete)

    peers, notes = build_peers(bench, config.pipelines, folder)
    result.rows += [c.row for c in peers]
    result.notes += notes
    save()
    candidates = list(peers)
    progress = Progress(len(config.pipelines), "pipelines", quiet=config.quiet)
    for pipeline in config.pipelines:
        try:
            run = run_pipeline(
                bench, pipeline, folder, recovery_epochs=config.recovery_epochs, seed=config.seed,
                quiet=config.quiet,
            )  # fmt: skip
        except GraphoptError as exc:
            result.errors.append(BenchError(pipeline.label, type(exc).__name__, str(exc)))
            progress.update(failed=pipeline.label)
            save()
            continue
        result.rows += run.rows
        result.notes += [f"{pipeline.label}: {n}" for n in run.result.report.notes]
        candidates += run.candidates
        progress.update(done=pipeline.label)
        save()
    _evaluate_all(bench, candidates, quiet=config.quiet)
    save()
    rounds = _time_fixed_input(bench, [c for c in candidates if c.timed and not c.exits], config)
    _time_per_sample(bench, peers, [c for c in candidates if c.timed and c.exits])
    if config.measure_peak:
        _remeasure_peak(result)
    _ratios(result, rounds)
    result.complete = True
    save()
    return result


def _evaluate_all(bench: BenchModel, candidates: list[Candidate], *, quiet: bool) -> None:
    probes = probes_of(bench.probes, bench.eval)
    references = reference_outputs(bench.model.eval(), probes)
    progress = Progress(len(candidates), "accuracy and agreement", quiet=quiet)
    for candidate in candidates:
        evaluate(candidate, probes, references, bench.eval, per_sample=candidate.exits)
        progress.update()


def _time_fixed_input(bench: BenchModel, candidates: list[Candidate], config: BenchConfig) -> Rounds:
    """Interleaved rounds on the example input; each candidate gets about ``round_ms`` per round (at least
    one call), so a round is short and a slow patch of the machine falls on every candidate of it."""
    calls = {c.row.key: c.bind(bench.example_inputs) for c in candidates}
    per_round = {
        key: calls_for(call, config.round_ms, at_least=1, at_most=100_000) for key, call in calls.items()
    }
    progress = Progress(config.rounds, f"timing {len(calls)} candidates", quiet=config.quiet)
    rounds = interleaved_rounds(calls, rounds=config.rounds, calls_per_round=per_round,
                                on_round=lambda _: progress.update())  # fmt: skip
    for candidate in candidates:
        candidate.row.latency = stats_of_rounds(rounds[candidate.row.key])
    return rounds


def _time_per_sample(bench: BenchModel, peers: list[Candidate], exits: list[Candidate]) -> None:
    """Each exit model over the held-out split one image at a time, interleaved with the reference peers
    (the original in ORT fp32 and eagerly, ORT quantize_static when run); ratios of means go into the rows."""
    if not exits:
        return
    assert bench.eval is not None  # check_can_run refused exit pipelines without labelled data
    references = {c.row.stage: c for c in peers if c.row.stage in REFERENCES}
    for candidate in exits:
        runners = {"exits": candidate.run, **{name: c.run for name, c in references.items()}}
        times = sample_latencies(runners, bench.eval)
        row = candidate.row
        row.latency = summarize(times["exits"])
        row.mean_ms = float(times["exits"].mean())
        for name in references:
            setattr(row, REFERENCES[name], float(times[name].mean()) / row.mean_ms)
        row.latency_basis = f"per held-out image, batch 1 ({len(times['exits'])} images); ratios of means"


def _remeasure_peak(result: BenchResult) -> None:
    """Measure the peak again now the core has been busy for a while, and keep the higher of the two."""
    fp32, int8 = gemm_peaks()
    machine = result.machine
    machine["peak_fp32_gmacs"] = max(fp32, machine.get("peak_fp32_gmacs") or 0.0)
    machine["peak_int8_gmacs"] = max(int8, machine.get("peak_int8_gmacs") or 0.0)


def _ratios(result: BenchResult, rounds: Rounds) -> None:
    """Speed-ups against the original in ORT fp32 and eagerly (paired per round, see ``paired_ratio``) and
    the fraction of the measured peak."""
    peaks = {"fp32": result.machine.get("peak_fp32_gmacs"), "int8": result.machine.get("peak_int8_gmacs")}
    references = {name: rounds[f"{PEERS} / {name}"] for name in REFERENCES if f"{PEERS} / {name}" in rounds}
    for row in result.rows:
        if row.latency is None or row.mean_ms is not None or row.key not in rounds:
            continue
        for name, reference in references.items():
            setattr(row, REFERENCES[name], paired_ratio(reference, rounds[row.key]))
        peak = peaks.get(row.numeric)
        if peak:
            row.roofline = row.macs / (row.latency.median_ms * 1e-3) / (peak * 1e9)
