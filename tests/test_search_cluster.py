"""The search on a Dask cluster: the same choice and the same artifact as in this process, progress saying
where each candidate ran, a worker killed mid-candidate costing that candidate one retry, and a candidate
whose worker dies twice recorded as failed."""

from __future__ import annotations

import hashlib
import os
import signal
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import graphopt
from graphopt import ConfigError, Goals, GraphoptError, SearchConfig
from graphopt.search.cluster import ClusterSpec, check_cluster_support
from graphopt.search.cluster_queue import WORKER_LOST
from graphopt.search.engine import REBUILT_SAME
from graphopt.search.rows import IN_PROCESS

pytest.importorskip("distributed")


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("local:2", ClusterSpec(workers=2)),
        ("tcp://10.0.0.5:8786", ClusterSpec(address="tcp://10.0.0.5:8786")),
    ],
)
def test_cluster_forms_parse(text, parsed):
    assert ClusterSpec.parse(text) == parsed and SearchConfig(cluster=text).cluster == text


@pytest.mark.parametrize("text", ["local:0", "local", "tcp://host", "http://host:8786", "4", 4])
def test_other_cluster_forms_are_config_errors_naming_the_accepted_ones(text):
    with pytest.raises(ConfigError, match=r'"local:N".*"tcp://host:port"'):
        SearchConfig(cluster=text)


def test_a_cluster_without_distributed_installed_says_how_to_get_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)  # import distributed -> ImportError
    with pytest.raises(ConfigError, match=r"graphopt\[distributed\]"):
        check_cluster_support()


class _DiesOnWorker(nn.Module):
    """``inner``, except that on a Dask worker its forward kills the worker process: once when ``marker``
    names a file (the process that creates it dies; the retry finds it), every time when None."""

    def __init__(self, inner: nn.Module, marker: Path | None):
        super().__init__()
        self.inner, self.marker = inner, marker

    def forward(self, x):
        if _on_worker() and _first_to_claim(self.marker):
            os.kill(os.getpid(), signal.SIGKILL)
        return self.inner(x)


def _on_worker() -> bool:
    from distributed import get_worker

    try:
        get_worker()
    except ValueError:
        return False
    return True


def _first_to_claim(marker: Path | None) -> bool:
    if marker is None:
        return True
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL))  # atomic: one worker wins
    except FileExistsError:
        return False
    return True


def _search(model, digits, cluster, **config):
    tb = digits.test_batches()
    settings = {"prune_ratios": (0.0,), "int8": ("off", "on"), "exits": (False,), "tie_break": "size"}
    return graphopt.optimize(
        model, "x86-int8", example_inputs=(digits.test_x[:1],),
        calibration_data=[digits.train_x[i : i + 32] for i in range(0, 128, 32)],
        validation_data=tb[: len(tb) // 2], eval_data=tb[len(tb) // 2 :], goals=Goals(max_accuracy_drop=2.0),
        search=SearchConfig(cluster=cluster, **{**settings, **config}),
    )  # fmt: skip


def _digest(res, path: Path) -> str:
    return hashlib.sha256(res.export(path, latency_guard=False).read_bytes()).hexdigest()


def test_a_two_worker_local_cluster_returns_the_in_process_searchs_artifact(
    digits_model, digits, tmp_path, capsys
):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the workers train on one thread each (2 cores, 2 workers): so does this side
    try:
        here = _search(digits_model, digits, None, quiet=True)
        there = _search(digits_model, digits, "local:2")
    finally:
        torch.set_num_threads(threads)
    assert there.search.chosen.point == here.search.chosen.point
    assert _digest(there, tmp_path / "there.onnx") == _digest(here, tmp_path / "here.onnx")
    assert there.report.note(REBUILT_SAME).facts["candidate"] == there.search.chosen.point.label
    ran_on = {r["candidate"]: r["ran_on"] for r in there.search.table()}
    assert all(where.startswith("tcp://") for where in ran_on.values()), ran_on
    assert {r["ran_on"] for r in here.search.table()} == {IN_PROCESS}
    progress = capsys.readouterr().err
    assert progress.count(" on tcp://") == len(ran_on)  # one line per candidate, saying where it ran


def test_a_worker_killed_mid_candidate_costs_that_candidate_one_retry(digits_model, digits, tmp_path):
    model = _DiesOnWorker(digits_model, tmp_path / "killed-once")
    res = _search(model, digits, "local:2", quiet=True)
    rows = res.search.table()
    assert {r["status"] for r in rows} <= {"measured", "duplicate"} and res.search.chosen is not None
    (lost,) = res.report.note(WORKER_LOST).facts["candidates"]
    assert [r["candidate"] for r in rows if "retried" in r["ran_on"]] == [lost]


def test_a_candidate_whose_worker_dies_twice_is_failed_with_the_cause(digits_model, digits):
    model = _DiesOnWorker(digits_model, None)
    with pytest.raises(GraphoptError, match="worker died on each of 2 tries"):
        _search(model, digits, "local:1", quiet=True, int8=("off",))


def test_a_running_scheduler_is_joined_by_address_and_left_running(digits_model, digits):
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address=None) as cluster:
        address = cluster.scheduler_address  # tcp://127.0.0.1:PORT
        (worker,) = cluster.workers.values()
        res = _search(digits_model, digits, address, quiet=True, int8=("on",))
        assert {r["ran_on"] for r in res.search.table()} == {worker.worker_address}
        with Client(address) as client:  # the search closed its client, not the cluster it joined
            assert len(client.scheduler_info()["workers"]) == 1
