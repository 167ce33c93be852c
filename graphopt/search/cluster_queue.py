"""The search's queue run on a Dask cluster (:mod:`graphopt.search.cluster` says what runs where).

Candidates that share stages (the same prune ratio and importance: pruning and its recovery, which every
fp32, int8 and exit variant of the group starts from) form a group, and each worker runs whole groups, one
candidate at a time, in queue order: a worker's stage cache then holds its group's shared stages, so they
run once per group as in this process, and groups run in parallel. A group is pinned to its worker while
that worker lives (a candidate whose worker died runs on any). The time budget works as in this process:
a candidate is not submitted once the time spent plus the mean candidate time (divided among the workers)
would pass ``max_minutes``; those left are ``not run``. Each finished candidate is measured here and gets
one progress line saying where it was built and how long it took there.
"""

from __future__ import annotations

import dataclasses
import pickle
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from graphopt.errors import ConfigError, GraphoptError
from graphopt.reporting.notes import Note
from graphopt.search.cluster import (
    BuildTask,
    Built,
    ClusterSpec,
    build_on_worker,
    cluster_client,
    is_lost_worker,
)
from graphopt.search.measure import measure_artifact
from graphopt.search.rows import CandidateRow

if TYPE_CHECKING:
    from graphopt.search.engine import _SearchRun

#: Note key: candidates whose worker died while building them, built again once.
WORKER_LOST = "search:worker_lost"
#: How many times a candidate is submitted when its worker dies (the first try and one retry).
ATTEMPTS = 2


def run_on_cluster(run: _SearchRun, queue: list[CandidateRow]) -> None:
    spec = ClusterSpec.parse(run.config.cluster)
    keys: dict[int, str | None] = {}
    waiting = [row for row in queue if not _settled_here(run, row, keys)]
    if not waiting:
        return
    run.rebuild_threads = spec.worker_threads()
    with cluster_client(spec) as client:
        _Dispatch(run, client, spec, keys, len(queue) - len(waiting), len(queue)).dispatch(waiting)


def _settled_here(run: _SearchRun, row: CandidateRow, keys: dict[int, str | None]) -> bool:
    """Rows an earlier search or the on-disk cache settle, and plans that fail before running, need no
    worker; ``keys`` gets the cache key of the others."""
    try:
        settled, keys[id(row)] = run.settle(row)
    except GraphoptError as exc:
        row.status, row.why = "failed", f"{type(exc).__name__}: {exc}"
        return True
    return settled


def _shared_stage_groups(rows: list[CandidateRow]) -> list[list[CandidateRow]]:
    """``rows`` grouped by the stages they share (prune ratio and importance: the pruned and recovered
    model every fp32, int8 and exit variant starts from), in queue order."""
    groups: dict[tuple[float, str], list[CandidateRow]] = {}
    for row in rows:
        groups.setdefault((row.point.prune, row.point.importance), []).append(row)
    return list(groups.values())


@dataclass
class _Lane:
    """One worker's run through groups of candidates, one candidate in flight at a time."""

    worker: str | None
    rows: list[CandidateRow] = field(default_factory=list)

    def take(self, groups: list[list[CandidateRow]]) -> bool:
        """The next waiting group; whether there was one."""
        if groups:
            self.rows = groups.pop(0)
        return bool(self.rows)


class _Dispatch:
    def __init__(
        self, run: _SearchRun, client: Any, spec: ClusterSpec, keys: dict[int, str | None], done: int,
        total: int,
    ) -> None:  # fmt: skip
        self.run, self.client, self.keys, self.done, self.total = run, client, keys, done, total
        self.index = {id(row): i for i, row in enumerate(run.rows)}
        self.token = uuid.uuid4().hex[:12]  # task keys unique to this search on a shared scheduler
        # without reuse: an earlier search's in-memory results are not for workers
        variants = dataclasses.replace(run.variants, config=dataclasses.replace(run.config, reuse=None))
        self.build = BuildTask(variants, run.scope, spec.worker_threads())
        self.task = self._scatter()
        self.workers = list(client.scheduler_info().get("workers", {})) or [None]
        self.started = time.perf_counter()
        self.spent: list[float] = []
        self.attempts: dict[int, int] = {}
        self.lost: list[str] = []
        self.groups: list[list[CandidateRow]] = []

    def dispatch(self, waiting: list[CandidateRow]) -> None:
        from distributed import as_completed

        self.groups = _shared_stage_groups(waiting)
        lanes = [_Lane(worker) for worker in self.workers]
        futures = as_completed()
        in_flight: dict[Any, _Lane] = {}
        try:
            for lane in lanes:
                if lane.take(self.groups) and self._time_left():
                    in_flight[self._submit(lane, futures)] = lane
            while in_flight:
                future = next(futures)
                lane = in_flight.pop(future)
                if self._finish(lane, future) and self._time_left():
                    in_flight[self._submit(lane, futures)] = lane
        finally:
            for future in in_flight:
                future.cancel()
        for row in [r for lane in lanes for r in lane.rows] + [r for group in self.groups for r in group]:
            budget = self.run.config.max_minutes
            row.status, row.why = "not run", f"time budget max_minutes={budget:g}"
        if self.lost:
            self.run.notes.append(Note(
                WORKER_LOST,
                f"search: a worker died while building {', '.join(self.lost)}; built again once",
                candidates=tuple(self.lost),
            ))  # fmt: skip

    def _scatter(self) -> Any:
        """The model and data, sent to every worker (module docstring of graphopt.search.cluster)."""
        try:
            return self.client.scatter(self.build, broadcast=True, hash=False)
        except (TypeError, AttributeError, pickle.PicklingError) as exc:  # what pickling raises
            raise ConfigError(
                f"the optimize call cannot be sent to the cluster's workers ({type(exc).__name__}: {exc}); "
                "a model, data or instrument defined inside a function or holding open files or locks does "
                "not pickle: define it at module level, or search in this process (cluster=None)"
            ) from exc

    def _time_left(self) -> bool:
        elapsed = time.perf_counter() - self.started
        mean = sum(self.spent) / len(self.spent) / len(self.workers) if self.spent else 0.0
        return elapsed + mean <= 60 * self.run.config.max_minutes

    def _submit(self, lane: _Lane, futures: Any) -> Any:
        """The lane's next candidate, on the lane's worker while it lives (its stage cache holds the lane's
        shared stages), anywhere once it is gone."""
        row = lane.rows[0]
        self.attempts[id(row)] = self.attempts.get(id(row), 0) + 1
        future = self.client.submit(
            build_on_worker, self.task, row.point, row.point.backend, pure=False,
            key=f"graphopt-{self.token}-candidate-{self.index[id(row)]}-try-{self.attempts[id(row)]}",
            workers=None if lane.worker is None else [lane.worker], allow_other_workers=True,
        )  # fmt: skip
        futures.add(future)
        return future

    def _finish(self, lane: _Lane, future: Any) -> bool:
        """Record the lane's finished candidate; whether the lane has another to submit (the same one when
        its worker died and it has a retry left, the next of its group, or the next group's first)."""
        row = lane.rows[0]
        try:
            built: Built = future.result()
        except Exception as exc:  # a task's failure: a lost worker (retried once) or a bug in the task
            if is_lost_worker(exc) and self.attempts[id(row)] < ATTEMPTS:
                self.lost.append(row.point.label)
                self.task = self._scatter()  # a restarted worker has none of the data
                return True
            row.status, row.why = "failed", _task_failure(exc, self.attempts[id(row)])
        else:
            self._built(row, built)
            lane.worker = built.worker  # where the lane's stages are cached now
        self._progressed(row)
        lane.rows.pop(0)
        return bool(lane.rows) or lane.take(self.groups)

    def _built(self, row: CandidateRow, built: Built) -> None:
        row.seconds, row.ran_on = built.seconds, built.worker
        if self.attempts[id(row)] > 1:
            row.ran_on += " (retried: its first worker died)"
        self.spent.append(built.seconds)
        if built.error is not None:
            row.status, row.why = "failed", built.error
        else:
            self._measure(row, built)

    def _measure(self, row: CandidateRow, built: Built) -> None:
        run = self.run
        path = (run.folder / f"candidate-{self.index[id(row)]}").with_suffix(built.suffix)
        assert built.artifact is not None
        path.write_bytes(built.artifact)
        threads = run.spec.backend.threads
        try:
            measured = measure_artifact(path, built.facts, row.point.backend, run.baseline, run.score,
                                        run.call.eval_data, threads)  # fmt: skip
        except GraphoptError as exc:
            row.status, row.why = "failed", f"{type(exc).__name__}: {exc}"
            return
        run.accept(row, measured, self.keys[id(row)], None)

    def _progressed(self, row: CandidateRow) -> None:
        self.done += 1
        self.run.progress(self.done, self.total, row)


def _task_failure(exc: BaseException, attempts: int) -> str:
    if is_lost_worker(exc):
        return f"its worker died on each of {attempts} tries ({type(exc).__name__}: {exc})"
    return f"{type(exc).__name__} on the worker: {exc}"
