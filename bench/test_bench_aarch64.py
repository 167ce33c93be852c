"""ResNet-18 arm-int8 on the aarch64 build of onnxruntime 1.20.1 (emulated with qemu-user): what it fuses
and how closely it matches the file's reference semantics. Emulated time says nothing about ARM speed, so
nothing is timed here.

Run: ``python -m pytest bench/test_bench_aarch64.py --benchmark-enable -s``
"""

from __future__ import annotations

import torch

import graphopt
from graphopt.verify import ForeignRuntime, verify_artifact
from graphopt.zoo import get_model


def test_resnet18_arm_int8_on_aarch64(benchmark, tmp_path):
    ForeignRuntime("aarch64").prepare(quiet=False)
    model, inputs = get_model("resnet18").build()
    generator = torch.Generator().manual_seed(0)
    calibration = [torch.randn(inputs[0].shape, generator=generator) for _ in range(32)]
    result = graphopt.optimize(model, "arm-int8", example_inputs=inputs, calibration_data=calibration)
    path = result.export(tmp_path / "resnet18-arm-int8.onnx", latency_guard=False)
    verified = benchmark.pedantic(
        lambda: verify_artifact(path, "aarch64", input_sets=2), rounds=1, iterations=1
    )
    benchmark.extra_info.update({"ops": dict(verified.ops), "min_cosine": verified.min_cosine})
    print("\n" + verified.summary())
    assert verified.ops["QLinearConv"] == 20 and verified.ops["QLinearAdd"] == 8
