"""``graphopt bench``: pipelines, data checks, the result schema, ratio comparison, partial results, the CLI.

One end-to-end run on a tiny reference model (one timing round) checks the whole chain; timings themselves
are never asserted, only that they exist and that the ratios are consistent with them.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest

from graphopt.backends.timing import interleaved_stats, paired_ratio, stats_of_rounds
from graphopt.benchmark import (
    SCHEMA,
    BenchConfig,
    BenchResult,
    compare_results,
    load_bench_model,
    parse_pipeline,
    run_bench,
    to_markdown,
    to_text,
)
from graphopt.benchmark import timing as bench_timing
from graphopt.benchmark.machine import RELEVANT_FLAGS, gemm_peaks, machine_facts
from graphopt.benchmark.pipelines import Pipeline, without_exits_label
from graphopt.benchmark.plot import pareto_front
from graphopt.benchmark.schema import EAGER_FP32, ORT_FP32, BenchError, BenchRow
from graphopt.benchmark.summary import summary_markdown
from graphopt.benchmark.timing import EXITS_AGAINST_NO_EXITS
from graphopt.cli import main
from graphopt.errors import ConfigError, GraphoptError, InvalidInputError, UnknownNameError
from graphopt.pipeline.stage_cache import REUSED
from graphopt.reporting.notes import the_note


def test_pipeline_labels_round_trip():
    for label in (
        "x86-int8",
        "x86-int8+prune=0.5",
        "generic-fp32+early-exit",
        "arm-int8+prune=0.3+early-exit",
        "x86-int8+sparsify=0.8",
        "x86-int8+prune=0.5+early-exit+labels-only",
    ):
        assert parse_pipeline(label).label == label
    pipeline = parse_pipeline("x86-int8+prune=0.5")
    assert pipeline.quantized and pipeline.prune == 0.5 and not pipeline.early_exit
    assert not parse_pipeline("generic-fp32").quantized
    assert parse_pipeline("x86-int8+labels-only+prune=0.5").labels_only
    assert not parse_pipeline("x86-int8+prune=0.5").labels_only


@pytest.mark.parametrize(
    ("label", "error", "message"),
    [
        ("x86-int9", UnknownNameError, "unknown target 'x86-int9'; known targets: .*x86-int8"),
        ("x86-int8+prune=1.5", ConfigError, r"prune must be a fraction in \[0, 1\)"),
        ("x86-int8+prune=half", ConfigError, "prune= needs a fraction"),
        ("x86-int8+sparsify=1", ConfigError, r"sparsify must be a fraction in \[0, 1\)"),
        ("x86-int8+sparsity=0.5", ConfigError, "unknown pipeline option 'sparsity=0.5'"),
        ("x86-int8+labels-only=1", ConfigError, "unknown pipeline option 'labels-only=1'"),
    ],
)
def test_bad_pipelines_say_what_is_wrong(label, error, message):
    with pytest.raises(error, match=message):
        parse_pipeline(label)


def test_unknown_models_list_the_known_ones():
    with pytest.raises(UnknownNameError, match=r"known models: .*digits, digits_resnet, .*resnet18"):
        load_bench_model("resnet9000")


def test_pipelines_that_need_missing_data_are_refused():
    factory = load_bench_model("tests.factories:small_cnn", input_shape=(1, 3, 16, 16))
    assert factory.calibration is None
    with pytest.raises(InvalidInputError, match=r"needs calibration data.*--synthetic-data"):
        factory.check_can_run(parse_pipeline("x86-int8"))
    factory.check_can_run(parse_pipeline("generic-fp32"))  # fp32 needs no data
    synthetic = load_bench_model("tests.factories:small_cnn", input_shape=(1, 3, 16, 16), synthetic_data=True)
    synthetic.check_can_run(parse_pipeline("x86-int8"))
    zoo = load_bench_model("resnet_basic")
    with pytest.raises(InvalidInputError, match=r"labelled data.*resnet18_digits, mobilenet_v2_digits"):
        zoo.check_can_run(parse_pipeline("generic-fp32+early-exit"))


def test_a_factory_that_raises_is_one_clear_error():
    with pytest.raises(ConfigError, match=r"factory tests.factories:broken raised RuntimeError"):
        load_bench_model("tests.factories:broken", input_shape=(1, 3, 8, 8))


def test_pareto_front():
    points = [(1.0, 90.0), (2.0, 95.0), (3.0, 94.0), (0.5, 80.0), (2.0, 95.0), (4.0, 99.0)]
    front = pareto_front(points)
    assert [points[i] for i in front][:2] == [(0.5, 80.0), (1.0, 90.0)]
    assert 2 not in front  # slower and worse than (2.0, 95.0)
    assert 5 in front and (1 in front or 4 in front)


def test_interleaved_stats_pool_every_call():
    calls = {"fast": lambda: sum(range(10)), "slow": lambda: sum(range(20_000))}
    stats = interleaved_stats(calls, rounds=3, calls_per_round={"fast": 5, "slow": 2}, warmup=1)
    assert stats["fast"].runs == 15 and stats["slow"].runs == 6
    for s in stats.values():
        assert s.min_ms <= s.p10_ms <= s.median_ms * 1.5 and s.p10_ms <= s.p90_ms
    assert stats["slow"].median_ms > stats["fast"].median_ms


def test_paired_ratio_cancels_what_a_slow_round_does_to_both():
    reference = [np.array([2.0]), np.array([2.0]), np.array([6.0]), np.array([6.0]), np.array([2.0])]
    candidate = [np.array([1.0]), np.array([1.0]), np.array([3.0]), np.array([3.0]), np.array([1.0])]
    assert paired_ratio(reference, candidate) == pytest.approx(2.0)
    stats = stats_of_rounds(candidate)
    assert stats.median_ms == 1.0 and stats.min_ms == 1.0 and stats.runs == 5


def test_bad_ratio_statistic_is_refused():
    with pytest.raises(ConfigError, match="ratio_statistic must be 'min' or 'paired-median'"):
        BenchConfig(model="mlp", pipelines=(parse_pipeline("generic-fp32"),), ratio_statistic="mean")


def test_machine_facts_state_the_cpu_and_a_measured_peak():
    facts = machine_facts(threads=1, pinned_core=None, measure_peak=False)
    assert facts.cpu and facts.arch and facts.cores >= 1
    assert set(facts.flags) <= set(RELEVANT_FLAGS)
    assert {"torch", "onnxruntime", "numpy", "python"} <= facts.versions.keys()
    fp32, int8 = gemm_peaks(repeat=2)
    assert fp32 > 0.5 and int8 > 0.5  # GMAC/s: any CPU that runs the suite does far more


def _row(stage: str, ms: float, speedup: float) -> BenchRow:
    from graphopt.backends.timing import LatencyStats

    row = BenchRow("m", "x86-int8", stage, "artifact", "int8", "onnxruntime", 10, 100, 1000)
    row.latency, row.speedup_vs_ort_fp32, row.speedup_vs_eager = (
        LatencyStats(ms, ms, ms, ms, 3),
        speedup,
        2 * speedup,
    )
    return row


def _result(*rows: BenchRow) -> BenchResult:
    return BenchResult("m", "", "now", {"cpu": "x", "arch": "y", "cores": 1, "flags": [], "versions": {}},
                       {"rounds": 1, "round_ms": 1.0}, "synthetic", list(rows))  # fmt: skip


def test_result_json_round_trips_and_checks_its_schema():
    result = _result(_row("artifact:onnx", 1.0, 2.0))
    result.errors.append(BenchError("x86-int8+prune=0.5", "PassError", "boom"))
    data = json.loads(result.to_json())
    assert data["schema"] == SCHEMA
    again = BenchResult.from_dict(data)
    assert again.rows == result.rows and again.errors == result.errors
    with pytest.raises(ConfigError, match=r"not a graphopt.bench/1 result"):
        BenchResult.from_dict({**data, "schema": "graphopt.bench/0"})


def test_compare_flags_the_ratio_that_moved():
    first = _result(_row("a", 1.0, 2.0), _row("b", 1.0, 3.0))
    same = _result(_row("a", 1.0, 2.04), _row("b", 1.0, 2.95))
    assert compare_results(first, same).ok
    moved = _result(_row("a", 1.0, 2.0), _row("b", 1.0, 3.4))
    comparison = compare_results(first, moved)
    assert not comparison.ok
    assert comparison.worst is not None and comparison.worst.row.endswith("/ b")
    assert "NOT within 5%" in comparison.summary() and "steal" not in comparison.summary()
    moved.machine["steal_during_timing"] = 0.187
    summary = compare_results(first, moved).summary()
    assert "CPU steal while timing (first / second): unknown / 18.7%" in summary


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    config = BenchConfig(
        model="resnet_basic",
        pipelines=(parse_pipeline("generic-fp32"), parse_pipeline("x86-int8+prune=0.5")),
        rounds=1,
        round_ms=5,
        out_dir=out,
        quiet=True,
    )
    return run_bench(config), out


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="CPU affinity is Linux's")
def test_training_keeps_every_core_and_only_timing_is_pinned(monkeypatch):
    import torch

    from graphopt.benchmark import runner

    cores, threads = os.sched_getaffinity(0), torch.get_num_threads()
    seen = {}
    real_pipeline, real_timing = runner.run_pipeline, runner.time_fixed_input

    def pipeline(*args, **kwargs):
        seen["pipeline"] = (os.sched_getaffinity(0), torch.get_num_threads())
        return real_pipeline(*args, **kwargs)

    def timing(*args, **kwargs):
        seen["timing"] = (len(os.sched_getaffinity(0)), torch.get_num_threads())
        return real_timing(*args, **kwargs)

    monkeypatch.setattr(runner, "run_pipeline", pipeline)
    monkeypatch.setattr(runner, "time_fixed_input", timing)
    config = BenchConfig(model="mlp", pipelines=(parse_pipeline("generic-fp32"),), rounds=1, round_ms=5,
                         measure_peak=False, quiet=True)  # fmt: skip
    assert run_bench(config).complete
    assert seen == {"pipeline": (cores, threads), "timing": (1, 1)}
    assert os.sched_getaffinity(0) == cores and torch.get_num_threads() == threads


def test_a_run_has_every_peer_stage_and_artifact(tiny_run):
    result, _ = tiny_run
    assert result.complete and not result.errors
    stages = {r.stage for r in result.rows if r.kind == "peer"}
    assert {"ORT fp32", "eager fp32", "eager fp32 channels_last", "TorchScript fp32"} <= stages
    assert {"ORT quantize_static (default)", "ORT quantize_static (best)"} <= stages
    for label in ("generic-fp32", "x86-int8+prune=0.5"):
        rows = [r for r in result.rows if r.pipeline == label]
        assert rows[-1].kind == "artifact" and rows[-1].timed
        assert any(r.kind == "stage" for r in rows)
    assert result.settings["ratio_statistic"] == "min"
    assert 0 <= result.machine["steal_during_timing"] <= 1
    base = result.row("peers", "ORT fp32").latency.min_ms
    assert result.row("x86-int8+prune=0.5", "prune_channels").speedup_vs_ort_fp32 == pytest.approx(
        base / result.row("x86-int8+prune=0.5", "prune_channels").latency.min_ms
    )
    assert result.row("peers", "ORT fp32").speedup_vs_ort_fp32 == pytest.approx(1.0)
    eager = [result.row("peers", "eager fp32"), result.row("peers", "eager fp32 channels_last")]
    assert max(r.speedup_vs_eager for r in eager) == pytest.approx(1.0)  # the faster layout is the reference
    assert result.row("peers", "ORT quantize_static (best)").speedup_vs_ort_int8 == pytest.approx(1.0)
    for row in result.rows:
        if row.timed:
            assert row.speedup_vs_ort_fp32 > 0 and row.speedup_vs_eager > 0
            assert row.roofline is not None and row.roofline > 0
            assert row.cosine is not None and -1.0 <= row.cosine <= 1.0 + 1e-6
    pruned = result.row("x86-int8+prune=0.5", "prune_channels")
    assert pruned.timed and pruned.macs < result.row("peers", "ORT fp32").macs


def test_a_run_writes_json_markdown_and_a_png(tiny_run):
    result, out = tiny_run
    data = json.loads((out / "bench.json").read_text())
    assert data["schema"] == SCHEMA and data["complete"] is True
    assert data["machine"]["peak_fp32_gmacs"] > 0 and "onnxruntime" in data["machine"]["versions"]
    assert len(data["rows"]) == len(result.rows)
    markdown = (out / "bench.md").read_text()
    assert "| pipeline | stage |" in markdown and "machine: " in markdown
    assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = to_text(result)
    assert "vs ORT fp32" in text and "prune_channels" in text
    assert to_markdown(result).count("\n| x86-int8+prune=0.5 |") >= 3
    summary = summary_markdown([result])
    assert "| resnet_basic | **graphopt x86-int8+prune=0.5**" in summary
    assert "| resnet_basic | ORT quantize_static (best) | int8 |" in summary
    assert "channels_last" not in summary and "machine: " in summary
    assert "energy: an ESTIMATE" in summary and "energy µJ*" in text
    for row in result.rows:
        assert row.energy_uj is not None and row.energy_uj > 0, row.key
    int8, fp32 = result.row("peers", "ORT quantize_static (best)"), result.row("peers", "ORT fp32")
    assert int8.energy_uj < fp32.energy_uj / 3  # 0.23 vs 4.6 pJ per MAC, 1 vs 4 bytes per weight


def test_a_failing_pipeline_is_recorded_and_the_rest_still_measured(tmp_path, monkeypatch):
    from graphopt.benchmark import runner

    real = runner.run_pipeline

    def flaky(bench, pipeline, *args, **kwargs):
        if pipeline.prune:
            raise GraphoptError("simulated pass failure")
        return real(bench, pipeline, *args, **kwargs)

    monkeypatch.setattr(runner, "run_pipeline", flaky)
    config = BenchConfig(
        model="mlp",
        pipelines=(parse_pipeline("generic-fp32+prune=0.3"), parse_pipeline("generic-fp32")),
        rounds=1, round_ms=2, out_dir=tmp_path, plot=False, measure_peak=False, quiet=True,
    )  # fmt: skip
    result = run_bench(config)
    assert [e.pipeline for e in result.errors] == ["generic-fp32+prune=0.3"]
    assert result.row("generic-fp32", "artifact:onnx").timed
    data = json.loads((tmp_path / "bench.json").read_text())
    assert data["errors"][0]["message"] == "simulated pass failure"
    assert "ERROR (generic-fp32+prune=0.3)" in (tmp_path / "bench.md").read_text()


def test_an_interrupted_run_leaves_what_it_measured(tmp_path, monkeypatch):
    from graphopt.benchmark import runner

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "run_pipeline", interrupted)
    config = BenchConfig(model="mlp", pipelines=(parse_pipeline("generic-fp32"),), out_dir=tmp_path,
                         measure_peak=False, quiet=True)  # fmt: skip
    with pytest.raises(KeyboardInterrupt):
        run_bench(config)
    data = json.loads((tmp_path / "bench.json").read_text())
    assert data["complete"] is False
    assert any(r["stage"] == "ORT fp32" for r in data["rows"])  # the peers built before the interruption
    assert "INCOMPLETE" in (tmp_path / "bench.md").read_text()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["bench", "resnet9000"], "unknown model .resnet9000.; known models: .*digits, digits_resnet"),
        (["bench", "resnet_basic", "-t", "generic-fp32+early-exit"], "labelled data, which resnet_basic"),
        (
            ["bench", "tests.factories:small_cnn", "--input-shape", "1,3,8,8", "-t", "x86-int8"],
            "--synthetic-data",
        ),
        (["bench", "tests.factories:broken", "--input-shape", "1,3,8,8"], "raised RuntimeError"),
        (["bench", "mlp", "-t", "x86-int8+prune=2"], r"prune must be a fraction in \[0, 1\)"),
    ],
)
def test_bench_cli_errors_are_one_clear_line(argv, message, capsys, tmp_path):
    assert main([*argv, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("graphopt: error: ") and re.search(message, err)


def test_bench_compare_cli(tmp_path, capsys):
    first, second = tmp_path / "a.json", tmp_path / "b.json"
    first.write_text(_result(_row("a", 1.0, 2.0)).to_json())
    second.write_text(_result(_row("a", 1.0, 2.5)).to_json())
    assert main(["bench-compare", str(first), str(first)]) == 0
    assert main(["bench-compare", str(first), str(second)]) == 1
    assert "over tolerance" in capsys.readouterr().out
    (tmp_path / "c.json").write_text("{not json")
    assert main(["bench-compare", str(first), str(tmp_path / "c.json")]) == 2


def _digits_with_exit_heads(monkeypatch, digits, digits_model, epochs: int) -> None:
    """``digits`` in the bench models: the trained fixture with a one-exit configuration (no training)."""
    from graphopt.benchmark import models
    from graphopt.early_exit.config import EarlyExitConfig

    # MACs keep the exit: whether it pays on this machine is tests/test_exit_costs.py's question
    config = EarlyExitConfig(exits=("features.6",), epochs=epochs, quiet=True, cost="macs")
    monkeypatch.setitem(
        models.DIGITS_MODELS,
        "digits",
        lambda seed, quiet: models._digits("digits", digits_model, digits, digits.test_batches(), config),
    )


def _quick_bench(*labels: str, **settings) -> object:
    pipelines = tuple(parse_pipeline(label) for label in labels)
    config = BenchConfig(model="digits", pipelines=pipelines, rounds=1, round_ms=2, measure_peak=False,
                         quiet=True, **settings)  # fmt: skip
    return run_bench(config)


def test_early_exit_rows_are_timed_image_by_image(digits, digits_model, monkeypatch):
    _digits_with_exit_heads(monkeypatch, digits, digits_model, epochs=5)
    timed: dict[str, int] = {}
    per_sample = bench_timing.interleaved_per_sample

    def counting(calls, *args, **kwargs):
        timed.update({name: len(bound) for name, bound in calls.items()})
        return per_sample(calls, *args, **kwargs)

    monkeypatch.setattr(bench_timing, "interleaved_per_sample", counting)
    result = _quick_bench("generic-fp32+early-exit")
    images = len(digits.test_y)
    assert timed["exits"] == timed[ORT_FP32] == images
    assert timed[EAGER_FP32] == len(range(0, images, bench_timing.EAGER_STRIDE)) < images  # every 10th image
    row = result.row("generic-fp32+early-exit", "artifact:onnx")
    assert row.mean_ms is not None and row.mean_ms > 0
    assert row.latency_basis.startswith("per held-out image") and row.latency.runs == len(digits.test_y)
    assert row.speedup_vs_ort_fp32 > 0 and row.speedup_vs_eager > 0 and row.speedup_vs_ort_int8 is None
    assert row.accuracy > 0.9
    assert row.no_exit_mean_ms is None  # generic-fp32 without exits did not run: nothing to compare with
    assert (
        result.row("generic-fp32+early-exit", "insert_early_exit").macs < result.row("peers", "ORT fp32").macs
    )


def test_pipelines_sharing_their_first_passes_run_them_once(digits, digits_model, monkeypatch):
    _digits_with_exit_heads(monkeypatch, digits, digits_model, epochs=2)
    labels = ("generic-fp32+prune=0.3", "generic-fp32+prune=0.3+early-exit")
    result = _quick_bench(*labels, recovery_epochs=1)
    reused = the_note(result, REUSED).facts  # prune, re-estimate, recover: run once
    assert reused["pipeline"] == labels[1] and {"prune_channels", "recover"} <= set(reused["stages"])
    first, second = (result.row(label, "recover") for label in labels)
    assert first.accuracy == second.accuracy and first.params == second.params  # the same stage, kept
    exits = result.row(labels[1], "artifact:onnx")  # timed image by image against its twin without exits
    assert exits.no_exit_mean_ms > 0 and exits.mean_ms > 0
    assert the_note(exits, EXITS_AGAINST_NO_EXITS).facts["without_exits"] == labels[0]


def test_torch_pruning_peer_prunes_when_installed():
    pytest.importorskip(
        "torch_pruning", reason="Torch-Pruning is an optional peer: pip install 'graphopt[peers]'"
    )
    from graphopt.benchmark.peer_rows import model_cost, torch_pruning_magnitude
    from graphopt.zoo import get_model

    model, inputs = get_model("resnet_basic").build()
    pruned = torch_pruning_magnitude(model, inputs, 0.5)
    assert model_cost(pruned, inputs).macs < 0.5 * model_cost(model, inputs).macs
    assert pruned(*inputs).shape == model(*inputs).shape  # the classifier is kept whole


def test_without_torch_pruning_the_result_says_so(monkeypatch):
    import importlib.util

    from graphopt.benchmark import peer_rows

    real = importlib.util.find_spec
    monkeypatch.setattr(
        peer_rows.importlib.util, "find_spec", lambda n: None if n == "torch_pruning" else real(n)
    )
    notes: list[str] = []
    assert peer_rows._torch_pruning(load_bench_model("mlp"), 0.5, notes) is None
    assert the_note(notes, peer_rows.PEER_NOT_INSTALLED).facts == {"peer": "torch_pruning", "extra": "peers"}


def test_torch_pruning_peer_is_fine_tuned_on_labels_alone(digits, digits_model):
    pytest.importorskip(
        "torch_pruning", reason="Torch-Pruning is an optional peer: pip install 'graphopt[peers]'"
    )
    from graphopt.benchmark import models, peer_rows
    from graphopt.recovery.config import RecoveryConfig
    from graphopt.reporting.evaluation import accuracy

    bench = models._digits("digits", digits_model, digits, None, None)
    pruned = peer_rows.torch_pruning_magnitude(digits_model, bench.example_inputs, 0.7)
    before = accuracy(pruned, bench.eval)
    note = peer_rows._fine_tune(pruned, bench, RecoveryConfig(epochs=2, patience=None, quiet=True))
    assert note.startswith("fine-tuned 2 epochs on labels alone")
    assert accuracy(pruned, bench.eval) > before + 0.05  # 70 % of the channels gone: training brings it back
    assert peer_rows._fine_tune(pruned, bench, None) == "no fine-tuning"


def test_every_stage_that_trains_uses_the_models_recipe(monkeypatch, digits, digits_model):
    """Recovery, QAT and the pruned peers fine-tune the way the bench model says (its optimizer, schedule
    and distillation); the run sets the epochs and the seed, and labels-only drops the teacher alone."""
    from dataclasses import replace

    from graphopt.benchmark import models, runner, stages
    from graphopt.recovery.config import DistillConfig, OptimizerConfig, RecoveryConfig

    seen = {}

    def record(call, cached=None):
        seen["recovery"] = call.recovery
        raise ConfigError("stop here")

    monkeypatch.setattr(stages, "run_call", record)
    recipe = RecoveryConfig(
        optimizer=OptimizerConfig(lr=0.02), schedule="onecycle", distill=DistillConfig(tau=2)
    )
    bench = replace(models._digits("digits", digits_model, digits, None, None), recipe=recipe)
    for label, alpha in (("x86-int8+prune=0.5", 0.1), ("x86-int8+prune=0.5+labels-only", 1.0)):
        with pytest.raises(ConfigError, match="stop here"):
            stages.run_pipeline(
                bench, parse_pipeline(label), Path("."), recovery_epochs=3, seed=7, quiet=True
            )
        used = seen["recovery"]
        assert (used.optimizer.lr, used.schedule, used.epochs, used.seed) == (0.02, "onecycle", 3, 7)
        assert used.distill.alpha == alpha and used.augment is bench.augment
    config = BenchConfig(model="digits", pipelines=(parse_pipeline("x86-int8+prune=0.5"),), recovery_epochs=3,
                         seed=7, quiet=True)  # fmt: skip
    peer = runner._peer_fine_tune(config, bench)
    assert (peer.optimizer.lr, peer.schedule, peer.epochs, peer.seed) == (0.02, "onecycle", 6, 7)


def test_the_pruned_peer_fine_tunes_with_the_data_graphopt_recovers_with(monkeypatch):
    """Torch-Pruning's fine-tuning chooses its epoch on the bench's validation split, as recovery does, so
    that both train on all of the training data."""
    from types import SimpleNamespace

    from torch import nn

    from graphopt.benchmark import peer_rows
    from graphopt.recovery.config import RecoveryConfig
    from graphopt.recovery.engine import RecoveryResult

    seen = {}

    def fake_fit(model, teacher, train, config, **kwargs):
        seen.update(kwargs, teacher=teacher, alpha=config.distill.alpha)
        return RecoveryResult(config.epochs, 1, 0.0, "cpu", None, None, None, False)

    monkeypatch.setattr(peer_rows, "fit", fake_fit)
    bench = SimpleNamespace(train=[("x", "y")], validation=[("held", "out")])
    said = peer_rows._fine_tune(nn.Linear(2, 2), bench, RecoveryConfig(epochs=3, quiet=True))
    assert seen["val_data"] is bench.validation and seen["teacher"] is None and seen["alpha"] == 1.0
    assert "3 epochs on labels alone" in said


def test_rows_scored_while_optimizing_are_not_scored_again_and_hold_their_runtimes_accuracy(
    digits, digits_model, monkeypatch, tmp_path
):
    from graphopt.backends import OnnxRunner
    from graphopt.benchmark import evaluate as bench_evaluate
    from graphopt.reporting.evaluation import accuracy

    scored: list[object] = []

    def counting(predict, data):
        scored.append(predict)
        return accuracy(predict, data)

    monkeypatch.setattr(bench_evaluate, "accuracy", counting)
    _digits_with_exit_heads(monkeypatch, digits, digits_model, epochs=1)  # the trained fixture
    label, stem = "generic-fp32+prune=0.3", "generic-fp32_prune0.3"
    result = _quick_bench(label, out_dir=tmp_path, keep_artifacts=True, plot=False, recovery_epochs=0)
    artifact, reestimated = result.row(label, "artifact:onnx"), result.row(label, "reestimate_batchnorm")
    assert artifact.accuracy > 0.9 and reestimated.accuracy > 0.9  # re-estimated: scored in eager
    files = {getattr(p.__self__, "path", None) for p in scored}
    assert len(scored) == 6  # the two eager peers and four files (TorchScript goes image by image)
    lowered = {"peer_ort_fp32", "peer_tp_0.3", f"{stem}_prune_channels", f"{stem}_fold_batchnorm"}
    assert files - {None} == {tmp_path / "artifacts" / f"{name}.onnx" for name in lowered}
    file = OnnxRunner(tmp_path / "artifacts" / f"{stem}.onnx")
    assert accuracy(file.run_batched, digits.test_batches()) == artifact.accuracy


def test_a_custom_target_benches_as_given():
    """A Target that is no preset (a replace under a new name) runs in the bench as given, named by its
    own name in the rows."""
    import dataclasses

    import graphopt

    custom = dataclasses.replace(graphopt.TARGETS["generic-fp32"], name="my-fp32")
    config = BenchConfig(model="mlp", pipelines=(Pipeline(target=custom),), rounds=1, round_ms=5,
                         measure_peak=False, quiet=True)  # fmt: skip
    result = run_bench(config)
    assert result.complete and any(row.pipeline == "my-fp32" for row in result.rows)


@pytest.mark.parametrize("label", ["x86-int8+prune=0.5+early-exit+labels-only", "generic-fp32+early-exit"])
def test_an_exit_pipelines_twin_is_found_by_label_for_presets_and_custom_targets(label):
    assert without_exits_label(label) == parse_pipeline(label).without_exits.label
    custom = label.replace(label.split("+")[0], "my-target")  # no preset: cannot be parsed
    assert without_exits_label(custom) == custom.replace("+early-exit", "")
