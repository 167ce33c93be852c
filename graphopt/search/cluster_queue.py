"""The search's queue run on a Dask cluster (:mod:`graphopt.search.cluster` says what runs where).

At most one candidate per worker is in flight, so the time budget works as in this process: a candidate is
not submitted once the time spent plus the mean candidate time (divided among the workers) would pass
``max_minutes``; those left are ``not run``. Each finished candidate is measured here and gets one progress
line saying where it was built and how long it took there.
"""

from __future__ import annotations

import pickle
import time
import uuid
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
    replace_reuse,
    workers_of,
)
from graphopt.search.measure import measure_artifact
from graphopt.search.rows import CandidateRow
from graphopt.search.variants import Variants

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


class _Dispatch:
    def __init__(
        self, run: _SearchRun, client: Any, spec: ClusterSpec, keys: dict[int, str | None], done: int,
        total: int,
    ) -> None:  # fmt: skip
        self.run, self.client, self.keys, self.done, self.total = run, client, keys, done, total
        self.index = {id(row): i for i, row in enumerate(run.rows)}
        self.token = uuid.uuid4().hex[:12]  # task keys unique to this search on a shared scheduler
        variants = Variants(run.call, replace_reuse(run.config), run.goals, run.spec)
        self.build = BuildTask(variants, run.scope, spec.worker_threads())
        self.task = self._scatter()
        self.slots = workers_of(client)
        self.started = time.perf_counter()
        self.spent: list[float] = []
        self.attempts: dict[int, int] = {}
        self.lost: list[str] = []

    def dispatch(self, waiting: list[CandidateRow]) -> None:
        from distributed import as_completed

        pending = list(waiting)
        in_flight: dict[Any, CandidateRow] = {}
        futures = as_completed()
        try:
            while pending or in_flight:
                while pending and len(in_flight) < self.slots and self._time_left():
                    row = pending.pop(0)
                    in_flight[self._submit(row, futures)] = row
                if not in_flight:
                    break
                future = next(futures)
                row = in_flight.pop(future)
                if self._finish(row, future):
                    pending.insert(0, row)  # a worker died: first in line for a retry, with the data again
                    self.task = self._scatter()
        finally:
            for future in in_flight:
                future.cancel()
        for row in pending:
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
        mean = sum(self.spent) / len(self.spent) / self.slots if self.spent else 0.0
        return elapsed + mean <= 60 * self.run.config.max_minutes

    def _submit(self, row: CandidateRow, futures: Any) -> Any:
        self.attempts[id(row)] = self.attempts.get(id(row), 0) + 1
        future = self.client.submit(
            build_on_worker, self.task, row.point, row.point.backend, pure=False,
            key=f"graphopt-{self.token}-candidate-{self.index[id(row)]}-try-{self.attempts[id(row)]}",
        )  # fmt: skip
        futures.add(future)
        return future

    def _finish(self, row: CandidateRow, future: Any) -> bool:
        """Record ``row`` from its finished task; True when it is to be submitted again (worker lost)."""
        try:
            built: Built = future.result()
        except Exception as exc:  # a task's failure: a lost worker (retried once) or a bug in the task
            if is_lost_worker(exc) and self.attempts[id(row)] < ATTEMPTS:
                self.lost.append(row.point.label)
                return True
            row.status, row.why = "failed", _task_failure(exc, self.attempts[id(row)])
            self._progressed(row)
            return False
        row.seconds, row.ran_on = built.seconds, built.worker
        if self.attempts[id(row)] > 1:
            row.ran_on += " (retried: its first worker died)"
        self.spent.append(built.seconds)
        if built.error is not None:
            row.status, row.why = "failed", built.error
        else:
            self._measure(row, built)
        self._progressed(row)
        return False

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
