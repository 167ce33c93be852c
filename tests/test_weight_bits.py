"""Weights below 8 bits and per-tensor scales: the scheme's arithmetic, the ``weights=`` plan rule, packed
INT4 in the ONNX file run by ONNX Runtime, and the export note that says how it runs."""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import pytest
import torch
from torch import nn

import graphopt
from graphopt.backends.onnx_backend import OnnxRunner, export_onnx
from graphopt.errors import ConfigError
from graphopt.passes.calibrate import Calibrate
from graphopt.passes.insert_fake_quant import InsertFakeQuant
from graphopt.pipeline.pass_base import PassContext
from graphopt.pipeline.pass_manager import PassManager
from graphopt.pipeline.plan import make_plan, plan_options
from graphopt.quant import QuantizedLayer, QuantScheme, WeightQuant
from graphopt.quant.options import InsertFakeQuantOptions
from graphopt.quant.scheme import sqnr_db
from graphopt.quant.storage import WEIGHT_STORAGE, weight_storage_note
from graphopt.targets import TARGETS
from tests.helpers import captured, ort_histogram

X86 = QuantScheme(activations="uint8", reduce_range=True)


# --- the scheme -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("bits", "bound"), [(2, 1), (3, 3), (4, 7), (7, 63)])
def test_below_8_bits_the_bound_is_2_to_the_b_minus_1_less_1_and_reduce_range_is_moot(bits, bound):
    assert dataclasses.replace(X86, weight_bits=bits).weight_bound == bound
    assert QuantScheme(reduce_range=False, weight_bits=bits).weight_bound == bound


def test_at_8_bits_reduce_range_keeps_its_meaning():
    assert X86.weight_bound == 64 and QuantScheme(reduce_range=False).weight_bound == 127
    assert X86.weight_bits == 8 and not X86.sub_byte and QuantScheme(weight_bits=4).sub_byte


@pytest.mark.parametrize("bits", [1, 9, 0, True, 4.0, "4"])
def test_weight_bits_out_of_range_is_a_config_error_naming_the_range(bits):
    with pytest.raises(ConfigError, match=r"weight_bits must be an integer from 2 to 8"):
        QuantScheme(weight_bits=bits)


def _frozen(scheme: QuantScheme, layer: nn.Module | None = None) -> QuantizedLayer:
    torch.manual_seed(0)
    quantized = QuantizedLayer(layer or nn.Conv2d(4, 6, 3), scheme)
    quantized.freeze(input_scale=0.05)
    return quantized


def test_a_4_bit_layer_keeps_the_int8_tensors_and_per_channel_scales():
    layer = _frozen(dataclasses.replace(X86, weight_bits=4))
    assert layer.weight_int8.dtype == torch.int8 and int(layer.weight_int8.abs().max()) == 7
    assert layer.weight_scale.shape == (6,) and layer.bias_scale.shape == (6,)
    # every channel reaches the bound: s_c = max|w_c| / 7
    assert (layer.weight_int8.reshape(6, -1).abs().amax(dim=1) == 7).all()
    expanded = layer.weight_int8.float() * layer.expanded_weight_scale()
    torch.testing.assert_close(expanded, layer.weight, rtol=0, atol=0)
    assert layer.weight_bits == 4 and "int4 weights per channel" in repr(layer)


def test_fewer_bits_lose_more_signal():
    sqnr = {b: _frozen(dataclasses.replace(X86, weight_bits=b)).weight_sqnr_db for b in (8, 4, 2)}
    assert sqnr[8] > sqnr[4] + 10 > sqnr[2] + 10  # about 6 dB per bit


def test_per_tensor_weights_share_one_scale_in_the_per_channel_shape():
    layer = _frozen(QuantScheme(per_channel=False, weight_bits=4), nn.Linear(5, 3))
    assert layer.weight_scale.shape == (3,) and len(set(layer.weight_scale.tolist())) == 1
    assert int(layer.weight_int8.abs().max()) == 7


def test_qat_fake_quantizes_onto_the_4_bit_grid():
    layer = _frozen(dataclasses.replace(X86, weight_bits=4))
    layer.thaw()
    weight = layer.float_layer.weight
    fake = layer._fake_quantized_weight(weight)
    steps = fake / fake.reshape(6, -1).abs().amax(dim=1).reshape(-1, 1, 1, 1)  # in units of s_c * 7
    assert torch.allclose(steps * 7, torch.round(steps * 7), atol=1e-5)
    layer.freeze(input_scale=0.05)
    assert int(layer.weight_int8.abs().max()) <= 7


# --- options and the plan rule ------------------------------------------------------------------------


def _fake_quant(plan) -> InsertFakeQuantOptions:
    (options,) = [p.options for p in plan.passes() if p.name == "insert_fake_quant"]
    return options


def test_weights_rewrites_the_int8_slots_scheme_and_keeps_the_rest():
    plan = make_plan(TARGETS["x86-int8"], plan_options(weights=4))
    scheme = _fake_quant(plan).scheme
    assert (scheme.weight_bits, scheme.activations, scheme.reduce_range) == (4, "uint8", True)
    assert "weights: int4 weights per channel" in str(plan)
    untouched = make_plan(TARGETS["x86-int8"], plan_options())
    assert _fake_quant(untouched).scheme == TARGETS["x86-int8"].passes[-2].options.scheme


def test_weight_quant_sets_per_tensor_scales_and_widths_by_layer():
    weights = WeightQuant(per_channel=False, bits_by_layer={"fc": 8, "conv1": 4})
    options = _fake_quant(make_plan(TARGETS["arm-int8"], plan_options(weights=weights)))
    assert not options.scheme.per_channel and options.scheme.weight_bits == 8
    assert options.weight_bits_by_layer == (("conv1", 4), ("fc", 8))
    schemes = options.layer_schemes(["conv1", "conv2", "fc"])
    assert [schemes[n].weight_bits for n in ("conv1", "conv2", "fc")] == [4, 8, 8]


def test_a_callers_pass_instance_is_not_changed():
    mine = InsertFakeQuant(InsertFakeQuantOptions(scheme=X86))
    plan = make_plan(TARGETS["x86-int8"], plan_options(passes=[mine, "calibrate"], weights=3))
    assert _fake_quant(plan).scheme.weight_bits == 3 and mine.options.scheme.weight_bits == 8


@pytest.mark.parametrize(("target", "why"), [("generic-fp32", "generic-fp32 has none"),
                                             ("x86-dynamic-int8", "dynamic int8 keeps 8-bit")])  # fmt: skip
def test_weights_on_fp32_and_dynamic_targets_is_refused(target, why):
    with pytest.raises(ConfigError, match=f"applies to static int8 targets.*{why}"):
        make_plan(TARGETS[target], plan_options(weights=4))


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        (9, "weight_bits must be an integer from 2 to 8"),
        ("4", "weights must be a number of bits"),
        (WeightQuant, "weights must be a number of bits"),
    ],
)
def test_bad_weights_values_are_config_errors(weights, message):
    with pytest.raises(ConfigError, match=message):
        plan_options(weights=weights)


@pytest.mark.parametrize(
    ("layers", "message"),
    [({"fc": 1}, r"bits_by_layer\['fc'\] must be an integer from 2 to 8"),
     ({"": 4}, "keys must be layer names"), ("fc", "must map layer names to bits")],
)  # fmt: skip
def test_bad_bits_by_layer_is_a_config_error(layers, message):
    with pytest.raises(ConfigError, match=message):
        WeightQuant(bits=4, bits_by_layer=layers)


def test_an_unknown_layer_name_lists_the_close_ones():
    options = InsertFakeQuantOptions(weight_bits_by_layer=(("layer1.0.conv", 8),))
    with pytest.raises(ConfigError, match=r"'layer1.0.conv'.*close names: layer1.0.conv1, layer1.0.conv2"):
        options.layer_schemes(["conv1", "layer1.0.conv1", "layer1.0.conv2", "fc"])


def test_the_cli_flag_takes_2_to_8():
    from graphopt.call_options import weight_bits

    assert weight_bits("4") == 4
    for bad in ("1", "9", "four", "-4"):
        with pytest.raises(Exception, match="from 2 to 8"):
            weight_bits(bad)


# --- the ONNX artifact ----------------------------------------------------------------------------------


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 16, 3, padding=1)
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        x = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        return self.fc(x.mean(dim=(2, 3)))


def _quantized(scheme: QuantScheme, layer_bits=()) -> tuple[torch.fx.GraphModule, torch.Tensor]:
    """The net captured, int8-inserted with ``scheme`` and calibrated (passes run directly: no optimize)."""
    torch.manual_seed(0)
    gm, x = captured(_Net()), torch.randn(1, 3, 8, 8)
    passes = [
        InsertFakeQuant(InsertFakeQuantOptions(scheme=scheme, weight_bits_by_layer=layer_bits)),
        Calibrate(),
    ]
    PassManager(passes).run(gm, PassContext(example_inputs=(x,), calibration_data=[torch.randn(16, 3, 8, 8)]))
    return gm, x


@pytest.fixture(scope="module")
def int4_onnx(tmp_path_factory):
    gm, x = _quantized(dataclasses.replace(X86, weight_bits=4))
    path = export_onnx(gm, (x,), tmp_path_factory.mktemp("int4") / "m.onnx")
    return gm, path


def test_4_bit_weights_are_packed_int4_initializers_at_opset_21(int4_onnx):
    gm, path = int4_onnx
    model = onnx.load(str(path))
    assert model.opset_import[0].version == 21 and model.ir_version == 10
    int4 = {t.name: t for t in model.graph.initializer if t.data_type == onnx.TensorProto.INT4}
    weights = sorted(name for name in int4 if name.endswith("weight_int4"))
    assert weights == ["conv1.weight_int4", "conv2.weight_int4", "fc.weight_int4"]
    assert len(int4["conv2.weight_int4"].raw_data) == 16 * 16 * 9 // 2  # two weights per byte
    stored = onnx.numpy_helper.to_array(int4["conv2.weight_int4"]).astype(np.int8)
    np.testing.assert_array_equal(stored, gm.get_submodule("conv2").weight_int8.numpy())


def test_symmetric_layers_write_a_zero_point_only_where_ort_needs_one_to_fuse(int4_onnx):
    """Omitted zero points are 0: only the Linear's weight keeps one (ORT's QGemm fusion needs it), so the
    file holds no per-channel zeros for convs or biases (the next test checks ORT still fuses every layer)."""
    _, path = int4_onnx
    zero_points = sorted(t.name for t in onnx.load(str(path)).graph.initializer if "zero_point" in t.name)
    layer_zero_points = [name for name in zero_points if "weight" in name or "bias" in name]
    assert layer_zero_points == ["fc.weight_zero_point"]
    assert any(name.endswith("quant.zero_point") for name in zero_points)  # activations are asymmetric


def test_onnx_runtime_runs_the_int4_file_like_the_eager_model(int4_onnx, tmp_path):
    gm, path = int4_onnx
    x = torch.randn(4, 3, 8, 8)
    (ours,) = OnnxRunner(path).run(x)
    with torch.no_grad():
        eager = gm(x).numpy()
    # the last layer's output step: activations round differently only at exact ties
    np.testing.assert_allclose(ours, eager, atol=0.05 * float(np.abs(eager).max()))
    assert sqnr_db(torch.from_numpy(eager), torch.from_numpy(ours)) > 25
    ops = ort_histogram(path, tmp_path)  # how ORT runs it: the Cast folded at load, int8 kernels fused
    assert ops["QLinearConv"] == 2 and ops["QGemm"] == 1 and ops["Conv"] == 0 and ops["Cast"] == 0


def test_the_export_note_says_how_int4_is_stored_and_run(int4_onnx, tmp_path):
    gm, path = int4_onnx
    note = weight_storage_note(gm, "onnx", path)
    assert note.key == WEIGHT_STORAGE and dict(note.facts["bits"]) == {4: 3}
    assert note.facts["packed_int4"] == 3 and note.facts["int8_storage"] == 0
    assert "fuses the layers into QLinearConv / QGemm" in note
    other = weight_storage_note(gm, "torchscript", tmp_path / "m.pt")
    assert other.facts["int8_storage"] == 3 and "not smaller than int8" in other
    assert weight_storage_note(_frozen(X86), "onnx", path) is None  # every layer 8-bit: nothing to say


def test_per_tensor_weights_are_one_scalar_scale_and_still_fuse(tmp_path):
    gm, x = _quantized(QuantScheme(per_channel=False))
    path = export_onnx(gm, (x,), tmp_path / "t.onnx")
    scales = {t.name: t for t in onnx.load(str(path)).graph.initializer if t.name.endswith("weight_scale")}
    assert len(scales) == 3 and all(list(t.dims) == [] for t in scales.values())
    ops = ort_histogram(path, tmp_path)
    assert ops["QLinearConv"] == 2 and ops["QGemm"] == 1 and ops["Conv"] == 0


def test_bits_by_layer_keeps_named_layers_at_8_bits(tmp_path):
    """Needs ``insert_fake_quant`` to build each layer with ``options.layer_schemes`` (quant/options.py)."""
    gm, x = _quantized(dataclasses.replace(X86, weight_bits=4), layer_bits=(("fc", 8),))
    assert [gm.get_submodule(n).weight_bits for n in ("conv1", "conv2", "fc")] == [4, 4, 8]
    path = export_onnx(gm, (x,), tmp_path / "mixed.onnx")
    kinds = {t.name: t.data_type for t in onnx.load(str(path)).graph.initializer}
    assert (
        kinds["fc.weight_int8"] == onnx.TensorProto.INT8
        and kinds["conv1.weight_int4"] == onnx.TensorProto.INT4
    )


@pytest.mark.slow
def test_optimize_takes_weights_and_the_artifact_is_checked(tmp_path):
    torch.manual_seed(0)
    x = torch.randn(1, 3, 8, 8)
    res = graphopt.optimize(_Net().eval(), "x86-int8", (x,), calibration_data=[torch.randn(16, 3, 8, 8)],
                            weights=WeightQuant(bits=4))  # fmt: skip
    path = res.export(tmp_path / "w4.onnx", latency_guard=False)
    assert all(m.weight_bits == 4 for m in res.model.modules() if isinstance(m, QuantizedLayer))
    assert "INT4 weights in 3 layers" in str(res.report.artifact("onnx").notes[0])
    assert onnx.load(str(path)).opset_import[0].version == 21
