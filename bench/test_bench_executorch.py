"""ExecuTorch: graphopt's xnnpack-int8 ``.pte`` against ExecuTorch's own PT2E flow, side by side in one run.

For ResNet-18 and MobileNetV2 at 224x224 (random convolutions, BatchNorm statistics calibrated on random
inputs as the issue's anchor did): latency of both int8 ``.pte`` files, ExecuTorch fp32 and ORT fp32, timed
interleaved on one pinned core; cosine to the fp32 model on probes; file sizes; the wall time of graphopt's
``.pte`` export. Both int8 flows calibrate on the same 16 samples.

Run: ``python -m pytest bench/test_bench_executorch.py --benchmark-enable -s``
"""

from __future__ import annotations

import time

import pytest
import torch

import graphopt
from graphopt.backends import ExecuTorchRunner, OnnxRunner, export_executorch, export_onnx
from graphopt.backends.timing import interleaved_medians
from graphopt.zoo import get_model

from .side_by_side import artifact_lines

pytest.importorskip("executorch", reason="pip install 'graphopt[executorch]'")


def _with_calibrated_batchnorm(model: torch.nn.Module, shape: torch.Size) -> torch.nn.Module:
    generator = torch.Generator().manual_seed(1)
    model.train()
    with torch.no_grad():
        for _ in range(4):
            model(torch.randn(8, *shape[1:], generator=generator))
    return model.eval()


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2"])
def test_pte_int8_vs_executorch_pt2e(benchmark, name, tmp_path):
    from graphopt.backends.executorch_backend import pt2e_executorch

    model, inputs = get_model(name).build()
    model = _with_calibrated_batchnorm(model, inputs[0].shape)
    generator = torch.Generator().manual_seed(0)
    calibration = [torch.randn(inputs[0].shape, generator=generator) for _ in range(16)]
    result = graphopt.optimize(model, "xnnpack-int8", example_inputs=inputs, calibration_data=calibration)
    start = time.perf_counter()
    ours = export_executorch(result.model, inputs, tmp_path / "graphopt.pte")
    export_s = time.perf_counter() - start
    paths = {
        "ort_fp32": export_onnx(model, inputs, tmp_path / "fp32.onnx"),
        "executorch_fp32": export_executorch(model, inputs, tmp_path / "fp32.pte"),
        "executorch_pt2e_int8": pt2e_executorch(
            model, inputs, [(x,) for x in calibration], tmp_path / "pt2e.pte"
        ),
        "graphopt_xnnpack_int8": ours,
    }
    runners = {k: OnnxRunner(p) if p.suffix == ".onnx" else ExecuTorchRunner(p) for k, p in paths.items()}
    medians = interleaved_medians(
        {key: (lambda r=r: r.run(*inputs)) for key, r in runners.items()}, rounds=7, calls_per_round=10
    )
    probes = [torch.randn(inputs[0].shape, generator=generator) for _ in range(4)]
    with torch.no_grad():
        expected = [model(x) for x in probes]
    lines = [f"{name}: graphopt .pte export {export_s:.1f} s"]
    lines += artifact_lines(benchmark, medians, runners, paths, expected, probes)
    ratio = medians["executorch_pt2e_int8"] / medians["graphopt_xnnpack_int8"]
    lines.append(f"  graphopt .pte vs PT2E .pte: {ratio:.2f}x")
    benchmark.extra_info["export_s"] = round(export_s, 2)
    benchmark.pedantic(lambda: runners["graphopt_xnnpack_int8"].run(*inputs), rounds=10, iterations=1)
    print("\n" + "\n".join(lines))
    assert (
        paths["graphopt_xnnpack_int8"].stat().st_size <= 1.01 * paths["executorch_pt2e_int8"].stat().st_size
    )
