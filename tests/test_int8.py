"""int8: the ONNX Runtime optimized graph is fully integer, accuracy holds, bad input is clear, the latency
guard ships fp32 when int8 is not faster."""

from __future__ import annotations

import platform

import onnx
import pytest
import torch

import graphopt
from graphopt import InvalidInputError
from graphopt.artifacts.artifact_check import INT8_ROUNDS_DIFFERENTLY
from graphopt.artifacts.result import LATENCY_GUARD, LATENCY_GUARD_SKIPPED
from graphopt.ir.keys import SHIPPED_FP32
from graphopt.quant import ActivationQuantizer, QuantizedLayer, QuantScheme
from graphopt.quant.scheme import activation_qparams, quantize_weight, weight_scales
from graphopt.reporting.notes import notes_with
from graphopt.zoo import get_model
from tests.helpers import ort_histogram


def _calibration(inputs, n=4):
    return [torch.randn(8, *inputs[0].shape[1:]) for _ in range(n)]


@pytest.mark.parametrize(("name", "convs", "adds"), [("resnet_basic", 9, 3), ("mobilenet_v2_tiny", 16, 2)])
def test_x86_int8_fuses_every_conv_add_and_linear(name, convs, adds, tmp_path):
    model, inputs = get_model(name).build()
    res = graphopt.optimize(
        model, target="x86-int8", example_inputs=inputs, calibration_data=_calibration(inputs)
    )
    path = res.export(tmp_path / "m.onnx", latency_guard=False)
    ops = ort_histogram(path, tmp_path)
    assert ops["QLinearConv"] == convs and ops["Conv"] == 0
    assert ops["QLinearAdd"] == adds and ops["Add"] == 0
    assert ops["QGemm"] == 1 and ops["Gemm"] == 0
    assert ops["Transpose"] <= 2  # only at the entry and exit of the integer region
    initializers = {i.name: i.data_type for i in onnx.load(str(path)).graph.initializer}
    weights = [name for name, dtype in initializers.items() if name.endswith("weight_int8")]
    assert len(weights) == convs + 1 and all(initializers[w] == onnx.TensorProto.INT8 for w in weights)
    assert (
        sum(dtype == onnx.TensorProto.INT32 for dtype in initializers.values()) >= convs + 1
    )  # int32 biases  # int8 weight initializers, not fp32 weights quantized at run time
    assert res.report.stages[-1].agreement.cosine > 0.999


def test_digits_int8_accuracy(digits_model, digits, tmp_path):
    calibration = [digits.train_x[i : i + 32] for i in range(0, 320, 32)]
    res = graphopt.optimize(digits_model, target="x86-int8", example_inputs=(digits.test_x[:1],),
                            calibration_data=calibration, eval_data=digits.test_batches())  # fmt: skip
    res.export(tmp_path / "d.onnx", latency_guard=False)
    original, artifact = res.report.stage("original"), res.report.artifact("onnx")
    assert artifact.accuracy >= original.accuracy - 0.006  # within 2 test images of fp32
    table = res.report.tables["int8"]
    assert any(row["kind"].startswith("Conv2d weight") and row["sqnr_db"] > 30 for row in table)
    activations = [row for row in table if row["kind"].startswith("activation")]
    assert len(activations) == 7 and all(row["sqnr_db"] > 30 for row in activations)
    assert "int8:" in str(res.report)


def test_int8_targets_need_calibration_data(digits_model, digits):
    with pytest.raises(
        InvalidInputError, match=r"pass 'calibrate' of target x86-int8 needs calibration_data"
    ):
        graphopt.optimize(digits_model, target="x86-int8", example_inputs=(digits.test_x[:1],))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([], "calibration_data is empty"),
        ([torch.randn(4, 1, 9, 9)], r"per-sample shapes \[\(1, 9, 9\)\]"),
        ([torch.full((4, 1, 8, 8), float("nan"))], "contains NaN or inf"),
    ],
)
def test_bad_calibration_data(digits_model, digits, data, message):
    with pytest.raises(InvalidInputError, match=message):
        graphopt.optimize(
            digits_model, target="arm-int8", example_inputs=(digits.test_x[:1],), calibration_data=data
        )


def test_latency_guard_ships_fp32_when_int8_is_slower(tmp_path, monkeypatch):
    model, inputs = get_model("mlp").build()
    res = graphopt.optimize(
        model, target="x86-int8", example_inputs=inputs, calibration_data=_calibration(inputs)
    )
    from graphopt.artifacts.result import LatencyGuard

    monkeypatch.setattr(
        type(res),
        "_latency_guard",
        lambda self, backend, fp32, per_sample: LatencyGuard(int8_ms=2.0, fp32_ms=1.0),
    )
    path = res.export(tmp_path / "m.onnx")
    row = res.report.stages[-1]
    assert row.backend == "onnx" and row.stats[SHIPPED_FP32] == 1
    assert row.note(LATENCY_GUARD).facts["shipped"] == "fp32"
    assert not any(i.data_type == onnx.TensorProto.INT8 for i in onnx.load(str(path)).graph.initializer)


def test_insert_fake_quant_is_exact_until_calibrated():
    model, inputs = get_model("resnet_basic").build()
    res = graphopt.optimize(model, example_inputs=inputs, passes=["fold_batchnorm", "insert_fake_quant"])
    row = res.report.stage("insert_fake_quant")
    assert row.stats["activation_quantizers"] == 16 and row.stats["int8_layers"] == 10
    assert row.exact_check_max_abs == 0.0
    assert all(
        not m.frozen for m in res.model.modules() if isinstance(m, (ActivationQuantizer, QuantizedLayer))
    )


def test_scheme_arithmetic():
    scheme = QuantScheme(activations="uint8", reduce_range=True)
    scale, zp = activation_qparams(-1.0, 3.0, scheme)
    assert scale == pytest.approx(4.0 / 255) and zp == 64  # 0.0 maps exactly to q = 64
    w = torch.tensor([[0.5, -1.0], [0.25, 0.1]])
    scales = weight_scales(w, scheme)
    torch.testing.assert_close(scales, torch.tensor([1.0 / 64, 0.25 / 64]))
    q = quantize_weight(w, scales, scheme)
    assert q.dtype == torch.int8 and int(q.abs().max()) == 64  # 7-bit weights with reduce_range
    assert QuantScheme(activations="int8", reduce_range=False).weight_bound == 127


@pytest.mark.skipif(platform.machine() != "x86_64", reason="checks the guard's skip for a foreign ISA")
def test_latency_guard_skips_artifacts_for_another_cpu_family(tmp_path):
    model, inputs = get_model("resnet_basic").build()
    res = graphopt.optimize(model, "arm-int8", example_inputs=inputs, calibration_data=_calibration(inputs))
    path = res.export(tmp_path / "arm.onnx")
    row = res.report.stages[-1]
    assert row.backend == "onnx" and "guard_int8_ms" not in row.stats
    skipped = row.note(LATENCY_GUARD_SKIPPED).facts
    assert (skipped["reason"], skipped["isa"], skipped["machine"]) == ("foreign_isa", "aarch64", "x86_64")
    assert any(i.data_type == onnx.TensorProto.INT8 for i in onnx.load(str(path)).graph.initializer)


@pytest.mark.parametrize(("cosine", "outcome"), [(0.9999, "silent"), (0.995, "note"), (0.95, "error")])
def test_int8_artifact_agreement_thresholds(cosine, outcome, tmp_path, monkeypatch):
    """Integer kernels may round requantization differently from the eager simulation: between the two
    cosine thresholds the artifact ships with a note saying so; below the floor export fails."""
    import graphopt.artifacts.artifact_check
    from graphopt.reporting.numerics import Agreement

    model, inputs = get_model("resnet_basic").build()
    res = graphopt.optimize(model, "x86-int8", example_inputs=inputs, calibration_data=_calibration(inputs))
    monkeypatch.setattr(
        graphopt.artifacts.artifact_check, "agreement", lambda *_: Agreement(0.03, cosine, 1.0)
    )
    if outcome == "error":
        with pytest.raises(graphopt.ExportError, match="disagrees with the optimized model"):
            res.export(tmp_path / "m.onnx", latency_guard=False)
        return
    res.export(tmp_path / "m.onnx", latency_guard=False)
    notes = notes_with(res.report.stages[-1], INT8_ROUNDS_DIFFERENTLY)
    assert [n.facts["cosine"] for n in notes] == ([cosine] if outcome == "note" else [])


def test_power_of_two_scales_pick_the_direction_with_less_error():
    from graphopt.quant.scheme import _neighbour_powers

    scheme = QuantScheme(power_of_two=True, reduce_range=False)
    # Channel 0: one outlier among small weights -> rounding the scale down (clipping the outlier) loses
    # less than coarser steps for every other weight. Channel 1: two equal peaks -> up (no clipping) wins.
    weight = torch.tensor([[1.0] + [0.013 * i for i in range(1, 64)], [1.0, -1.0] + [0.5] * 62])
    free = weight_scales(weight, QuantScheme(reduce_range=False))
    down, up = _neighbour_powers(free.double())
    scales = weight_scales(weight, scheme)
    assert torch.all(torch.log2(scales) == torch.round(torch.log2(scales)))
    assert scales[0] == down[0].float() and scales[1] == up[1].float()
    # Activations: without a sample the scale goes up (no clipping); a sample decides otherwise.
    lo, hi = 0.0, 2.2  # free scale 2.2/255, between 2^-7 (range 0..1.99) and 2^-6
    assert activation_qparams(lo, hi, scheme)[0] == 2.0**-6
    mostly_small = torch.cat([torch.rand(10_000), torch.tensor([2.2])])  # clipping one value costs less
    assert activation_qparams(lo, hi, scheme, mostly_small)[0] == 2.0**-7
    spread = torch.rand(10_000) * 2.2  # here clipping the top 10 % costs more than coarser steps
    assert activation_qparams(lo, hi, scheme, spread)[0] == 2.0**-6


def test_fixed_point_target_has_only_power_of_two_scales(digits_model, digits, tmp_path):
    import math

    calibration = [digits.train_x[i : i + 32] for i in range(0, 128, 32)]
    res = graphopt.optimize(
        digits_model, "fixed-point-int8", example_inputs=(digits.test_x[:1],), calibration_data=calibration
    )
    quantizers = [m for m in res.model.modules() if isinstance(m, ActivationQuantizer)]
    layers = [m for m in res.model.modules() if isinstance(m, QuantizedLayer)]
    assert quantizers and layers
    assert all(math.log2(q.scale).is_integer() for q in quantizers)
    for layer in layers:
        for scale in (layer.weight_scale, layer.bias_scale):
            assert torch.equal(torch.log2(scale), torch.round(torch.log2(scale)))
    path = res.export(tmp_path / "m.onnx", latency_guard=False)
    ops = ort_histogram(path, tmp_path)
    assert ops["QLinearConv"] == 3 and ops["Conv"] == 0  # the same canonical QDQ, fused the same way
    from graphopt.backends import OnnxRunner
    from graphopt.reporting.evaluation import accuracy

    assert accuracy(OnnxRunner(path).run_batched, digits.test_batches()) > 0.97


class OutlierAttention(torch.nn.Module):
    """Attention over tokens whose channel 0 is a massive activation carrying nothing (the projections
    ignore it), as trained transformers have: one static scale per tensor rounds the rest to zero."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.q, self.k, self.v = (torch.nn.Linear(width, width) for _ in range(3))
        self.out = torch.nn.Linear(width, 4)
        with torch.no_grad():
            for proj in (self.q, self.k, self.v):
                proj.weight[:, 0] = 0
        self.register_buffer("gain", torch.ones(width).index_fill(0, torch.tensor([0]), 1000.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x * self.gain
        attended = torch.nn.functional.scaled_dot_product_attention(self.q(h), self.k(h), self.v(h))
        return self.out(attended).mean(1)


def test_static_int8_that_garbles_a_transformer_says_so_and_names_the_dynamic_target():
    torch.manual_seed(0)
    model = OutlierAttention().eval()
    calibration = [torch.randn(4, 6, 16) for _ in range(2)]
    res = graphopt.optimize(
        model, "x86-int8", example_inputs=(calibration[0][:1],), calibration_data=calibration
    )
    cosine = res.report.stage("calibrate").stats["output_cosine"]
    (note,) = notes_with(res.report, "calibrate:poor_agreement")
    assert cosine < 0.99 and note.facts["attention"] and "'x86-dynamic-int8'" in note


def test_static_int8_that_holds_adds_no_agreement_note(digits, digits_model):
    res = graphopt.optimize(
        digits_model, "x86-int8", example_inputs=(digits.test_x[:1],), calibration_data=[digits.train_x[:32]]
    )
    assert res.report.stage("calibrate").stats["output_cosine"] > 0.99
    assert not notes_with(res.report, "calibrate:poor_agreement")
