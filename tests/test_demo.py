from __future__ import annotations

import pytest

import graphopt
from graphopt.artifacts.result import LATENCY_GUARD
from graphopt.demo import DemoConfig, run_demo
from graphopt.early_exit.reporting import NO_EXIT_PAYS
from graphopt.ir.keys import SHIPPED_FP32
from graphopt.reporting.notes import note_keys


def test_demo_trains_optimizes_exports_and_reports(tmp_path):
    result = run_demo(DemoConfig(epochs=4, recovery_epochs=2, out_dir=tmp_path, quiet=True))
    report = result.report
    stages = [s.stage for s in report.stages]
    assert stages[:11] == [
        "original", "prune_channels", "reestimate_batchnorm", "recover", "fold_batchnorm", "remove_identity",
        "eliminate_dead_code", "space_to_depth", "insert_fake_quant", "calibrate", "qat",
    ]  # fmt: skip
    pruned = report.stage("qat")
    assert pruned.macs <= 0.3 * report.stage("original").macs
    assert "original in ORT fp32" in stages
    original = report.stage("original")
    onnx = report.artifact("onnx")
    assert original.accuracy > 0.85  # 4 epochs; 30 epochs reach ~99.5 %
    # the artifact is the int8 model, or its fp32 twin (the QAT-trained weights, no activation rounding)
    # when the latency guard falls back: either way what QAT trained, not the copy from before int8
    tolerance = 0.02 if onnx.stats[SHIPPED_FP32] else 0.01
    assert abs(onnx.accuracy - report.stage("qat").accuracy) <= tolerance
    assert onnx.accuracy >= original.accuracy - 0.06  # half the channels, only 2 recovery epochs here
    assert onnx.latency.median_ms > 0 and report.speedup(onnx) is not None
    assert "guard_int8_ms" in onnx.stats and onnx.note(LATENCY_GUARD).facts["runtime"] == "onnxruntime"
    assert report.stage("fold_batchnorm").stats == {"folded": 3}
    for name in ("digits.onnx", "digits.pt", "digits.pt2"):
        assert (tmp_path / name).is_file()
    loaded = graphopt.load(tmp_path / "digits.pt2")
    x = result.example_inputs[0]
    assert loaded(x).argmax() == result.model(x).argmax()


def test_demo_with_early_exit_on_an_fp32_target(tmp_path):
    config = DemoConfig(
        target="generic-fp32",
        epochs=3,
        prune=0.0,
        recovery_epochs=0,
        early_exit=True,
        exit_epochs=5,  # of 30: the exit's lowering, timing and report are under test, not its accuracy
        out_dir=tmp_path,
        quiet=True,
    )
    report = run_demo(config).report
    assert report.stages[-4].stage == "insert_early_exit"
    onnx = report.artifact("onnx")
    assert onnx.accuracy > 0.8
    if "early_exit" in report.tables:  # the exit paid in ONNX Runtime on this machine
        assert onnx.stats["dataset_mean_ms"] > 0
    else:
        assert NO_EXIT_PAYS in note_keys(report)
    assert (tmp_path / "digits.pt2").is_file()


def test_a_bad_exit_epoch_count_fails_before_any_training():
    with pytest.raises(graphopt.ConfigError, match="exit_epochs must be an integer >= 1, got 0"):
        DemoConfig(early_exit=True, exit_epochs=0)
