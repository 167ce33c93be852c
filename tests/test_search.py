"""Goal-driven optimize: goals parsed and checked, candidates measured as they ship, the best one meeting
every goal returned (or the closest, naming the miss), shared stages run once, reruns reuse candidates."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import graphopt
from graphopt import ConfigError, Goals, InvalidInputError, RecoveryConfig, SearchConfig
from graphopt.artifacts.result import LATENCY_GUARD, LATENCY_GUARD_SKIPPED
from graphopt.data.digits import batches
from graphopt.pipeline.driver import CacheScope, OptimizeCall, run_call
from graphopt.pipeline.stage_cache import REUSED, StageCache
from graphopt.search.engine import REBUILT_SAME, VERDICT
from graphopt.search.goals import parse_goals


def test_goals_parse_from_the_command_line_syntax():
    goals = parse_goals(["speedup>=3", "accuracy-drop<=0.5", "size<=2MB"])
    assert goals == Goals(min_speedup=3.0, max_accuracy_drop=0.5, max_bytes=2_000_000)
    assert parse_goals(["size <= 512 KiB"]).max_bytes == 512 * 1024
    misses = goals.misses({"speedup": 2.5, "accuracy_drop": 0.2, "bytes": 3e6})
    assert [m.goal.cli for m in misses] == ["speedup", "size"]
    assert misses[0].gap == pytest.approx(0.5) and misses[1].gap == pytest.approx(1e6)
    assert "speedup 2.50x misses >= 3.00x by 0.50x" in str(misses[0])


@pytest.mark.parametrize(
    "text, cause",
    [("speed>=3", "unknown goal"), ("speedup<=3", "is a bound >="), ("size<=2parsec", "size unit"),
     ("accuracy-drop 0.5", "is not NAME>=N")],
)  # fmt: skip
def test_bad_goals_say_what_is_accepted(text, cause):
    with pytest.raises(ConfigError, match=cause):
        parse_goals([text])


def test_bad_goal_values_and_configs_are_refused():
    with pytest.raises(ConfigError, match="min_speedup must be > 0"):
        Goals(min_speedup=0)
    with pytest.raises(ConfigError, match="prune_ratios"):
        SearchConfig(prune_ratios=(1.2,))
    with pytest.raises(ConfigError, match="given twice"):
        parse_goals(["speedup>=2", "speedup>=3"])


def _halves(digits):
    """The digits test images split: the first half scores candidates, the second is only reported."""
    batches_ = digits.test_batches()
    return batches_[: len(batches_) // 2], batches_[len(batches_) // 2 :]


def _search(model, digits, goals, config, target="x86-int8", **kwargs):
    validation, test = _halves(digits)
    return graphopt.optimize(
        model, target, example_inputs=(digits.test_x[:1],),
        calibration_data=[digits.train_x[i : i + 32] for i in range(0, 128, 32)],
        validation_data=validation, eval_data=test, goals=goals, search=config, **kwargs,
    )  # fmt: skip


def test_a_custom_target_is_searched_as_given(digits_model, digits):
    """A replace of a preset under a new name is no preset: every candidate runs the Target object."""
    custom = dataclasses.replace(graphopt.TARGETS["x86-int8"], name="my-x86-int8")
    config = SearchConfig(prune_ratios=(0.0,), exits=(False,), int8=("on",), quiet=True)
    res = _search(digits_model, digits, Goals(max_accuracy_drop=1.0), config, target=custom)
    assert res.search.chosen is not None and res.report.target == "my-x86-int8"
    assert res.search.chosen.point.int8 == "on"


def test_the_returned_artifact_meets_every_goal_and_exports_as_measured(digits_model, digits, tmp_path):
    fp32_bytes = 4 * sum(p.numel() for p in digits_model.parameters())
    goals = Goals(max_accuracy_drop=1.0, max_bytes=fp32_bytes // 2)
    res = _search(digits_model, digits, goals, SearchConfig(prune_ratios=(0.0,), exits=(False,), quiet=True))
    rows = {r["candidate"]: r for r in res.search.table()}
    # fp32 cannot be under half the fp32 weights: ruled out by the estimate, never run
    assert rows["prune=0 fp32 [onnx]"]["status"] == "ruled out"
    chosen = res.search.chosen
    assert chosen is not None and chosen.point.int8 == "on" and not chosen.misses
    assert chosen.measured.bytes <= goals.max_bytes and chosen.accuracy_drop <= 1.0
    assert res.search.meets_goals and res.report.note(VERDICT).facts["returned"] == chosen.point.label
    assert res.search.verdict in res.report.notes
    assert res.report.tables["search"] == res.search.table()
    # the decision is pinned: exporting again writes the measured artifact, without a second guard
    path = res.export(tmp_path / "chosen.onnx")
    assert path.stat().st_size == chosen.measured.bytes
    assert not {LATENCY_GUARD, LATENCY_GUARD_SKIPPED} & set(res.report.stages[-1].note_keys())


def test_a_size_goal_int8_cannot_meet_is_met_by_4_bit_and_mixed_8_4_bit_weights(digits_model, digits):
    fp32_bytes = 4 * sum(p.numel() for p in digits_model.parameters())
    goals = Goals(max_accuracy_drop=1.0, max_bytes=int(0.2 * fp32_bytes))
    config = SearchConfig(prune_ratios=(0.0,), int8=("on",), weight_bits=(8, 4), exits=(False,), quiet=True)
    res = _search(digits_model, digits, goals, config)
    rows = {r["candidate"]: r for r in res.search.table()}
    assert rows["prune=0 int8 [onnx]"]["status"] == "ruled out"  # >= 1 byte a weight: over the goal
    narrow, mixed = rows["prune=0 W4A8 [onnx]"], rows["prune=0 W4/W8 mixed [onnx]"]
    assert narrow["goals"] == "met" and mixed["goals"] == "met"
    # the mixed point spends the room the goal leaves on 8-bit layers: bigger than W4A8, within the goal
    assert narrow["bytes"] < mixed["bytes"] <= goals.max_bytes
    chosen = res.search.chosen
    assert chosen is not None and chosen.measured.bytes <= goals.max_bytes and not chosen.misses
    with pytest.raises(ConfigError, match=r"weight_bits: 9 is not one of 2, 3"):
        SearchConfig(weight_bits=(8, 9))


def test_a_goal_no_candidate_meets_returns_the_closest_and_names_the_gap(digits_model, digits):
    goals = Goals(min_speedup=100.0)
    res = _search(
        digits_model, digits, goals, SearchConfig(prune_ratios=(0.0, 0.5), exits=(False,), quiet=True)
    )
    statuses = [r["status"] for r in res.search.table()]
    assert statuses.count("measured") == 1 and statuses.count("ruled out") == len(statuses) - 1
    chosen = res.search.chosen
    assert chosen.point.prune == 0.5 and chosen.point.int8 == "on"  # the highest estimated ceiling
    assert [m.goal.cli for m in chosen.misses] == ["speedup"]
    verdict = res.report.note(VERDICT).facts
    assert not res.search.meets_goals and (verdict["meets_goals"], verdict["misses"]) == (False, ("speedup",))
    assert chosen.misses[0].gap == pytest.approx(100 - chosen.measured.speedup)


def test_an_accuracy_goal_needs_validation_data(digits_model, digits):
    with pytest.raises(InvalidInputError, match="validation_data"):
        graphopt.optimize(
            digits_model, "x86-int8", example_inputs=(digits.test_x[:1],), eval_data=digits.test_batches(),
            goals=Goals(max_accuracy_drop=1.0),
        )  # fmt: skip


def _pruned_call(model, digits, target):
    return OptimizeCall(
        model, target, (digits.test_x[:1],),
        calibration_data=[digits.train_x[i : i + 32] for i in range(0, 128, 32)],
        train_data=batches(digits.train_x[:512], digits.train_y[:512], 64),
        prune=graphopt.PruneConfig(0.5, skip_int8_if_slower=False),  # the same plan prefix, the same int8
        recovery=RecoveryConfig(epochs=1, quiet=True),
    )  # fmt: skip


def test_a_plan_sharing_a_prefix_resumes_and_ends_where_a_full_run_ends(digits_model, digits):
    cache = StageCache()
    scope = CacheScope(cache, "digits")
    fp32 = run_call(_pruned_call(digits_model, digits, "generic-fp32"), scope)
    assert cache.hits == 0 and len(cache) >= 3  # prune, re-estimate, recover: each lossy pass kept
    int8 = run_call(_pruned_call(digits_model, digits, "x86-int8"), scope)
    assert cache.hits == 1 and cache.passes_skipped == 3  # pruning and its recovery ran once
    full = run_call(_pruned_call(digits_model, digits, "x86-int8"))
    x = digits.test_x[:64]
    with torch.no_grad():
        assert torch.equal(int8.model(x), full.model(x))
    assert [r.stage for r in int8.report.stages] == [r.stage for r in full.report.stages]
    assert int8.report.note(REUSED).facts["stages"][-1] == "recover"
    assert fp32.report.stage("recover").accuracy is None  # no eval_data: same as without a cache


def test_a_second_search_reuses_the_measured_candidates(digits_model, digits, capsys):
    config = SearchConfig(prune_ratios=(0.0,), int8=("on",), exits=(False,), quiet=True)
    first = _search(digits_model, digits, Goals(max_accuracy_drop=2.0), config)
    wider = SearchConfig(
        prune_ratios=(0.0,), int8=("off", "on"), exits=(False,), quiet=True, reuse=first.search
    )
    second = _search(digits_model, digits, Goals(max_accuracy_drop=2.0), wider)
    status = {r["candidate"]: r["status"] for r in second.search.table()}
    assert status == {"prune=0 fp32 [onnx]": "measured", "prune=0 int8 [onnx]": "reused"}
    assert capsys.readouterr().err == ""  # quiet: no progress lines


def test_the_command_line_searches_writes_the_artifact_plot_and_report(tmp_path, capsys):
    from graphopt.cli import main

    out, plot, report = tmp_path / "m.onnx", tmp_path / "front.png", tmp_path / "r.json"
    argv = ["optimize", "resnet_basic", "--target", "x86-int8", "--goal", "size<=40kB", "--search-prune", "0",
            "--no-exits", "--recovery-epochs", "0", "-o", str(out), "--search-plot", str(plot),
            "--json", str(report), "--quiet"]  # fmt: skip
    assert main(argv) == 0
    assert out.stat().st_size <= 40_000 and plot.stat().st_size > 0
    import json

    rows = json.loads(report.read_text())["tables"]["search"]
    assert [r["status"] for r in rows] == ["ruled out", "measured"]
    assert "search:" in capsys.readouterr().out


def test_an_accuracy_goal_on_a_model_without_labels_is_one_clear_error(capsys):
    from graphopt.cli import main

    assert main(["optimize", "resnet_basic", "--goal", "accuracy-drop<=1", "--quiet"]) == 2
    assert "needs labelled validation data" in capsys.readouterr().err
    assert main(["optimize", "resnet_basic", "--goal", "size<=1MB", "--dump-ir", "d", "--quiet"]) == 2
    assert "--dump-ir writes the IR of one plan" in capsys.readouterr().err


def _row(label, speedup, drop, size):
    from pathlib import Path

    from graphopt.search.measure import Measured
    from graphopt.search.rows import CandidateRow
    from graphopt.search.space import SearchPoint

    measured = Measured(Path(label), 1.0 / speedup, 1.0, size, 0, 0, 90.0 - drop, None, False, False)
    return CandidateRow(SearchPoint(prune=len(label) / 10), "measured", measured=measured, accuracy_drop=drop)


def test_the_front_and_the_choice_follow_the_stated_rules():
    from graphopt.search.rows import choose, judge

    fast, accurate, dominated, small = (
        _row("a", 4.0, 0.8, 100),
        _row("bb", 2.0, 0.1, 100),
        _row("ccc", 1.9, 0.2, 120),
        _row("dddd", 1.0, 0.3, 50),
    )
    rows = [fast, accurate, dominated, small]
    judge(rows, Goals(max_accuracy_drop=0.5))
    assert [r.dominated for r in rows] == [False, False, True, False]  # ccc: slower, less accurate, larger
    assert choose(rows, "speed") is accurate  # the fastest of those within 0.5 pp (fast misses it)
    for r in rows:
        r.chosen = False
    assert choose(rows, "size") is small
    # nobody meets these: the smallest sum of relative gaps, (10 - 2) / 10 = 0.8 against
    # (10 - 4) / 10 + (0.8 - 0.5) / 1 = 0.9 for the fastest
    judge(rows, Goals(min_speedup=10.0, max_accuracy_drop=0.5))
    for r in rows:
        r.chosen = False
    assert choose(rows, "speed") is accurate and [m.goal.cli for m in fast.misses] == [
        "speedup",
        "accuracy-drop",
    ]


def test_a_rerun_with_a_cache_folder_measures_nothing_again_and_rebuilds_the_choice(
    digits_model, digits, tmp_path
):
    config = SearchConfig(
        prune_ratios=(0.0,), int8=("off", "on"), exits=(False,), cache_dir=tmp_path / "cache", quiet=True
    )
    fp32_bytes = 4 * sum(p.numel() for p in digits_model.parameters())
    goals = Goals(
        max_accuracy_drop=2.0, max_bytes=fp32_bytes // 2
    )  # int8 only: the choice is not a speed race
    first = _search(digits_model, digits, goals, config)
    second = _search(digits_model, digits, goals, config)
    assert "measured" in {r["status"] for r in first.search.table()}
    assert {r["status"] for r in second.search.table()} <= {"cached", "duplicate", "ruled out"}
    assert second.search.chosen.point == first.search.chosen.point
    assert second.report.note(REBUILT_SAME).facts["candidate"] == second.search.chosen.point.label
    from graphopt.reporting.notes import the_note
    from graphopt.search.store import CACHE_ENTRY_IGNORED, CandidateStore

    (tmp_path / "cache" / "junk.json").write_text("not json")  # an unreadable entry is a miss, not an error
    store = CandidateStore(tmp_path / "cache")
    assert store.load("junk", tmp_path) is None
    assert the_note(store, CACHE_ENTRY_IGNORED).facts["check"] == "not_json"


def test_a_large_validation_set_is_split_into_disjoint_tuning_and_scoring_shares():
    from graphopt.search.data import MIN_SAMPLES_TO_SPLIT, split_tune_score

    n = MIN_SAMPLES_TO_SPLIT
    data = [
        (torch.arange(i, i + 100, dtype=torch.float32).view(-1, 1), torch.arange(i, i + 100))
        for i in range(0, n, 100)
    ]
    tune, score = split_tune_score(data, 0.5)
    tuned = torch.cat([y for _, y in tune])
    scored = torch.cat([y for _, y in score])
    assert len(tuned) == len(scored) == n // 2 and not set(tuned.tolist()) & set(scored.tolist())
    assert all(torch.equal(x[0].view(-1), y.float()) for x, y in tune)  # inputs stay with their labels
    assert split_tune_score(data, 0.5)[0][0][1].tolist() == tune[0][1].tolist()  # the same split each time
    small = data[:3]
    assert split_tune_score(small, 0.5) == (small, small)  # too few samples: both share all of them


def test_the_improved_int8_mode_mends_what_plain_int8_breaks_and_keeps_every_layer_int8(digits_model, digits):
    """Per-tensor int8 breaks the fragile model (one dead channel 300x the others); the accuracy driver
    mends it by equalization, so the ``improved`` point meets the goal with no layer back in fp32."""
    from graphopt.quant import QuantizedLayer
    from tests.helpers import fragile_digits_model, per_tensor_int8_target

    goals = Goals(max_accuracy_drop=1.0)
    config = SearchConfig(prune_ratios=(0.0,), int8=("on", "improved"), exits=(False,), quiet=True)
    model = fragile_digits_model(digits_model)
    res = _search(model, digits, goals, config, target=per_tensor_int8_target())
    rows = {r["candidate"]: r for r in res.search.table()}
    assert rows["prune=0 int8 [onnx]"]["goals"] != "met"  # plain per-tensor int8 misses
    chosen = res.search.chosen
    assert chosen is not None and chosen.point.label == "prune=0 int8 improved [onnx]" and not chosen.misses
    steps = {r["step"]: r for r in res.report.tables["improve_int8"]}
    assert steps["equalize"]["kept"]
    layers = [
        m for m in res.model.modules() if isinstance(m, (QuantizedLayer, torch.nn.Conv2d, torch.nn.Linear))
    ]
    assert layers and all(
        isinstance(m, QuantizedLayer) for m in layers if not _inside_quantized(res.model, m)
    )


def _inside_quantized(model, module) -> bool:
    from graphopt.quant import QuantizedLayer

    return any(isinstance(q, QuantizedLayer) and q.fp32_layer is module for q in model.modules())


def test_the_improved_int8_mode_is_tried_only_where_int8_calibrates():
    from graphopt.search.space import SearchPoint, SpaceLimits, enumerate_points
    from graphopt.search.variants import calibrates

    assert SearchPoint(int8="improved", weight_bits=4).label == "prune=0 W4A8 improved [onnx]"
    assert calibrates(graphopt.TARGETS["x86-int8"]) and not calibrates(graphopt.TARGETS["x86-dynamic-int8"])
    config = SearchConfig(prune_ratios=(0.0,), int8=("on", "improved"), exits=(False,))
    for can_improve, modes in ((True, ["on", "improved"]), (False, ["on"])):
        limits = SpaceLimits(True, False, False, can_improve, ("onnx",))
        assert [p.int8 for p in enumerate_points(config, limits)] == modes
    with pytest.raises(ConfigError, match="int8"):
        SearchConfig(int8=("on", "better"))
