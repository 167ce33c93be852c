"""Per-pass timing of ``optimize`` and artifact latency against ORT fp32 of the original, in one run.

Models: the in-repo ResNet-18 and MobileNetV2 at 224x224 (random weights, randomised BN statistics).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import torch

import graphopt
from graphopt.backends import OnnxRunner, TorchScriptRunner, export_onnx
from graphopt.backends.timing import interleaved_medians
from graphopt.zoo import get_model

MODELS = ("resnet18", "mobilenet_v2")


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("target", ["generic-fp32", "arm-fp32"])
def test_optimize_time(benchmark, name, target):
    model, inputs = get_model(name).build()
    result = benchmark.pedantic(
        lambda: graphopt.optimize(model, target=target, example_inputs=inputs), rounds=3, iterations=1
    )
    for stage in result.report.stages[1:]:
        benchmark.extra_info[f"{stage.stage}_s"] = round(stage.seconds, 4)
        benchmark.extra_info[f"{stage.stage}_stats"] = stage.stats


@pytest.mark.parametrize("name", MODELS)
def test_artifact_latency_vs_ort_fp32(benchmark, name):
    model, inputs = get_model(name).build()
    result = graphopt.optimize(model, example_inputs=inputs)
    with tempfile.TemporaryDirectory() as tmp:
        original = OnnxRunner(export_onnx(model, inputs, Path(tmp) / "original.onnx"))
        optimized = OnnxRunner(result.export(Path(tmp) / "optimized.onnx"))
        scripted = TorchScriptRunner(result.export(Path(tmp) / "optimized.pt"), threads=1)
        eager = model.eval()

        def run_eager() -> object:
            with torch.no_grad():
                return eager(*inputs)

        medians = interleaved_medians(
            {
                "ort_fp32_original": lambda: original.run(*inputs),
                "ort_fp32_optimized": lambda: optimized.run(*inputs),
                "torchscript_optimized": lambda: scripted.run(*inputs),
                "eager_original": run_eager,
            },
            rounds=5,
            calls_per_round=5 if name == "resnet18" else 10,
        )
        benchmark.pedantic(lambda: optimized.run(*inputs), rounds=20, iterations=1, warmup_rounds=2)
    base = medians["ort_fp32_original"]
    for key, ms in medians.items():
        benchmark.extra_info[f"{key}_ms"] = round(ms, 3)
        benchmark.extra_info[f"{key}_speedup_vs_ort_fp32"] = round(base / ms, 3)
    print(f"\n{name}: " + ", ".join(f"{k} {v:.2f} ms ({base / v:.2f}x)" for k, v in medians.items()))
    assert all(ms > 0 for ms in medians.values())
