"""Goal-driven optimize: try the plans of the search space, measure each as it ships, return the best
artifact that meets every goal (or the closest one, saying what it misses), with the whole table.

    space (prune x int8 x exits x backend) --bounds--> queue --run_call (stage cache)--> export, time, score
        --> judge (goals, Pareto front) --> choose --> OptimizeResult + .search (SearchResult)

Stages shared between candidates run once (:mod:`graphopt.pipeline.stage_cache`); candidates measured by an
earlier search on the same model and data (``SearchConfig(reuse=previous.search)``) are not run again.
Candidates tune (exit thresholds, fp32 fall-backs) on one share of ``validation_data`` and are scored and
chosen on the rest (:mod:`graphopt.search.data`); test data (``eval_data``) is only reported.
"""

from __future__ import annotations

import dataclasses
import hashlib
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from graphopt.artifacts.result import OptimizeResult
from graphopt.backends.timing import torch_threads
from graphopt.data.batches import Batch
from graphopt.data.labelled import labelled_batches
from graphopt.errors import ConfigError, GraphoptError
from graphopt.frontend.inputs import check_example_inputs, private_eval_copy
from graphopt.pipeline.driver import CacheScope, OptimizeCall, dynamic_dims, plan_of, run_call
from graphopt.pipeline.plan import INT8_SLOTS
from graphopt.pipeline.registry import pass_class
from graphopt.pipeline.stage_cache import StageCache
from graphopt.reporting.notes import Note
from graphopt.search.byte_budget import int8_overhead
from graphopt.search.data import (
    MIN_SAMPLES_TO_SPLIT,
    check_search_data,
    data_digest,
    materialized,
    scope_of,
    split_tune_score,
)
from graphopt.search.estimated_baseline import EstimatedBaseline, costs_by_estimate
from graphopt.search.goals import Goals
from graphopt.search.measure import Baseline, Measured, measure_candidate, retime_together
from graphopt.search.queue import build_queue
from graphopt.search.rows import IN_PROCESS, CandidateRow, choose, judge
from graphopt.search.space import SearchConfig, SearchPoint, SpaceLimits
from graphopt.search.store import CandidateStore
from graphopt.search.variants import Variants, calibrates, falls_back_by_itself, quantizes
from graphopt.targets import Target, resolve_target

#: Note keys (graphopt.reporting.notes) of the notes a search adds to the returned report (the candidate
#: store's are in graphopt.search.store).
OPTIMISTIC_SCORES = "search:optimistic_scores"
REUSE_MISMATCH = "search:reuse_mismatch"
NO_TRAIN_DATA = "search:no_train_data"
FINALISTS_RETIMED = "search:finalists_retimed"
REBUILT_SAME = "search:rebuilt_same"
REBUILT_DIFFERS = "search:rebuilt_differs"
VERDICT = "search:verdict"
SUMMARY = "search:summary"


@dataclass
class SearchResult:
    """Every candidate of a search, the goals, and which row was returned and why."""

    goals: Goals
    rows: list[CandidateRow]
    verdict: str  # a keyed note (VERDICT) when a search wrote it: its facts say what was returned
    seconds: float
    baseline_ms: float | None
    stage_cache: StageCache = field(repr=False)
    #: Measured candidates by (scope, point), with their results: what ``SearchConfig(reuse=...)`` reads.
    outcomes: dict[tuple[str, SearchPoint], tuple[CandidateRow, OptimizeResult]] = field(repr=False)
    scope: str = ""

    @property
    def chosen(self) -> CandidateRow | None:
        return next((r for r in self.rows if r.chosen), None)

    @property
    def meets_goals(self) -> bool:
        """Whether the returned candidate meets every goal (else it is the closest: ``chosen.misses``)."""
        chosen = self.chosen
        return chosen is not None and not chosen.misses

    def table(self) -> list[dict[str, object]]:
        return [r.as_dict() for r in self.rows]

    def front(self) -> list[CandidateRow]:
        return [r for r in self.rows if r.has_measurement and not r.dominated]

    def save_plot(self, path: str | Path) -> Path:
        from graphopt.search.plot import plot_search

        return plot_search(self, Path(path))


def search_optimize(call: OptimizeCall, goals: Goals, config: SearchConfig) -> OptimizeResult:
    """The goal-driven :func:`graphopt.optimize` (module docstring)."""
    if not isinstance(goals, Goals):
        raise ConfigError(f"goals must be a graphopt.Goals, got {type(goals).__name__}")
    if not isinstance(config, SearchConfig):
        raise ConfigError(f"search must be a graphopt.SearchConfig, got {type(config).__name__}")
    started = time.perf_counter()
    spec = resolve_target(call.target)
    check_search_data(call, goals)
    check_int8_data(call, config, spec)
    if config.cluster is not None:
        from graphopt.search.cluster import check_cluster_support

        check_cluster_support()
    # before any work: a cache folder that cannot be written is a ConfigError now, not after a candidate
    store = CandidateStore(Path(config.cache_dir)) if config.cache_dir is not None else None
    inputs = check_example_inputs(call.example_inputs)
    dims = dynamic_dims(call.dynamic_shapes, call.model, inputs)
    call = materialized(call, goals, inputs, dims)
    tune, score = split_tune_score(call.validation_data, config.tune_share)
    call = dataclasses.replace(call, validation_data=tune)
    shared = tune is score and tune is not None
    original = private_eval_copy(call.model)
    with tempfile.TemporaryDirectory(prefix="graphopt-search-") as tmp:
        folder = Path(tmp)
        fidelity = goals.min_cosine is not None or (score is not None and not labelled_batches(score))
        baseline = Baseline.of(
            original, inputs, spec.backend.threads, folder, score, call.eval_data,
            estimated=_estimated_baseline(call, config, spec, inputs, folder), fidelity=fidelity,
            dynamic=dims,
        )  # fmt: skip
        run = _SearchRun(call, goals, config, spec, baseline, folder, score, store)
        if shared:
            run.notes.append(Note(
                OPTIMISTIC_SCORES,
                f"validation_data has under {MIN_SAMPLES_TO_SPLIT} samples: exit thresholds and fall-backs "
                "are tuned on the same samples the candidates are scored on, so their scores are optimistic; "
                "the test columns (eval_data) are not",
                min_samples=MIN_SAMPLES_TO_SPLIT,
            ))  # fmt: skip
        run.run_all()
        run.retime_finalists()
        best = run.rebuild_choice()
    return run.finish(best, time.perf_counter() - started)


class _SearchRun:
    """One search: the queue of candidates, the caches, and the rows as they are measured."""

    def __init__(
        self, call: OptimizeCall, goals: Goals, config: SearchConfig, spec: Target, baseline: Baseline,
        folder: Path, score: list[Batch] | None, store: CandidateStore | None,
    ) -> None:  # fmt: skip
        self.call, self.goals, self.config, self.spec = call, goals, config, spec
        self.baseline, self.folder, self.score = baseline, folder, score
        self.scope = scope_of(call, spec)
        previous = config.reuse
        same = previous is not None and previous.scope == self.scope
        self.stage_cache = previous.stage_cache if same and previous else StageCache()
        self.outcomes = dict(previous.outcomes) if same and previous else {}
        self.results: dict[int, OptimizeResult] = {}
        self.artifacts: dict[str, CandidateRow] = {}  # sha256 of each measured file
        # row id -> sha256 of its artifact as read from the store, or as a cluster worker built it
        self.stored_digests: dict[int, str] = {}
        #: Torch threads a worker-built candidate is rebuilt with here: the workers' (set by the cluster run).
        self.rebuild_threads: int | None = None
        self.store = store
        self.score_digest = data_digest(score)
        self.variants = Variants(call, config, goals, spec, int8_overhead(baseline.runner.path, call.model))
        limits = SpaceLimits(
            int8_target=quantizes(spec),
            can_exit=call.train_data is not None and labelled_batches(call.validation_data),
            can_fall_back=goals.needs_accuracy or falls_back_by_itself(spec),
            can_improve=calibrates(spec, call.passes),
            backends=config.backends or (spec.backend.backend,),
            size_goal=goals.max_bytes is not None,
        )
        params = sum(p.numel() for p in call.model.parameters())
        first_exit = min(self.variants.exit_config().fractions or (0.33,))
        self.rows = build_queue(config, goals, limits, params, first_exit)
        self.notes: list[str] = []
        if previous is not None and not same:
            self.notes.append(Note(
                REUSE_MISMATCH,
                "search: SearchConfig.reuse is a search on another model, data or target: nothing was reused",
            ))  # fmt: skip
        if call.train_data is None:
            self.notes.append(Note(
                NO_TRAIN_DATA,
                "no train_data: post-training candidates only (pruning without recovery, int8 without QAT, "
                "no exits); with train_data, pruned models are recovered by distillation, int8 is "
                "trained by QAT and exit heads can be trained",
            ))  # fmt: skip

    def run_all(self) -> None:
        queue = [r for r in self.rows if r.status == "queued"]
        if self.config.cluster is not None:
            from graphopt.search.cluster_queue import run_on_cluster  # on use: it imports Dask

            run_on_cluster(self, queue)
            return
        started = time.perf_counter()
        spent: list[float] = []
        for i, row in enumerate(queue):
            elapsed = time.perf_counter() - started
            mean = sum(spent) / len(spent) if spent else 0.0
            if elapsed + mean > 60 * self.config.max_minutes:
                for late in queue[i:]:
                    late.status, late.why = "not run", f"time budget max_minutes={self.config.max_minutes:g}"
                break
            t0 = time.perf_counter()
            self._run_one(i, row)
            row.seconds = time.perf_counter() - t0
            spent.append(row.seconds)
            self.progress(i + 1, len(queue), row)

    def retime_finalists(self) -> None:
        """The rows on the Pareto front or meeting every goal, timed again together (one session). Only
        artifacts this run built: a cached artifact is a file from disk, never loaded or run before its
        plan rebuilds it (``rebuild_choice``); cached rows keep the timing stored with them."""
        judge(self.rows, self.goals)
        finalists = [r for r in self.rows if r.status == "measured" and (not r.dominated or not r.misses)]
        # an estimate (a cost model's, Ethos-U: Vela) has no noise to even out: those keep their rows
        finalists = [r for r in finalists if r.measured is not None and not r.measured.estimated]
        if len(finalists) < 2:
            return
        measured = [r.measured for r in finalists if r.measured is not None]
        retime_together(measured, self.baseline, self.score, self.spec.backend.threads)
        for row in finalists:
            row.misses = self.goals.misses(row.metrics())
        self.notes.append(Note(
            FINALISTS_RETIMED,
            f"search: the {len(finalists)} finalists (Pareto front or every goal met) were timed again side "
            "by side in one session; their rows show that timing",
            finalists=tuple(r.point.label for r in finalists),
        ))  # fmt: skip

    def _run_one(self, index: int, row: CandidateRow) -> None:
        try:
            settled, stored_key = self.settle(row)
            if settled:
                return
            result = run_call(self.variants.of(row.point), CacheScope(self.stage_cache, self.scope))
            measured = measure_candidate(
                result, row.point.backend, self.folder / f"candidate-{index}", self.baseline,
                self.score, self.call.eval_data,
            )  # fmt: skip
        except GraphoptError as exc:
            row.status, row.why = "failed", f"{type(exc).__name__}: {exc}"
            return
        self.accept(row, measured, stored_key, result)

    def settle(self, row: CandidateRow) -> tuple[bool, str | None]:
        """Whether ``row`` is settled without running (an earlier search's or the on-disk cache's
        measurement), and the key it is stored under in the cache (None without one)."""
        key = (self.scope, row.point)
        if key in self.outcomes:
            earlier, result = self.outcomes[key]
            self._record(row, earlier.measured, earlier.accuracy_drop, earlier.test_drop, "reused")
            row.why = "measured by an earlier search (SearchConfig.reuse)"
            self.results[id(row)] = result
            return True, None
        stored_key = self._stored_key(self.variants.of(row.point), row.point)
        return self._from_store(row, stored_key), stored_key

    def accept(
        self, row: CandidateRow, measured: Measured, stored_key: str | None, result: OptimizeResult | None
    ) -> None:
        """Record a measured candidate: ``result`` when it was built here; without one (built on a worker)
        the plan runs again here if it is chosen, and must give the same file (:meth:`rebuild_choice`)."""
        digest = _file_digest(measured.path)
        twin = self.artifacts.setdefault(digest, row)
        if twin is not row:  # e.g. fall-backs that kept every layer int8: not a second choice
            row.status, row.why = "duplicate", f"writes the same artifact as {twin.point.label}"
            return
        self._measured(row, measured)
        if result is not None:
            self.results[id(row)] = result
            self.outcomes[(self.scope, row.point)] = (row, result)
        else:
            self.stored_digests[id(row)] = digest
        if self.store is not None and stored_key is not None:
            self.store.save(stored_key, measured, row.accuracy_drop, row.test_drop, row.point.label)

    def _measured(self, row: CandidateRow, measured: Measured) -> None:
        drop = self.baseline.drop(measured.accuracy)
        self._record(row, measured, drop, self.baseline.drop(measured.test_accuracy, test=True), "measured")

    def _record(
        self,
        row: CandidateRow,
        measured: Measured | None,
        drop: float | None,
        test_drop: float | None,
        status: str,
    ) -> None:
        row.measured, row.accuracy_drop, row.test_drop, row.status = measured, drop, test_drop, status
        row.misses = self.goals.misses(row.metrics())

    def _stored_key(self, variant: OptimizeCall, point: SearchPoint) -> str | None:
        if self.store is None:
            return None
        passes = [repr(p) for p in plan_of(variant).passes()]
        return self.store.key(self.scope, point.backend, self.score_digest, *passes)

    def _from_store(self, row: CandidateRow, key: str | None) -> bool:
        """Fill ``row`` from the candidate store when it holds this plan's measurement."""
        stored = None if self.store is None or key is None else self.store.load(key, self.folder)
        if stored is None:
            return False
        self._record(row, stored.measured, stored.accuracy_drop, stored.test_drop, "cached")
        row.why = f"measured by an earlier run ({self.config.cache_dir})"
        self.stored_digests[id(row)] = stored.artifact_sha256
        self.artifacts.setdefault(stored.artifact_sha256, row)
        return True

    def rebuild_choice(self) -> CandidateRow | None:
        """Choose; a choice measured by an earlier run has its plan run again to rebuild its result (the
        same artifact, checked byte for byte; else it is measured afresh and chosen again)."""
        judge(self.rows, self.goals)
        best = choose(self.rows, self.config.tie_break)
        if best is None or id(best) in self.results:
            return best
        assert best.measured is not None
        cached_sha, where = self.stored_digests[id(best)], _built_where(best)
        with torch_threads(self.rebuild_threads if best.ran_on != IN_PROCESS else None):
            result = run_call(self.variants.of(best.point), CacheScope(self.stage_cache, self.scope))
        measured = measure_candidate(result, best.point.backend, self.folder / "rebuilt", self.baseline,
                                     self.score, self.call.eval_data)  # fmt: skip
        self.results[id(best)] = result
        if _file_digest(measured.path) == cached_sha:
            self.notes.append(Note(
                REBUILT_SAME,
                f"search: {best.point.label} was {where}; rebuilt here, same artifact",
                candidate=best.point.label,
            ))  # fmt: skip
            return best
        self._measured(best, measured)
        self.notes.append(Note(
            REBUILT_DIFFERS,
            f"search: {best.point.label} was {where}; rebuilt here to a different artifact: "
            "measured afresh",
            candidate=best.point.label,
        ))  # fmt: skip
        for row in self.rows:
            row.chosen = False
        return self.rebuild_choice()

    def progress(self, done: int, total: int, row: CandidateRow) -> None:
        if self.config.quiet:
            return
        d = row.as_dict()
        quality = f"cosine {d['cosine']}" if d["drop_pp"] is None and d["cosine"] is not None else ""
        quality = quality or f"drop {d['drop_pp']} pp"
        detail = (
            f"{d['speedup']}x, {d['bytes']} B, {quality}, goals: {d['goals']}"
            if row.has_measurement
            else f"{row.status}: {row.why}"
        )
        where = "" if row.ran_on == IN_PROCESS else f" on {row.ran_on}"
        line = f"search {done}/{total} {row.point.label}: {detail} ({row.seconds:.0f} s{where})"
        print(line, file=sys.stderr)

    def finish(self, best: CandidateRow | None, seconds: float) -> OptimizeResult:
        if best is None:
            failures = "; ".join(f"{r.point.label}: {r.why}" for r in self.rows if r.status == "failed")
            raise GraphoptError(
                f"the search measured no candidate ({failures or 'all were ruled out or not run'}); "
                "widen SearchConfig (prune_ratios, int8, max_minutes) or relax the goals"
            )
        result = _pinned(self.results[id(best)])
        verdict = _verdict(best, self.goals)
        result.search = SearchResult(
            self.goals, self.rows, verdict, round(seconds, 1), self.baseline_ms(best), self.stage_cache,
            self.outcomes, self.scope,
        )  # fmt: skip
        result.report.tables["search"] = result.search.table()
        stored_notes = self.store.notes if self.store is not None else []
        result.report.notes.extend([*self.notes, *stored_notes, verdict, self._cache_note()])
        return result

    def baseline_ms(self, row: CandidateRow) -> float | None:
        return None if row.measured is None else row.measured.baseline_ms

    def _cache_note(self) -> Note:
        cache = self.stage_cache
        counts = {
            "measured": sum(r.has_measurement for r in self.rows),
            "ruled_out": sum(r.status == "ruled out" for r in self.rows),
            "not_run": sum(r.status == "not run" for r in self.rows),
            "runs_resumed": cache.hits,
            "passes_skipped": cache.passes_skipped,
        }
        text = (
            f"search: {counts['measured']} candidates measured, {counts['ruled_out']} ruled out by "
            f"estimates, {counts['not_run']} not run; stage cache: {cache.hits} runs resumed, "
            f"{cache.passes_skipped} passes not run again"
        )
        return Note(SUMMARY, text, **counts)


def check_int8_data(call: OptimizeCall, config: SearchConfig, spec: Target) -> None:
    """Up front: int8 candidates on an int8 target need the data its int8 passes read (calibration). Without
    it every int8 candidate would fail after the fp32 ones ran, and the search would quietly return fp32."""
    if not quantizes(spec) or all(mode == "off" for mode in config.int8):
        return
    int8_passes = [pass_class(p.name) for p in spec.passes if pass_class(p.name).slot in INT8_SLOTS]
    if call.calibration_data is None and any("calibration_data" in p.needs for p in int8_passes):
        raise ConfigError(
            f"target {spec.name} calibrates its int8 candidates (SearchConfig.int8={config.int8}) and no "
            "calibration_data was given: pass calibration_data=... (an iterable of input batches shaped like "
            "example_inputs, about 100 samples), or search fp32 only with SearchConfig(int8=('off',))"
        )


def _estimated_baseline(
    call: OptimizeCall, config: SearchConfig, spec: Target, inputs: tuple[torch.Tensor, ...], folder: Path
) -> EstimatedBaseline | None:
    """The speed-up baseline of the search's cost-model backends (Ethos-U: the unpruned original int8,
    compiled and costed by Vela; :mod:`graphopt.search.estimated_baseline`), or None where it has none."""
    backends = config.backends or (spec.backend.backend,)
    if not any(costs_by_estimate(b) for b in backends):
        return None
    return EstimatedBaseline(call, spec, inputs, folder)


def _verdict(best: CandidateRow, goals: Goals) -> Note:
    """What the search returned and whether it meets the goals (facts: ``returned``, the candidate's label;
    ``meets_goals``; ``misses``, the goals it misses by their CLI names; ``speedup`` against ORT fp32, or
    on a cost-model backend against the unpruned int8 original's estimate)."""
    assert best.measured is not None
    facts = {
        "returned": best.point.label,
        "meets_goals": not best.misses,
        "misses": tuple(m.goal.cli for m in best.misses),
        "speedup": best.measured.speedup,
    }
    if best.measured.speedup < 1:
        slower = (
            f"; it is slower than {best.measured.baseline_name} ({best.measured.speedup:.2f}x): no faster "
            "one did"
        )
    else:
        slower = ""
    if not best.misses:
        return Note(
            VERDICT, f"search: returned {best.point.label}, which meets every goal ({goals}){slower}", **facts
        )
    misses = "; ".join(str(m) for m in best.misses)
    text = (
        f"search: no candidate meets every goal ({goals}); returned the closest, {best.point.label}: {misses}"
    )
    return Note(VERDICT, text, **facts)


def _pinned(result: OptimizeResult) -> OptimizeResult:
    """The result exporting the artifact that was measured: candidates are exported without the latency
    guard (the search weighs int8 against fp32 itself), so a second export must not run one either."""
    result.fp32_model = None
    return result


def _built_where(row: CandidateRow) -> str:
    return "measured by an earlier run" if row.status == "cached" else f"built on {row.ran_on}"


def _file_digest(path: Path) -> str:
    """What two candidates' artifacts are compared by (same bytes: the same candidate)."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


__all__ = ["Batch", "SearchResult", "search_optimize"]
