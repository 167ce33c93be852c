"""``run_bench``: one model, one or more pipelines, every peer, one interleaved timing run, one result.

    load model + data ─▶ check every pipeline can run ─▶ machine facts + GEMM peak ─▶ peers
        ─▶ each pipeline: optimize + export (a failure is recorded, the others go on)
        ─▶ accuracy / agreement of every candidate ─▶ interleaved timing ─▶ ratios ─▶ JSON, Markdown, PNG

Timing (``timing.py``): one pinned core, one thread, batch 1, short interleaved rounds, speed-ups paired
round by round; models with early exits one held-out image at a time. Rows for an NPU no one here can run
(Ethos-U) carry the compiler's estimate instead (:func:`cost_by_estimate`).

The result is written after every step that measured something, so a run that fails or is interrupted still
leaves what it measured (``complete`` says whether it finished).
"""

from __future__ import annotations

import datetime
import math
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

from graphopt.artifacts.destination import check_destination
from graphopt.backends import OnnxRunner
from graphopt.backends.timing import edge_timing
from graphopt.errors import ConfigError, GraphoptError
from graphopt.pipeline.stage_cache import StageCache
from graphopt.recovery.config import RecoveryConfig
from graphopt.reporting.notes import for_pipeline
from graphopt.reporting.progress import Progress

from .candidates import Candidate
from .evaluate import evaluate, probes_of, reference_outputs
from .machine import machine_facts
from .models import BenchModel, load_bench_model
from .outputs import write_outputs
from .peer_rows import build_peers
from .pipelines import Pipeline
from .schema import BenchError, BenchResult
from .stages import run_pipeline
from .steal import core_ticks, steal_note, steal_share
from .timing import RatioStatistic, Rounds, add_ratios, remeasure_peak, time_fixed_input, time_per_sample


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
    ratio_statistic: RatioStatistic = "min"  # speed-ups from the fastest calls, or "paired-median"
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
        if self.ratio_statistic not in ("min", "paired-median"):
            raise ConfigError(
                f"ratio_statistic must be 'min' or 'paired-median', got {self.ratio_statistic!r}"
            )
        if self.rounds < 1 or not 0 < self.round_ms < math.inf or self.calibration_samples < 1:
            raise ConfigError(
                f"rounds, round_ms and calibration_samples must be positive (and finite), got {self.rounds}, "
                f"{self.round_ms}, {self.calibration_samples}"
            )
        if self.recovery_epochs < 0 or self.seed < 0:
            raise ConfigError(
                f"recovery_epochs (0: no training) and seed must be >= 0, got {self.recovery_epochs}, "
                f"{self.seed}"
            )


def run_bench(config: BenchConfig) -> BenchResult:
    if config.out_dir is not None:  # before any work: a file in the way used to fail at the first save
        check_destination(config.out_dir / "bench.json", "out_dir")
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
    with edge_timing() as core:  # the peak is measured like every latency: one pinned core, one thread
        result = _new_result(config, bench, core)
    with tempfile.TemporaryDirectory() as tmp:
        folder = config.out_dir / "artifacts" if config.out_dir and config.keep_artifacts else Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
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
            "ratio_statistic": config.ratio_statistic,
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

    peers, notes = build_peers(bench, config.pipelines, folder, _peer_fine_tune(config, bench))
    result.rows += [c.row for c in peers]
    result.notes += notes
    save()
    candidates = list(peers)
    progress = Progress(len(config.pipelines), "pipelines", quiet=config.quiet)
    stages = StageCache()  # pipelines sharing their first passes (prune, recovery, QAT) run them once
    for pipeline in config.pipelines:
        try:
            run = run_pipeline(
                bench, pipeline, folder, recovery_epochs=config.recovery_epochs, seed=config.seed,
                quiet=config.quiet, stages=stages,
            )  # fmt: skip
        except GraphoptError as exc:
            result.errors.append(BenchError(pipeline.label, type(exc).__name__, str(exc)))
            progress.update(failed=pipeline.label)
            save()
            continue
        result.rows += run.rows
        result.notes += [for_pipeline(n, pipeline.label) for n in run.result.report.notes]
        candidates += run.candidates
        progress.update(done=pipeline.label)
        save()
    _evaluate_all(bench, candidates, quiet=config.quiet)
    save()
    rounds = _time_all(config, bench, result, peers, candidates)
    add_ratios(result, rounds, config.ratio_statistic)
    result.complete = True
    save()
    return result


def _time_all(
    config: BenchConfig,
    bench: BenchModel,
    result: BenchResult,
    peers: list[Candidate],
    candidates: list[Candidate],
) -> Rounds:
    """Every timed row, interleaved, on one pinned core with one thread: only here (and in the latency
    guard's and the int8 probe's own timing), so that training before it uses every core the run has."""
    estimated = [c for c in candidates if c.timed and hasattr(c.runner, "estimated_ms")]
    cost_by_estimate(estimated)
    fixed = [c for c in candidates if c.timed and not c.exits and c not in estimated]
    with edge_timing() as core:
        ticks = core_ticks(core)
        rounds = time_fixed_input(bench, fixed, rounds=config.rounds, round_ms=config.round_ms,
                                  quiet=config.quiet)  # fmt: skip
        time_per_sample(bench, peers, candidates)
        result.machine["steal_during_timing"] = share = steal_share(ticks, core_ticks(core))
        if note := steal_note(share, core):
            result.notes.append(note)
        if config.measure_peak:
            remeasure_peak(result)
    return rounds


def cost_by_estimate(candidates: list[Candidate]) -> None:
    """Rows costed by a compiler's estimate (Ethos-U: Vela) instead of timed: nothing here runs the NPU,
    and timing the CPU stand-in would answer another question. The latency is the estimate (one value, no
    spread); the row is left out of the interleaved rounds and so of every speed-up against x86 peers,
    which would compare an NPU's estimate with a CPU's measurement."""
    for candidate in candidates:
        runner, row = candidate.runner, candidate.row
        row.latency = runner.time()  # type: ignore[call-arg]
        accelerator = runner.estimate.config.accelerator  # type: ignore[union-attr]
        row.latency_basis = f"Vela's ESTIMATE for {accelerator}, not a measurement (no speed-ups vs CPU rows)"
        if not math.isfinite(row.latency.median_ms):
            row.notes.append(
                "Vela's estimate is inf: an operator runs on the CPU, where Vela counts no cycles (see the "
                "CPU operators in the notes)"
            )


def _peer_fine_tune(config: BenchConfig, bench: BenchModel) -> RecoveryConfig | None:
    """The pruned peers' training: graphopt's whole budget (recovery, and QAT when a pipeline quantizes)."""
    if bench.train is None or config.recovery_epochs < 1:
        return None
    stages = 2 if any(p.quantized for p in config.pipelines) else 1
    return bench.fine_tuning(stages * config.recovery_epochs, config.seed, config.quiet)


def _evaluate_all(bench: BenchModel, candidates: list[Candidate], *, quiet: bool) -> None:
    """Accuracy and agreement of every candidate. ONNX Runtime files are scored several at once, one per
    core: their sessions are single-threaded (they are also what is timed) and release the GIL while they
    run, so one at a time would leave the other cores idle (on fashion_resnet, 10,000 test images through
    some 20 files took over 2 minutes). PyTorch candidates use every core themselves: one after another."""
    probes = probes_of(bench.probes, bench.eval)
    references = reference_outputs(bench.model.eval(), probes)
    progress = Progress(len(candidates), "accuracy and agreement", quiet=quiet)

    def score(candidate: Candidate) -> None:
        evaluate(candidate, probes, references, bench.eval, per_sample=candidate.exits)

    files = [c for c in candidates if isinstance(c.runner, OnnxRunner)]
    for candidate in (c for c in candidates if not isinstance(c.runner, OnnxRunner)):
        score(candidate)
        progress.update()
    workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for done in as_completed([pool.submit(score, c) for c in files]):
            done.result()  # a candidate's failure is raised here, as it would be one at a time
            progress.update()
