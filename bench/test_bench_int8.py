"""int8 against ONNX Runtime's ``quantize_static`` (defaults and best settings), side by side in one run.

For ResNet-18 and MobileNetV2 at 224x224: latency of graphopt's x86-int8 artifacts (ONNX and TorchScript),
both ORT presets and the unoptimized model in ORT fp32, timed interleaved on one pinned core; output
agreement with the fp32 model; and the wall time of ``optimize`` + ``export`` with 100 calibration
samples. For digits: accuracy of the three int8 artifacts on the held-out split, for three training seeds.

Run: ``python -m pytest bench/test_bench_int8.py --benchmark-enable -s``
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

import graphopt
from graphopt.backends import OnnxRunner, TorchScriptRunner, export_onnx
from graphopt.backends.timing import interleaved_medians
from graphopt.benchmark.peers import ort_quantize_static
from graphopt.data.digits import DigitsTraining, load_digits_split, train_digits_cnn
from graphopt.reporting.evaluation import accuracy
from graphopt.zoo import get_model

from .side_by_side import artifact_lines

PRESETS = ("default", "best")


def _artifacts(
    model, inputs, calibration, tmp: Path, *, latency_guard: bool = True
) -> tuple[dict[str, Path], float, object]:
    start = time.perf_counter()
    result = graphopt.optimize(model, "x86-int8", example_inputs=inputs, calibration_data=calibration)
    ours = result.export(tmp / "graphopt.onnx", latency_guard=latency_guard)
    seconds = time.perf_counter() - start
    paths = {"ort_fp32": export_onnx(model.eval(), inputs, tmp / "fp32.onnx"), "graphopt_x86_int8": ours}
    batches = [(x,) for x in calibration]
    for preset in PRESETS:
        paths[f"ort_quantize_static_{preset}"] = ort_quantize_static(
            model, inputs, batches, tmp / f"ort_{preset}.onnx", preset
        )
    return paths, seconds, result


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2"])
def test_int8_vs_ort_quantize_static(benchmark, name, tmp_path):
    model, inputs = get_model(name).build()
    generator = torch.Generator().manual_seed(0)
    calibration = [torch.randn(inputs[0].shape, generator=generator) for _ in range(100)]
    paths, seconds, result = _artifacts(model, inputs, calibration, tmp_path)
    runners = {key: OnnxRunner(path) for key, path in paths.items()}
    paths["graphopt_x86_int8_torchscript"] = result.export(tmp_path / "graphopt.pt")
    runners["graphopt_x86_int8_torchscript"] = TorchScriptRunner(paths["graphopt_x86_int8_torchscript"])
    medians = interleaved_medians(
        {key: (lambda r=r: r.run(*inputs)) for key, r in runners.items()}, rounds=7, calls_per_round=10
    )
    probes = [torch.randn(inputs[0].shape, generator=generator) for _ in range(4)]
    with torch.no_grad():
        expected = [model(x) for x in probes]
    lines = [f"{name}: optimize + export (100 calibration samples) {seconds:.1f} s"]
    lines += artifact_lines(benchmark, medians, runners, paths, expected, probes)
    benchmark.extra_info["optimize_plus_export_s"] = round(seconds, 2)
    benchmark.pedantic(lambda: runners["graphopt_x86_int8"].run(*inputs), rounds=10, iterations=1)
    print("\n" + "\n".join(lines))
    assert result.report.stages[-1].kind == "artifact"


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_digits_int8_accuracy_vs_ort(benchmark, seed, tmp_path):
    split = load_digits_split()
    model = train_digits_cnn(split, DigitsTraining(seed=seed), quiet=True)
    inputs = (split.test_x[:1],)
    calibration = [split.train_x[i : i + 1] for i in range(320)]
    # The guard would ship fp32 for this overhead-bound model; this compares int8 accuracy, so it is off.
    paths, _, _ = _artifacts(model, inputs, calibration, tmp_path, latency_guard=False)
    test = split.test_batches()
    scores = {key: 100 * accuracy(OnnxRunner(path).run_batched, test) for key, path in paths.items()}
    scores["eager_fp32"] = 100 * accuracy(model.eval(), test)
    benchmark.extra_info.update({k: round(v, 2) for k, v in scores.items()})
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    print(f"\ndigits seed {seed}: " + ", ".join(f"{k} {v:.2f} %" for k, v in scores.items()))
    assert all(0 <= v <= 100 for v in scores.values())
