"""int8 artifacts on the runtimes devices run: onnxruntime 1.20.1 on x86_64, and the aarch64 build of
onnxruntime 1.20.1 under qemu-user emulation. Every Conv fuses into QLinearConv on the target's own CPU
family, outputs match the file's reference semantics, and a wrong-family artifact is flagged.

The runtimes are set up once (about a minute, from PyPI and Debian's apt) and cached under
~/.cache/graphopt/runtimes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import graphopt
from graphopt.cli import main
from graphopt.verify import ForeignRuntime, verify_artifact
from graphopt.zoo import get_model
from tests.factories import rgb_stem_net

# (model, convs, residual adds); each has one Linear classifier.
MODELS = [("resnet_basic", 9, 3), ("mobilenet_v2_tiny", 16, 2)]


def _runtime(arch: str) -> ForeignRuntime:
    ok, why = ForeignRuntime.can_be_set_up(arch)
    if not ok:
        pytest.skip(why)
    runtime = ForeignRuntime(arch)
    runtime.prepare()
    return runtime


@pytest.fixture(scope="module")
def aarch64() -> ForeignRuntime:
    return _runtime("aarch64")


@pytest.fixture(scope="module")
def x86_ort_1_20() -> ForeignRuntime:
    return _runtime("x86_64")


def _artifact(name: str, target: str, tmp_path):
    model, inputs = get_model(name).build()
    return _export(model, inputs, target, tmp_path / f"{name}-{target}.onnx")


def _export(model, inputs, target: str, path):
    calibration = [torch.randn(8, *inputs[0].shape[1:]) for _ in range(4)]
    result = graphopt.optimize(model, target, example_inputs=inputs, calibration_data=calibration)
    return result.export(path, latency_guard=False)


def _assert_fully_integer(result, convs: int, adds: int) -> None:
    ops = result.ops
    assert ops["QLinearConv"] == convs and ops["Conv"] == 0, ops
    assert ops["QLinearAdd"] == adds and ops["Add"] == 0, ops
    assert ops["QGemm"] == 1 and ops["Gemm"] == 0, ops
    assert ops["Transpose"] <= 2, ops  # only at the entry and exit of the integer region
    assert result.ok and result.min_cosine >= 0.999, result.summary()
    assert result.kernel_cosine >= 0.999 and result.platform_cosine >= 0.999, result.summary()


@pytest.mark.parametrize(("name", "convs", "adds"), MODELS)
def test_x86_int8_fuses_fully_on_onnxruntime_1_20(x86_ort_1_20, name, convs, adds, tmp_path):
    result = verify_artifact(_artifact(name, "x86-int8", tmp_path), "x86_64", ort_version="1.20.1")
    assert result.runtime == "onnxruntime 1.20.1 on x86_64"
    _assert_fully_integer(result, convs, adds)


@pytest.mark.parametrize(("name", "convs", "adds"), MODELS)
def test_arm_int8_fuses_fully_on_emulated_aarch64(aarch64, name, convs, adds, tmp_path):
    result = verify_artifact(_artifact(name, "arm-int8", tmp_path), "aarch64")
    assert result.runtime == "onnxruntime 1.20.1 on aarch64"
    _assert_fully_integer(result, convs, adds)


def test_x86_int8_space_to_depth_stem_on_onnxruntime_1_20(x86_ort_1_20, tmp_path):
    """The rewritten RGB stem (u8 Pad -> SpaceToDepth -> QLinearConv) runs and fuses on the older runtime."""
    path = _export(rgb_stem_net().eval(), (torch.randn(1, 3, 32, 32),), "x86-int8", tmp_path / "stem.onnx")
    result = verify_artifact(path, "x86_64", ort_version="1.20.1")
    assert result.ops["SpaceToDepth"] == 1, result.ops
    _assert_fully_integer(result, convs=3, adds=1)


def test_arm_int8_on_x86_is_flagged(x86_ort_1_20, tmp_path):
    """s8 x s8 QDQ is what aarch64 fuses; x86 fuses only part of it: verify must say so, not pass it."""
    result = verify_artifact(_artifact("resnet_basic", "arm-int8", tmp_path), "x86_64")
    assert not result.ok
    assert result.ops["Conv"] > 0
    assert any("not fused" in problem for problem in result.problems)


def test_verify_cli(aarch64, tmp_path, capsys):
    path = _artifact("resnet_basic", "arm-int8", tmp_path)
    assert main(["verify", str(path), "--arch", "aarch64"]) == 0
    assert "on aarch64: OK" in capsys.readouterr().out
    assert main(["verify", str(tmp_path / "missing.onnx")]) == 2
    assert "no ONNX file" in capsys.readouterr().err


def test_generated_inputs_index_tables_within_their_rows(tmp_path):
    """Token ids must index the embedding (uniform over its rows), masks are all ones, and a symbolic
    sequence length gets a real size."""
    from graphopt.backends import OnnxRunner, export_onnx
    from graphopt.data.dims import DynamicDims
    from graphopt.verify import SYMBOLIC_SIZE, _random_inputs

    class Tokens(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Embedding(50, 8)

        def forward(self, ids, mask):
            return self.embed(ids) * mask.unsqueeze(-1).float()

    example = (torch.randint(0, 50, (1, 6)), torch.ones(1, 6, dtype=torch.long))
    dims = DynamicDims.of({"ids": {1: "seq"}, "mask": {1: "seq"}}, ["ids", "mask"], 2)
    path = export_onnx(Tokens().eval(), example, tmp_path / "tokens.onnx", dynamic=dims)
    feeds = _random_inputs(OnnxRunner(path), sets=2, seed=0)
    ids, mask = feeds["0/0"], feeds["0/1"]
    assert ids.shape == (1, SYMBOLIC_SIZE) and ids.dtype == np.int64 and ids.min() >= 0 and ids.max() < 50
    assert ids.max() > 25  # drawn over the table, not stuck near zero
    assert mask.shape == (1, SYMBOLIC_SIZE) and (mask == 1).all()


def _verdict(overall: float, kernels: float, platform: float):
    from collections import Counter
    from pathlib import Path

    from graphopt.verify import VerifyResult, _disagreement

    result = VerifyResult(
        Path("m.onnx"), "onnxruntime 1.20.1 on aarch64", Counter(), True, overall, kernels, platform
    )
    return _disagreement(result)


def test_a_disagreement_names_its_cause():
    """The device's unoptimized run tells its fused kernels from the float ops of the two machines."""
    kernels = _verdict(overall=0.95, kernels=0.95, platform=1.0)
    assert "fused integer kernels disagree" in kernels and "0.95000" in kernels
    fragile = _verdict(overall=0.966, kernels=1.0, platform=0.966)
    assert (
        "numerically fragile" in fragile
        and "graph optimizations off the runtime differs as much (cosine 0.96600)" in fragile
    )
    assert "accuracy_budget" in fragile
    both_small = _verdict(overall=0.998, kernels=0.9995, platform=0.9995)
    assert "each agree" in both_small and "fragile" not in both_small and "kernels disagree" not in both_small


def test_a_runtime_that_does_not_finish_is_a_clear_error(tmp_path, monkeypatch):
    """Emulated runs are slow and the file runs twice: a timeout names the runtime, file and way out."""
    import subprocess

    from graphopt.errors import RuntimeSetupError
    from graphopt.verify import _run_foreign

    def too_slow(self, *args, **kwargs):
        raise subprocess.TimeoutExpired("python", 600)

    monkeypatch.setattr(ForeignRuntime, "run", too_slow)
    runtime = ForeignRuntime("aarch64")
    feeds = {"0/0": np.zeros(1), "1/0": np.zeros(1)}
    with pytest.raises(
        RuntimeSetupError, match=r"did not finish m\.onnx in 600 s .*2 input sets.*input_sets"
    ):
        _run_foreign(runtime, tmp_path / "m.onnx", feeds)
