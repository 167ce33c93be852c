"""Exits costed where they ship: every exit path timed in the target's runtime, and the exits that do not
pay for themselves there dropped."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import graphopt
from graphopt import EarlyExitConfig
from graphopt.backends import OnnxRunner
from graphopt.data.digits import batches
from graphopt.early_exit import EarlyExitNetwork
from graphopt.early_exit.reporting import EXIT_PATHS_TIMED, NO_EXIT_PAYS
from graphopt.early_exit.selection import MAX_SUBSET_EXITS, choose_exits, exit_subsets
from graphopt.early_exit.thresholds import NEVER
from graphopt.passes.insert_early_exit import COSTED_IN_MACS
from graphopt.pipeline.driver import OptimizeCall, run_call
from graphopt.reporting.notes import Note, notes_with
from tests.helpers import FakeTiming, digits_optimize_data

EXITS = ("features.2", "features.6")


def _optimize(model, digits, target: str | graphopt.Target = "generic-fp32", timing=None):
    return run_call(OptimizeCall(
        model, target, (digits.test_x[:1],), train_data=batches(digits.train_x, digits.train_y, 64),
        validation_data=digits.test_batches(), early_exit=EarlyExitConfig(exits=EXITS, epochs=3, quiet=True),
        timing=timing,
    ))  # fmt: skip


def _timing_note(result) -> Note:
    """The one note on how the exit paths were timed: exits kept, or none paid."""
    (note,) = notes_with(result.report, EXIT_PATHS_TIMED) + notes_with(result.report, NO_EXIT_PAYS)
    return note


def _path_ms(plain_ms: float, paths: dict[str, list[float]]) -> FakeTiming:
    """A timing service answering ``plain_ms`` for the network without exits and ``paths[set][k]`` for
    path ``k`` of each candidate set (models named ``"<set>/<k>"``)."""

    def ms(name: str, model) -> float:
        if name == "plain":
            return plain_ms
        candidate, k = name.rsplit("/", 1)
        return paths[candidate][int(k)] if candidate in paths else paths["*"][int(k)]

    return FakeTiming(ms)


def _network(result) -> EarlyExitNetwork:
    (network,) = [m for m in result.model.modules() if isinstance(m, EarlyExitNetwork)]
    return network


def test_candidate_sets_are_the_whole_set_then_every_smaller_one():
    assert exit_subsets(1) == [(0,)]
    assert exit_subsets(2) == [(0, 1), (0,), (1,)]
    assert len(exit_subsets(MAX_SUBSET_EXITS)) == 2**MAX_SUBSET_EXITS - 1
    assert exit_subsets(MAX_SUBSET_EXITS + 1) == [tuple(range(MAX_SUBSET_EXITS + 1))]


def _sure(labels: torch.Tensor, right: torch.Tensor, sure: torch.Tensor) -> torch.Tensor:
    """Logits that predict the label where ``right`` (else the next class), confidently where ``sure``."""
    predicted = torch.where(right, labels, (labels + 1) % 10)
    return torch.nn.functional.one_hot(predicted, 10).float() * torch.where(sure, 8.0, 0.5)[:, None]


def test_an_exit_that_costs_nearly_the_rest_of_the_path_is_dropped():
    # 1,000 held-out samples, a perfect final classifier. Head 0 is right and sure on the first half, wrong
    # and unsure on the rest; head 1 is right and sure on the first 600. At 0.1 pp no harm is allowed, so
    # head 0 takes 500 samples and head 1, behind it, 100.
    labels = torch.arange(1000) % 10
    first = torch.arange(1000) < 500
    head0 = _sure(labels, first, first)
    head1 = _sure(labels, torch.arange(1000) < 600, torch.arange(1000) < 600)
    final = _sure(labels, torch.ones(1000, dtype=torch.bool), torch.ones(1000, dtype=torch.bool))
    reference = torch.ones(1000, dtype=torch.bool)

    def best(costs: dict[tuple[int, ...], list[float]]) -> tuple[int, ...]:
        candidates = [(kept, None, path_costs) for kept, path_costs in costs.items()]
        choice, choices = choose_exits(candidates, [head0, head1, final], labels, 0.1, "max_prob", reference)
        assert [c.routing.harm for c in choices] == [0, 0, 0]
        rates = torch.bincount(choices[0].routing.exit_of, minlength=3).tolist()
        assert rates == [500, 100, 400]
        return choice.kept

    # measured-like: leaving at exit 1 costs nearly the whole path, and exit 1 slows every sample after it
    assert best({(0, 1): [1.0, 9.5, 11.0], (0,): [1.0, 10.2], (1,): [9.2, 10.3]}) == (0,)
    # MAC-like: exit 1 at half the cost pays for itself
    assert best({(0, 1): [1.0, 5.0, 11.0], (0,): [1.0, 10.2], (1,): [5.0, 10.3]}) == (0, 1)


def test_a_custom_target_costs_its_exits_in_its_own_runtime(digits_model, digits):
    """A target that is no preset (a replace under a new name) is timed, not looked up by name and
    silently costed in MACs."""
    custom = dataclasses.replace(graphopt.TARGETS["generic-fp32"], name="my-fp32")
    result = _optimize(digits_model, digits, target=custom)
    assert _timing_note(result).facts["runtime"] == "onnxruntime"
    assert not notes_with(result.report, COSTED_IN_MACS)
    assert "expected_ms" in result.report.stage("insert_early_exit").stats


def test_exit_paths_are_timed_in_the_targets_runtime(digits_model, digits):
    result = _optimize(digits_model, digits)
    stats = result.report.stage("insert_early_exit").stats
    # which set wins depends on this machine's timings; none is kept unless it beats the network without
    assert stats["exits_trained"] == 2 and stats["expected_ms"] <= stats["without_exits_ms"]
    share = stats["expected_ms"] / stats["without_exits_ms"]  # both rounded to 1e-4 ms
    assert stats["expected_latency_share"] == pytest.approx(share, rel=5e-3)
    networks = [m for m in result.model.modules() if isinstance(m, EarlyExitNetwork)]
    note = _timing_note(result)
    assert note.facts["runtime"] == "onnxruntime"
    assert note.facts["without_exits_ms"] == pytest.approx(stats["without_exits_ms"], abs=1e-4)
    if networks:
        assert stats["exits"] == len(networks[0].heads) >= 1 and note.key == EXIT_PATHS_TIMED
        assert len(note.facts["kept"]) == len(networks[0].heads)
        rows = result.report.tables["early_exit"]
        assert len(rows) == len(networks[0].heads) + 1 and all(r["ms_per_sample"] > 0 for r in rows)
        networks[0].thresholds.fill_(NEVER)  # whichever exits were kept, never leaving is the original
    else:
        assert stats["exits"] == 0 and note.key == NO_EXIT_PAYS
    x = digits.test_x[:16]
    torch.testing.assert_close(result.model(x), digits_model(x), rtol=1e-5, atol=1e-5)


def test_a_dropped_exit_leaves_a_network_without_it(digits_model, digits, monkeypatch, tmp_path):
    # leaving at features.6 costs more than going on to the end without it: it cannot pay
    measured = {"exits 0,1": [0.02, 0.33, 0.34], "exits 0": [0.02, 0.30], "exits 1": [0.33, 0.31]}

    timing = _path_ms(0.30, measured)
    result = _optimize(digits_model, digits, timing=timing)
    (asked,) = timing.asked  # every candidate set is timed, in one session
    assert {name.rsplit("/", 1)[0] for name in asked} == {"plain", *measured}
    stats = result.report.stage("insert_early_exit").stats
    network = _network(result)
    assert stats["exits"] == len(network.heads) == 1 and stats["exits_trained"] == 2
    assert [r["exit"] for r in result.report.tables["early_exit"]] == ["features.2", "final classifier"]
    (note,) = notes_with(result.report, EXIT_PATHS_TIMED)
    assert note.facts["kept"] == ("features.2",) and note.facts["dropped"] == ("features.6",)
    runner = OnnxRunner(result.export(tmp_path / "m.onnx"))
    for i in range(20):  # the artifact holds the one kept exit and takes the same path as eager
        x = digits.test_x[i : i + 1]
        torch.testing.assert_close(torch.as_tensor(runner.run(x)[0]), result.model(x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    ("config", "why"),
    [({"cost": "macs"}, "cost='macs'"), ({"target": "arm-fp32"}, "arm-fp32 runs on aarch64")],
)
def test_exits_are_costed_in_macs_when_asked_or_when_the_runtime_is_foreign(
    digits_model, digits, config, why
):
    result = graphopt.optimize(
        digits_model,
        target=config.get("target", "generic-fp32"),
        early_exit=EarlyExitConfig(exits=EXITS, epochs=1, quiet=True, cost=config.get("cost", "runtime")),
        **digits_optimize_data(digits),
    )
    stats = result.report.stage("insert_early_exit").stats
    assert "expected_ms" not in stats and stats["exits"] == stats["exits_trained"] == 2
    assert all("ms_per_sample" not in r for r in result.report.tables["early_exit"])
    notes = notes_with(result.report, COSTED_IN_MACS)
    assert (why in notes[0].facts["why"]) if config.get("target") else not notes  # asked: nothing to explain


def test_no_exit_is_inserted_when_none_pays_in_the_runtime(digits_model, digits, monkeypatch):
    result = _optimize(digits_model, digits, timing=_path_ms(0.10, {"*": [0.2, 0.2, 0.2]}))
    assert not any(isinstance(m, EarlyExitNetwork) for m in result.model.modules())
    record = result.report.stage("insert_early_exit")
    assert record.modified is False and record.stats["expected_ms"] == record.stats["without_exits_ms"]
    (note,) = notes_with(result.report, NO_EXIT_PAYS)
    assert note.facts["without_exits_ms"] == pytest.approx(0.10)
    x = digits.test_x[:16]
    torch.testing.assert_close(result.model(x), digits_model(x))
