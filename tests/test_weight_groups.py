"""Per-group (block-wise) weight scales: the arithmetic, the layers they apply to, the checks, the ONNX file
(INT4 read by a blocked DequantizeLinear) run by ONNX Runtime against the eager model, and how it runs."""

from __future__ import annotations

import dataclasses

import ml_dtypes
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import helper, numpy_helper
from torch import nn

from graphopt.backends.onnx_backend import OnnxRunner, export_onnx
from graphopt.errors import ConfigError
from graphopt.passes.calibrate import Calibrate
from graphopt.passes.insert_fake_quant import InsertFakeQuant
from graphopt.pipeline.pass_base import PassContext
from graphopt.pipeline.pass_manager import PassManager
from graphopt.quant import QuantizedLayer, QuantScheme, WeightQuant
from graphopt.quant.groups import PER_CHANNEL_FALLBACK, require_backend_for_groups
from graphopt.quant.options import InsertFakeQuantOptions
from graphopt.quant.scheme import sqnr_db
from graphopt.quant.storage import weight_storage_note
from tests.helpers import captured, ort_histogram

W4 = QuantScheme(activations="int8", reduce_range=False, weight_bits=4)
W4_G32 = dataclasses.replace(W4, group_size=32)


def _frozen(layer: nn.Module, scheme: QuantScheme) -> QuantizedLayer:
    quantized = QuantizedLayer(layer, scheme)
    quantized.freeze(input_scale=0.05)
    return quantized


def _uneven_linear() -> nn.Linear:
    """A Linear whose rows mix input channels of very different magnitudes: blocks of 32 input channels
    scaled by 1, 30, 0.1, 3. One scale per row is set by the 30x block, so at 4 bits (7 levels a side)
    the 0.1x and 1x blocks round to almost nothing; one scale per block keeps each."""
    torch.manual_seed(0)
    layer = nn.Linear(128, 24)
    with torch.no_grad():
        magnitude = torch.tensor([1.0, 30.0, 0.1, 3.0]).repeat_interleave(32)
        layer.weight.mul_(magnitude)
    return layer


# --- the arithmetic -------------------------------------------------------------------------------------


def test_each_block_of_input_channels_gets_max_abs_over_7():
    layer = _uneven_linear()
    quantized = _frozen(layer, W4_G32)
    w = layer.weight.detach()
    expected = w.reshape(24, 4, 32).abs().amax(dim=2) / 7  # (C, G): s_ck = max_{j in block} |w_cj| / r
    torch.testing.assert_close(quantized.weight_scale, expected, rtol=0, atol=0)
    q = torch.clamp(torch.round(w / expected.repeat_interleave(32, dim=1)), -7, 7)
    assert torch.equal(quantized.weight_int8, q.to(torch.int8))
    assert torch.equal(quantized.weight, q * expected.repeat_interleave(32, dim=1))  # s_c,j//g * q_cj
    # the bias keeps one scale per output channel: s_in * max_k s_ck
    torch.testing.assert_close(quantized.bias_scale, 0.05 * expected.amax(dim=1))


def test_per_group_keeps_the_small_channels_per_channel_loses():
    """The constructed case where per-group must help: weight SQNR of the 0.1x block and the layer's
    output SQNR on inputs that use every channel."""
    layer = _uneven_linear()
    per_channel, per_group = _frozen(layer, W4), _frozen(layer, W4_G32)
    small = slice(64, 96)  # the 0.1x block
    assert sqnr_db(layer.weight[:, small].detach(), per_channel.weight[:, small]) < 1  # all rounded to ~0
    assert sqnr_db(layer.weight[:, small].detach(), per_group.weight[:, small]) > 18
    x = torch.randn(256, 128) / torch.tensor([1.0, 30.0, 0.1, 3.0]).repeat_interleave(32)  # equal shares
    with torch.no_grad():
        reference = layer(x)
        channel_db, group_db = sqnr_db(reference, per_channel(x)), sqnr_db(reference, per_group(x))
    assert group_db > 18 and group_db > channel_db + 10, (channel_db, group_db)


def test_mse_clipping_chooses_per_block_and_never_adds_error():
    layer = _uneven_linear()
    plain, clipped = (
        _frozen(layer, W4_G32),
        _frozen(layer, dataclasses.replace(W4_G32, weight_clipping="mse")),
    )
    assert clipped.weight_scale.shape == (24, 4)
    w = layer.weight.detach()
    assert float((clipped.weight - w).pow(2).sum()) <= float((plain.weight - w).pow(2).sum())
    assert bool((clipped.weight_scale < plain.weight_scale).any())  # some block did clip


def test_a_1x1_conv_groups_its_input_channels():
    torch.manual_seed(0)
    conv = _frozen(nn.Conv2d(64, 8, 1), W4_G32)
    assert conv.weight_scale.shape == (8, 2) and conv.weight.shape == (8, 64, 1, 1)
    x = torch.randn(2, 64, 5, 5)
    expected = nn.functional.conv2d(x, conv.weight_int8.float() * conv.expanded_weight_scale(), conv.bias)
    assert torch.equal(conv(x), expected)


def test_qat_fake_quantizes_each_block_onto_its_grid():
    layer = _frozen(_uneven_linear(), W4_G32)
    layer.thaw()
    weight = layer.float_layer.weight
    fake = layer._fake_quantized_weight(weight)
    scales = (weight.detach().reshape(24, 4, 32).abs().amax(dim=2) / 7).repeat_interleave(32, dim=1)
    levels = fake.detach() / scales
    assert torch.allclose(levels, levels.round(), atol=1e-4) and float(levels.abs().max()) <= 7 + 1e-4
    fake.sum().backward()
    assert weight.grad is not None and float(weight.grad.abs().sum()) > 0  # straight through


# --- what is refused ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"weight_bits": 4, "group_size": 0}, "group_size must be a positive number"),
        ({"weight_bits": 4, "group_size": -32}, "group_size must be a positive number"),
        ({"weight_bits": 4, "group_size": True}, "group_size must be a positive number"),
        ({"weight_bits": 4, "group_size": "32"}, "group_size must be a positive number"),
        ({"weight_bits": 8, "group_size": 32}, r"2\.\.4 bits.*got bits=8"),
        ({"weight_bits": 6, "group_size": 32}, r"2\.\.4 bits.*got bits=6"),
        ({"weight_bits": 4, "group_size": 32, "per_channel": False}, "per_channel=False"),
    ],
)
def test_bad_group_sizes_are_config_errors(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        QuantScheme(**kwargs)
    bits = kwargs["weight_bits"]
    with pytest.raises(ConfigError, match=message):
        WeightQuant(bits=bits, group_size=kwargs["group_size"], per_channel=kwargs.get("per_channel", True))


def test_group_size_with_a_byte_budget_is_refused():
    with pytest.raises(ConfigError, match=r"group_size=\.\.\., max_weight_bytes=\.\.\.\) is not built"):
        WeightQuant(bits=4, group_size=32, max_weight_bytes=1000)


def test_a_group_size_that_does_not_divide_the_inputs_names_the_sizes_that_do():
    with pytest.raises(ConfigError, match=r"group_size=32 does not divide the 48 input channels.*12, 16, 24"):
        QuantizedLayer(nn.Linear(48, 4), W4_G32)


def test_a_3x3_conv_given_groups_directly_is_refused():
    with pytest.raises(ConfigError, match="Linear layers and 1x1 convs"):
        QuantizedLayer(nn.Conv2d(32, 8, 3), W4_G32)


def test_a_layer_kept_at_8_bits_goes_back_to_per_channel():
    options = InsertFakeQuantOptions(scheme=W4_G32, weight_bits_by_layer=(("fc2", 8),))
    schemes = options.layer_schemes(["fc1", "fc2"])
    assert schemes["fc1"].group_size == 32 and schemes["fc2"] == dataclasses.replace(W4, weight_bits=8)


def test_weight_quant_carries_group_size_into_the_scheme_and_says_it():
    weights = WeightQuant(bits=4, group_size=32)
    assert weights.scheme_for(QuantScheme()).group_size == 32
    assert str(weights) == "int4 weights per group of 32 input channels"


# --- the graph and the ONNX file ------------------------------------------------------------------------


class _Net(nn.Module):
    """A 3x3 conv (per-channel fall-back), a 1x1 conv and two Linears (per group)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 32, 3, padding=1)
        self.pointwise = nn.Conv2d(32, 64, 1)
        self.fc1, self.fc2 = nn.Linear(64, 64), nn.Linear(64, 5)

    def forward(self, x):
        x = torch.relu(self.pointwise(torch.relu(self.conv(x))))
        return self.fc2(torch.relu(self.fc1(x.mean(dim=(2, 3)))))


@pytest.fixture(scope="module")
def grouped(tmp_path_factory):
    torch.manual_seed(0)
    gm, x = captured(_Net()), torch.randn(1, 3, 8, 8)
    passes = [InsertFakeQuant(InsertFakeQuantOptions(scheme=W4_G32)), Calibrate()]
    context = PassContext(example_inputs=(x,), calibration_data=[torch.randn(32, 3, 8, 8)])
    records = PassManager(passes).run(gm, context)
    path = export_onnx(gm, (x,), tmp_path_factory.mktemp("groups") / "g32.onnx")
    return gm, path, records[0].stats


def test_linear_and_1x1_layers_are_grouped_and_the_3x3_conv_falls_back_said_in_the_stats(grouped):
    gm, _, stats = grouped
    sizes = {name: gm.get_submodule(name).group_size for name in ("conv", "pointwise", "fc1", "fc2")}
    assert sizes == {"conv": None, "pointwise": 32, "fc1": 32, "fc2": 32}
    assert stats[PER_CHANNEL_FALLBACK] == 1


def test_the_file_holds_int4_read_by_blocked_dequantize_linear(grouped):
    gm, path, _ = grouped
    model = onnx.load(str(path))
    assert model.opset_import[0].version == 21
    initializers = {t.name: t for t in model.graph.initializer}
    blocked = {
        n.input[0]: {a.name: helper.get_attribute_value(a) for a in n.attribute}
        for n in model.graph.node
        if n.op_type == "DequantizeLinear" and any(a.name == "block_size" for a in n.attribute)
    }
    assert blocked == {
        "pointwise.weight_int4": {"axis": 1, "block_size": 32},
        "fc1.weight_int4": {"axis": 0, "block_size": 32},
        "fc2.weight_int4": {"axis": 0, "block_size": 32},
    }
    fc1 = initializers["fc1.weight_int4"]
    assert fc1.data_type == onnx.TensorProto.INT4 and list(fc1.dims) == [64, 64]  # W^T: K x C
    assert len(fc1.raw_data) == 64 * 64 // 2
    assert list(initializers["fc1.weight_scale"].dims) == [2, 64]  # S^T: G x C
    stored = numpy_helper.to_array(fc1).astype(np.int8)
    np.testing.assert_array_equal(stored, gm.get_submodule("fc1").weight_int8.numpy().T)


def test_onnx_runtime_runs_the_file_like_the_eager_model(grouped):
    gm, path, _ = grouped
    x = torch.randn(16, 3, 8, 8)
    (ours,) = OnnxRunner(path).run(x)
    with torch.no_grad():
        eager = gm(x).numpy()
    # same float32 weights; the output quantizer rounds differently only at exact ties
    step = gm.get_submodule("fc2_quant").scale
    assert float(np.abs(ours - eager).max()) <= step + 1e-6
    assert float(np.mean(ours == eager)) > 0.99


def test_onnx_runtime_dequantizes_grouped_weights_at_run_time(grouped, tmp_path):
    """How ORT (1.32, measured) runs the file: the per-channel 3x3 conv fuses into QLinearConv, the grouped
    layers keep their blocked DequantizeLinear and compute in float (no QGemm, no MatMulNBits). What the
    artifact note says (quant/storage.py); if a new ORT fuses them, this test and the note must change."""
    _, path, _ = grouped
    ops = ort_histogram(path, tmp_path)
    assert ops["QLinearConv"] == 1 and ops["QGemm"] == 0 and ops["MatMulNBits"] == 0
    assert ops["Conv"] == 1 and ops["Gemm"] + ops["MatMul"] == 2


def test_matmul_nbits_fuses_only_without_a_dequantized_input(tmp_path):
    """The measurement behind the note: the same blocked INT4 weight feeding a MatMul becomes MatMulNBits
    when the MatMul's input is a plain float, and stays DequantizeLinear -> MatMul behind a QDQ pair."""
    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.integers(-7, 8, (64, 16)).astype(ml_dtypes.int4), "w")
    scale = numpy_helper.from_array((rng.random((2, 16)) * 0.01 + 0.001).astype(np.float32), "s")

    def histogram(quantized_input: bool) -> dict[str, int]:
        nodes = [helper.make_node("DequantizeLinear", ["w", "s"], ["wf"], axis=0, block_size=32)]
        initializers, x = [weight, scale], "x"
        if quantized_input:
            initializers += [numpy_helper.from_array(np.array(0.05, np.float32), "xs")]
            nodes += [helper.make_node("QuantizeLinear", ["x", "xs"], ["xq"])]
            nodes += [helper.make_node("DequantizeLinear", ["xq", "xs"], ["xd"])]
            x = "xd"
        nodes.append(helper.make_node("MatMul", [x, "wf"], ["y"]))
        graph = helper.make_graph(
            nodes, "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["b", 64])],
            [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["b", 16])], initializers,
        )  # fmt: skip
        path = tmp_path / f"q{int(quantized_input)}.onnx"
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10), path)
        return dict(ort_histogram(path, tmp_path))

    assert histogram(quantized_input=False) == {"MatMulNBits": 1}
    assert histogram(quantized_input=True)["MatMul"] == 1 and "MatMulNBits" not in histogram(True)
    assert ort.__version__  # the measured version is in quant/storage.py


def test_the_export_note_says_how_grouped_layers_run(grouped):
    gm, path, _ = grouped
    note = weight_storage_note(gm, "onnx", path)
    assert note.facts["per_group"] == 3 and note.facts["packed_int4"] == 4
    assert "1 stored as packed INT4 (two weights per byte)" in note
    assert "3 stored as packed INT4 with one scale per 32 input channels" in note
    assert "dequantizes the weights to float on every run" in note


@pytest.mark.parametrize("backend", ["torchscript", "executorch", "litert", "ethos-u"])
def test_other_backends_refuse_grouped_layers_by_name(grouped, backend):
    gm, _, _ = grouped
    with pytest.raises(ConfigError, match=rf"layers pointwise, fc1, fc2.*ONNX only.*the {backend} backend"):
        require_backend_for_groups(gm, backend)
    require_backend_for_groups(gm, "onnx")  # the one that writes them
