"""The LiteRT backend: ``.tflite`` files, fp32 and int8 from graphopt's own calibration, run by LiteRT.

Each conversion costs seconds (litert_torch's MLIR pipeline), so the int8 file is converted once per module
and the float-I/O file is derived from it by the flatbuffer edit, not by converting again.
"""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from torch import nn

import graphopt
from graphopt.backends import backend_for
from graphopt.errors import ConfigError, ExportError

pytest.importorskip("litert_torch", reason="the litert backend is optional: pip install 'graphopt[litert]'")

from graphopt.backends.litert_backend import (
    describe_tflite,
    export_litert,
    require_fully_integer,
    require_litert,
)
from graphopt.backends.litert_runner import LiteRTRunner
from graphopt.backends.tflite_file import layer_constants, read_model, summarize, with_float_io
from graphopt.ir.extensions import QuantizedLayer


class TinyCNN(nn.Module):
    """Stem, a residual block (add, then ReLU), a depthwise conv, global mean, linear: every op kind the
    int8 form must keep integer."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.body = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 1))
        self.depthwise = nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8)
        self.fc = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = torch.relu(x + self.body(x))
        return self.fc(self.depthwise(x).mean((2, 3)))


def _cosine(a: object, b: object) -> float:
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.fixture(scope="module")
def example() -> tuple[torch.Tensor]:
    return (torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(1)),)


@pytest.fixture(scope="module")
def int8_result(example):
    torch.manual_seed(0)
    calibration = [torch.randn(8, 3, 32, 32) for _ in range(2)]
    return graphopt.optimize(
        TinyCNN().eval(), "litert-int8", example_inputs=example, calibration_data=calibration
    )


@pytest.fixture(scope="module")
def int8_file(int8_result, example, tmp_path_factory):
    """graphopt's int8 model as a .tflite with int8 I/O (the converter's own boundary)."""
    path = tmp_path_factory.mktemp("tflite") / "int8.tflite"
    return export_litert(int8_result.model, example, path, integer_io=True)


def test_fp32_tflite_matches_the_model_quietly_and_runs_larger_batches(example, tmp_path, capfd):
    model = TinyCNN().eval()
    path = export_litert(model, example, tmp_path / "fp32.tflite")
    runner = LiteRTRunner(path)
    assert _cosine(runner.run(*example)[0], model(*example).detach()) > 0.9999
    assert capfd.readouterr() == ("", "")  # no progress bar, no absl / oneDNN / XNNPACK line from C++
    batch = torch.randn(3, 3, 32, 32)
    torch.testing.assert_close(torch.as_tensor(runner.run(batch)[0]), model(batch), rtol=1e-4, atol=1e-5)
    assert runner.time(*example, warmup=1, repeat=3).median_ms > 0
    assert "float" in describe_tflite(path) and "CONV_2D" in describe_tflite(path)
    with pytest.raises(ExportError, match=r"not fully integer: .*CONV_2D"):
        require_fully_integer(summarize(path.read_bytes()))  # what an int8 export refuses


def test_int8_tflite_is_fully_integer_with_graphopts_own_weights(int8_result, int8_file):
    summary = summarize(int8_file.read_bytes())
    assert not summary.float_ops and "QUANTIZE" not in summary.ops and "DEQUANTIZE" not in summary.ops
    assert summary.ops.count("CONV_2D") == 3 and summary.ops.count("DEPTHWISE_CONV_2D") == 1
    assert set(summary.weight_types) == {"INT8"} and summary.input_types == ("INT8",)
    ours = [m for m in int8_result.model.modules() if isinstance(m, QuantizedLayer)]
    theirs = layer_constants(int8_file.read_bytes())
    assert len(theirs) == len(ours) == 5
    for layer, constants in zip(ours, theirs, strict=True):  # graph order is module order here
        weight = layer.weight_int8.detach()
        if weight.dim() == 4:  # TFLite layouts: conv OHWI, depthwise 1HWO
            weight = (
                weight.permute(1, 2, 3, 0)
                if constants.op == "DEPTHWISE_CONV_2D"
                else weight.permute(0, 2, 3, 1)
            )
        np.testing.assert_array_equal(constants.weight, weight.numpy())
        np.testing.assert_array_equal(constants.bias, layer.bias_int32.detach().numpy().astype(np.int32))
        np.testing.assert_allclose(constants.scales, layer.weight_scale.detach().numpy(), rtol=1e-6)


def test_int8_output_is_within_one_step_of_graphopts_eager_int8(int8_result, int8_file, example):
    runner = LiteRTRunner(int8_file)
    scale, _ = runner.outputs[0]["quantization"]
    x = torch.randn(4, 3, 32, 32)
    got, want = runner.run(x)[0], int8_result.model(x).detach().numpy()
    assert np.abs(got - want).max() <= scale * 1.001  # one int8 step of the output


def test_float_io_wraps_the_integer_graph_without_changing_its_results(int8_file, tmp_path, example):
    floated = tmp_path / "float_io.tflite"
    floated.write_bytes(with_float_io(int8_file.read_bytes()))
    summary = summarize(floated.read_bytes())
    assert summary.input_types == summary.output_types == ("FLOAT32",)
    assert summary.ops[0] == "QUANTIZE" and summary.ops[-1] == "DEQUANTIZE"
    assert set(summary.float_ops) == {"QUANTIZE", "DEQUANTIZE"}  # only the boundary touches float
    x = torch.randn(2, 3, 32, 32)
    np.testing.assert_array_equal(LiteRTRunner(floated).run(x)[0], LiteRTRunner(int8_file).run(x)[0])
    assert "fully int8, float32 I/O" in describe_tflite(floated)


def test_a_layer_left_fp32_in_an_int8_model_is_refused_before_converting(int8_result):
    from graphopt.ir.graph import deep_copy, set_module

    mixed = deep_copy(int8_result.model)
    name = next(n for n, m in mixed.named_modules() if isinstance(m, QuantizedLayer))
    set_module(mixed, name, mixed.get_submodule(name).as_float())
    with pytest.raises(ExportError, match=f"kept in fp32 in an int8 model \\({name}\\)"):
        backend_for("m.tflite").check(mixed)
    backend_for("m.tflite").check(int8_result.model)  # graphopt's own int8 layers keep a float original


def test_optimize_for_litert_int8_exports_a_checked_tflite(int8_result, tmp_path):
    path = int8_result.export(tmp_path / "m.tflite", latency_guard=False)
    assert backend_for(path).name == "litert" and list(tmp_path.iterdir()) == [path]
    row = int8_result.report.artifact("litert")
    assert row.agreement.cosine > 0.999 and "fully int8, float32 I/O" in " ".join(row.notes)
    assert row.bytes == path.stat().st_size


def test_the_target_s_integer_io_setting_keeps_int8_inputs_and_outputs(int8_result, example, tmp_path):
    import dataclasses

    from graphopt.artifacts.side_by_side import lower_with

    settings = dataclasses.replace(int8_result.target.backend, integer_io=True)
    path = lower_with(backend_for("m.tflite"), settings, int8_result.model, example, tmp_path / "m.tflite")
    summary = summarize(path.read_bytes())
    assert summary.input_types == summary.output_types == ("INT8",) and "QUANTIZE" not in summary.ops
    runner = LiteRTRunner(path)  # quantizes float inputs itself with the file's scale and zero point
    assert _cosine(runner.run(*example)[0], int8_result.model(*example).detach()) > 0.999


@pytest.mark.slow
def test_the_latency_guard_times_int8_against_fp32_in_litert(digits, digits_model, tmp_path):
    res = graphopt.optimize(
        digits_model, "litert-int8", example_inputs=(digits.test_x[:1],),
        calibration_data=[digits.train_x[:64]], eval_data=digits.test_batches(),
    )  # fmt: skip
    res.export(tmp_path / "digits.tflite")
    row = res.report.artifact("litert")
    assert row.stats["guard_int8_ms"] > 0 and row.stats["guard_fp32_ms"] > 0
    assert row.accuracy >= res.report.stages[0].accuracy - 0.01  # measured on the .tflite


def test_a_failed_conversion_leaves_no_file(example, tmp_path):
    class Unexportable(nn.Module):
        def forward(self, x):
            return torch.from_numpy(x.numpy() * 2)  # leaves torch: torch.export refuses

    with pytest.raises(ExportError, match="LiteRT conversion failed"):
        export_litert(Unexportable(), example, tmp_path / "m.tflite")
    assert not list(tmp_path.iterdir())


def test_dynamic_shapes_and_foreign_files_are_refused(example, tmp_path):
    from graphopt.backends.dynamic import DynamicDims

    with pytest.raises(ConfigError, match="example input's shapes"):
        backend_for("m.tflite").lower(TinyCNN(), example, tmp_path / "a.tflite", opset=17, engine="x86",
                                      dynamic=DynamicDims.of({"x": {3: "width"}}, ["x"], 1))  # fmt: skip
    onnx_like = tmp_path / "b.tflite"
    onnx_like.write_bytes(b"\x08\x07\x12\x04onnx-bytes")
    with pytest.raises(ExportError, match=r"not a loadable LiteRT model.*TFL3"):
        LiteRTRunner(onnx_like)


def test_without_litert_the_error_names_the_extra(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: None if n == "litert_torch" else real(n, *a)
    )
    with pytest.raises(ConfigError, match=r"litert_torch: pip install 'graphopt\[litert\]'"):
        require_litert()


def test_a_damaged_input_name_is_a_not_loadable_error_not_a_unicode_error(int8_file, tmp_path):
    graph = read_model(int8_file.read_bytes()).subgraphs[0]
    name = graph.tensors[graph.inputs[0]].name  # read by get_input_details, after the model loaded
    damaged = tmp_path / "damaged.tflite"
    damaged.write_bytes(int8_file.read_bytes().replace(name, name[:-1] + b"\xff"))
    with pytest.raises(ExportError, match=r"not a loadable LiteRT model .*can't decode") as refused:
        LiteRTRunner(damaged)
    assert isinstance(refused.value.__cause__, UnicodeDecodeError)


def _damaged(data: bytes, seed: int) -> bytes:
    """``data`` with four bytes past the file identifier set at random (seeded: the same bytes every run)."""
    rng, damaged = random.Random(seed), bytearray(data)
    for _ in range(4):
        damaged[rng.randrange(8, len(damaged))] = rng.randrange(256)
    return bytes(damaged)


def test_damaged_flatbuffers_are_not_loadable_errors_never_raw_parser_errors(int8_file, tmp_path):
    data = int8_file.read_bytes()
    for broken in (b"\xff\xff\xff\x7f" + data[4:], data[: len(data) // 2]):  # root offset, truncated
        with pytest.raises(ExportError, match=r"the \.tflite data is not a loadable LiteRT model .*damaged"):
            summarize(broken)
    causes = set()
    for seed in range(8):  # struct.error, TypeError, ValueError, IndexError from the generated reader
        try:
            summarize(_damaged(data, seed))
        except ExportError as exc:
            causes.add(type(exc.__cause__).__name__)
    assert len(causes) >= 2
    damaged = tmp_path / "damaged.tflite"
    damaged.write_bytes(data[: len(data) // 2])
    with pytest.raises(ExportError, match=f"{damaged} is not a loadable LiteRT model"):
        describe_tflite(damaged)


def test_the_latency_guard_times_the_runner_s_bound_call_not_its_input_conversion(tmp_path):
    """LiteRT's ``run`` quantizes and sets the inputs before ``invoke``; the guard times ``invoke`` alone (the
    runner's ``bind``), as the runner's own ``time`` does."""
    import dataclasses

    from graphopt.artifacts.side_by_side import time_side_by_side
    from graphopt.backends import BACKENDS
    from graphopt.targets import BackendSettings

    seen = {"bind": 0, "invoke": 0}

    class BindingRunner:
        def __init__(self, path, threads: int) -> None:
            pass

        def run(self, *inputs):
            raise AssertionError("the guard converted the inputs inside the timed call")

        def bind(self, inputs):
            seen["bind"] += 1

            def invoke() -> None:
                seen["invoke"] += 1

            return invoke

    fake = dataclasses.replace(BACKENDS["litert"], lower=lambda model, inputs, path, **kw: path,
                               runner=BindingRunner)  # fmt: skip
    models = {"a": nn.Identity(), "b": nn.Identity()}
    ms = time_side_by_side(fake, BackendSettings(), models, (torch.ones(1),))
    assert set(ms) == {"a", "b"} and seen["bind"] == 2 and seen["invoke"] > 2
