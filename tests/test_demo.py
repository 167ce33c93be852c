from __future__ import annotations

import graphopt
from graphopt.demo import DemoConfig, run_demo


def test_demo_trains_optimizes_exports_and_reports(tmp_path):
    result = run_demo(DemoConfig(epochs=4, out_dir=tmp_path, quiet=True))
    report = result.report
    stages = [s.stage for s in report.stages]
    assert stages[:6] == ["original", "fold_batchnorm", "remove_identity", "eliminate_dead_code",
                          "insert_fake_quant", "calibrate"]  # fmt: skip
    assert "original in ORT fp32" in stages
    original = report.stage("original")
    onnx = next(s for s in report.stages if s.stage.startswith("artifact:onnx"))
    assert original.accuracy > 0.85  # 4 epochs; 30 epochs reach ~99.5 %
    assert abs(onnx.accuracy - original.accuracy) <= 0.02  # int8 (or the guard's fp32 fallback)
    assert onnx.latency.median_ms > 0 and report.speedup(onnx) is not None
    assert "guard_int8_ms" in onnx.stats and "latency guard:" in str(report)
    assert report.stage("fold_batchnorm").stats == {"folded": 3}
    for name in ("digits.onnx", "digits.pt", "digits.pt2"):
        assert (tmp_path / name).is_file()
    loaded = graphopt.load(tmp_path / "digits.pt2")
    x = result.example_inputs[0]
    assert loaded(x).argmax() == result.model(x).argmax()
