"""Candidates built on a Dask cluster: ``SearchConfig(cluster="local:4")`` or ``"tcp://host:8786"``.

Where each part of a candidate runs:

- **Built on a worker**: the candidate's optimize call (pruning, recovery, QAT, exit heads: the training)
  and its export. The worker sends back the artifact's bytes and the facts a row needs
  (:class:`~graphopt.search.measure.ArtifactFacts`), or the :class:`GraphoptError` that stopped it.
- **Measured here**, on the caller's machine, as today: scored on the validation and test data and timed
  beside the original in one runtime; the finalists are timed again together once the cluster is idle,
  so speed-ups stay comparable whatever worker trained them. A cost-model backend (Ethos-U: Vela's
  estimate) needs no timing at all.
- **Rebuilt here**: only the returned candidate, whose optimize call runs again in this process to give
  the caller an :class:`OptimizeResult`; its artifact is checked byte for byte against the worker's (as a
  candidate from the on-disk cache is).

Data travel by value: the optimize call (model, data) is sent to every worker once
(``Client.scatter(broadcast=True)``), and again after a worker died (a restarted worker has none of it). Each
worker keeps a stage cache of its own, so candidates sharing a stage share it when they land on the same
worker. Candidates already in the on-disk cache (``cache_dir``) are read here and never submitted; new ones
are stored here as they are measured, each entry written atomically, so an interrupted search leaves a
consistent cache.

Faults: a worker that dies while building a candidate (a killed process, lost memory) costs that candidate
one retry: a local cluster's scheduler gives up on a task at its first lost worker
(``allowed-failures=0``) and the search submits it once more; a candidate whose worker dies twice, or that
fails on its own, is a ``failed`` row with its error and the search goes on. Ctrl-C cancels what is in
flight and closes the cluster the search started (a cluster it joined is left running).

Determinism: a worker trains with ``threads`` torch threads (local clusters: the machine's cores shared
out, at least one; a joined cluster: the caller's count), and the returned candidate is rebuilt here with
the same count. Training on the same number of threads gives the same artifact in any process, except
where a plan decides by timing: exits costed in the runtime (``EarlyExitConfig(cost="runtime")``, the
default) keep the exits their timing favours, which can differ between two timings of the same file.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from graphopt.errors import ConfigError, GraphoptError
from graphopt.pipeline.stage_cache import StageCache

#: What ``SearchConfig.cluster`` accepts, for messages.
CLUSTER_FORMS = '"local:N" (N worker processes on this machine) or "tcp://host:port" (a running scheduler)'

_LOCAL = re.compile(r"local:(\d+)")
_TCP = re.compile(r"tcp://[^\s/:]+:\d+")


@dataclass(frozen=True)
class ClusterSpec:
    """A parsed ``SearchConfig.cluster``: ``workers`` for a local cluster the search starts, or the
    ``address`` of a scheduler it joins."""

    workers: int | None = None
    address: str | None = None

    @classmethod
    def parse(cls, text: object) -> ClusterSpec:
        if isinstance(text, str) and (local := _LOCAL.fullmatch(text)) and int(local.group(1)) >= 1:
            return cls(workers=int(local.group(1)))
        if isinstance(text, str) and _TCP.fullmatch(text):
            return cls(address=text)
        raise ConfigError(f"SearchConfig.cluster must be None (this process), {CLUSTER_FORMS}; got {text!r}")

    def worker_threads(self) -> int:
        """Torch threads per worker (module docstring)."""
        if self.workers is not None:
            return max(1, (os.cpu_count() or 1) // self.workers)
        return torch.get_num_threads()

    def __str__(self) -> str:
        return f"local:{self.workers}" if self.workers is not None else str(self.address)


def check_cluster_support() -> None:
    """A cluster needs ``distributed``: say how to get it before any work."""
    try:
        import distributed  # noqa: F401
    except ImportError as exc:
        raise ConfigError(
            "SearchConfig.cluster needs Dask distributed: pip install 'graphopt[distributed]' (or "
            "pip install distributed), or search in this process (cluster=None)"
        ) from exc


# --- on the worker --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BuildTask:
    """What every candidate of one search shares, sent to each worker once. ``make_variant`` turns a
    search point into its optimize call (:class:`~graphopt.search.variants.Variants`)."""

    make_variant: Any
    scope: str
    threads: int


@dataclass(frozen=True)
class Built:
    """A candidate as a worker built it: the artifact's bytes and facts, or the error that stopped it."""

    artifact: bytes | None
    suffix: str
    facts: Any  # ArtifactFacts | None
    error: str | None
    seconds: float
    worker: str


#: The stage cache of this worker process, by scope (model, data, target).
_WORKER_CACHES: dict[str, StageCache] = {}


def build_on_worker(task: BuildTask, point: Any, backend_name: str) -> Built:
    """Run the candidate ``point``'s optimize call and export it (runs on a Dask worker)."""
    from distributed import get_worker

    from graphopt.pipeline.driver import CacheScope, run_call
    from graphopt.search.measure import export_candidate

    torch.set_num_threads(task.threads)
    started, where = time.perf_counter(), get_worker().address
    cache = _WORKER_CACHES.setdefault(task.scope, StageCache())
    try:
        result = run_call(task.make_variant.of(point), CacheScope(cache, task.scope))
        with tempfile.TemporaryDirectory(prefix="graphopt-worker-") as tmp:
            path, facts = export_candidate(result, backend_name, Path(tmp) / "candidate")
            data = path.read_bytes()
    except GraphoptError as exc:
        return Built(None, "", None, f"{type(exc).__name__}: {exc}", time.perf_counter() - started, where)
    return Built(data, path.suffix, facts, None, time.perf_counter() - started, where)


# --- on the caller ----------------------------------------------------------------------------------------


@contextlib.contextmanager
def cluster_client(spec: ClusterSpec) -> Iterator[Any]:
    """A Dask client on the cluster ``spec`` names: a local cluster started (and closed on the way out,
    Ctrl-C included) or a scheduler joined. Dask's own logging is silenced meanwhile: a worker that dies
    is the search's to report (its rows and a note), not a log line's."""
    import dask
    from distributed import Client, LocalCluster

    logger = logging.getLogger("distributed")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        if spec.workers is None:
            try:
                client = Client(spec.address, timeout="30s")
            except (OSError, TimeoutError) as exc:
                raise ConfigError(
                    f"no Dask scheduler answered at {spec.address} within 30 s ({type(exc).__name__}: "
                    f"{exc}); start one (dask scheduler; dask worker ADDRESS --nthreads 1) or use "
                    "cluster='local:N'"
                ) from exc
            with client:
                yield client
            return
        with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
            try:
                cluster = LocalCluster(
                    n_workers=spec.workers, threads_per_worker=1, processes=True, dashboard_address=None,
                    silence_logs=logging.CRITICAL,
                )  # fmt: skip
            except (OSError, RuntimeError, TimeoutError) as exc:
                raise GraphoptError(
                    f"the local Dask cluster of {spec.workers} workers did not start ({type(exc).__name__}: "
                    f"{exc}); a script starting one must guard its entry point with "
                    "if __name__ == '__main__': (its workers import the main module)"
                ) from exc
        try:
            with Client(cluster) as client:
                yield client
        finally:
            cluster.close()
    finally:
        logger.setLevel(level)


def is_lost_worker(exc: BaseException) -> bool:
    """Whether a task failed because a worker died (a retry may succeed), not because of its own code: its
    own worker (``KilledWorker``), or the one holding the only copy of the data it reads (cancelled for
    lost dependencies: the data is sent again before the retry)."""
    from distributed.client import FutureCancelledError
    from distributed.scheduler import KilledWorker

    lost_data = isinstance(exc, FutureCancelledError) and "lost dependencies" in str(exc)
    return isinstance(exc, KilledWorker) or lost_data
