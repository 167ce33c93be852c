"""int8 TorchScript artifacts run PyTorch's integer kernels (x86 and qnnpack engines), agree with the ONNX
artifact of the same model, and keep digits accuracy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import graphopt
from graphopt.backends import OnnxRunner, TorchScriptRunner
from graphopt.reporting.numerics import agreement
from graphopt.zoo import get_model


@pytest.mark.parametrize(("target", "engine"), [("x86-int8", "x86"), ("arm-int8", "qnnpack")])
@pytest.mark.parametrize("name", ["resnet_basic", "mobilenet_v2_tiny"])
def test_int8_torchscript_runs_integer_kernels(name, target, engine, tmp_path):
    model, inputs = get_model(name).build()
    calibration = [torch.randn(8, *inputs[0].shape[1:]) for _ in range(2)]
    res = graphopt.optimize(model, target, example_inputs=inputs, calibration_data=calibration)
    engine_before = torch.backends.quantized.engine
    scripted = TorchScriptRunner(res.export(tmp_path / "m.pt", latency_guard=False))
    onnx_file = OnnxRunner(res.export(tmp_path / "m.onnx", latency_guard=False, backend="onnx"))
    assert torch.backends.quantized.engine == engine_before  # exporting does not change the process

    assert scripted.engine == engine
    graph = str(scripted.module.graph)
    assert "quantized::conv2d" in graph and "quantized::linear" in graph
    assert "fake_quantize" not in graph and "dequantize_per_channel" not in graph
    x = torch.randn(4, *inputs[0].shape[1:])
    ts_out, onnx_out = scripted.run(x)[0], onnx_file.run(x)[0]
    assert agreement(torch.from_numpy(onnx_out), torch.from_numpy(ts_out)).cosine >= 0.999
    assert np.mean(ts_out.argmax(1) == onnx_out.argmax(1)) >= 0.75


def test_int8_torchscript_keeps_digits_accuracy(digits_model, digits, tmp_path):
    res = graphopt.optimize(
        digits_model, "x86-int8", example_inputs=(digits.test_x[:1],),
        calibration_data=[digits.train_x[i : i + 32] for i in range(0, 320, 32)],
        eval_data=digits.test_batches(),
    )  # fmt: skip
    res.export(tmp_path / "d.pt", latency_guard=False)
    original, artifact = res.report.stage("original"), res.report.stages[-1]
    assert (artifact.kind, artifact.backend) == ("artifact", "torchscript")
    assert artifact.accuracy >= original.accuracy - 0.006
