"""A quantized ONNX file holds the weights and little else (backends/onnx_compact.py): INT4 packed two per
byte, one initializer per distinct tensor, short value names and no node names, bias scales as a ``Mul`` of
the scales the file already holds, Conv attributes at their defaults left out; and ONNX Runtime runs it
with the same fusions and bit for bit the same outputs as the file with those bytes spelled out."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper
from torch import nn

from graphopt.backends.onnx_backend import export_onnx
from graphopt.backends.onnx_compact import initializer_key, short_name
from graphopt.passes.calibrate import Calibrate
from graphopt.passes.insert_fake_quant import InsertFakeQuant
from graphopt.pipeline.pass_base import PassContext
from graphopt.pipeline.pass_manager import PassManager
from graphopt.quant import QuantizedLayer, QuantScheme
from graphopt.quant.options import InsertFakeQuantOptions
from tests.helpers import captured, ort_histogram

W4A8 = QuantScheme(activations="uint8", reduce_range=True, weight_bits=4)


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 16, 3, stride=2)
        self.conv3 = nn.Conv2d(16, 16, 1)
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        x = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        return self.fc(torch.relu(self.conv3(x)).mean(dim=(2, 3)))


@pytest.fixture(scope="module")
def w4a8(tmp_path_factory):
    torch.manual_seed(0)
    gm, x = captured(_Net()), torch.randn(1, 3, 8, 8)
    passes = [InsertFakeQuant(InsertFakeQuantOptions(scheme=W4A8)), Calibrate()]
    PassManager(passes).run(gm, PassContext(example_inputs=(x,), calibration_data=[torch.randn(16, 3, 8, 8)]))
    path = export_onnx(gm, (x,), tmp_path_factory.mktemp("compact") / "w4a8.onnx")
    return gm, path, onnx.load(str(path))


def _layers(gm: torch.fx.GraphModule) -> dict[str, QuantizedLayer]:
    return {name: m for name, m in gm.named_modules() if isinstance(m, QuantizedLayer)}


def test_int4_weights_are_packed_two_per_byte_in_raw_data(w4a8):
    gm, _, model = w4a8
    int4 = {t.name: t for t in model.graph.initializer if t.data_type == onnx.TensorProto.INT4}
    assert sorted(int4) == sorted(f"{name}.weight_int4" for name in _layers(gm))
    for name, layer in _layers(gm).items():
        tensor = int4[f"{name}.weight_int4"]
        assert len(tensor.raw_data) == math.ceil(layer.weight_int8.numel() / 2)  # not one int32 per value
        assert not tensor.int32_data
        stored = numpy_helper.to_array(tensor).astype(np.int8)
        np.testing.assert_array_equal(stored, layer.weight_int8.numpy())


def test_no_two_initializers_hold_the_same_tensor(w4a8):
    _, _, model = w4a8
    keys = [initializer_key(_unnamed(t)) for t in model.graph.initializer]
    assert len(keys) == len(set(keys))
    # three ReLU outputs quantized with zero point 0, the input and the fc output with their own: each value
    # of an activation zero point is written once, however many quantizers read it
    zero_points = [t for t in model.graph.initializer if t.data_type == onnx.TensorProto.UINT8]
    values = [int(numpy_helper.to_array(t)) for t in zero_points]
    assert len(values) == len(set(values)) and 0 in values
    readers = {t.name: sum(t.name in n.input for n in model.graph.node) for t in zero_points}
    assert max(readers.values()) >= 6  # the three ReLU quantizers' Q and DQ read one zero point


def test_values_get_short_names_nodes_none_and_initializers_keep_their_layers_names(w4a8):
    _, _, model = w4a8
    graph = model.graph
    initializers = {t.name for t in graph.initializer}
    io = {v.name for v in (*graph.input, *graph.output)}
    computed = [v for n in graph.node for v in n.output if v not in io]
    assert all(n.name == "" for n in graph.node)
    free = [name for name in map(short_name, range(200)) if name not in io | initializers]  # not "x"
    assert sorted(computed) == sorted(free[: len(computed)])  # 0 .. z, 10, 11, ...
    assert {
        "conv1.weight_int4",
        "conv1.weight_scale",
        "conv1.bias_int32",
        "fc.weight_zero_point",
    } <= initializers
    assert [v.name for v in graph.output] == ["output_0"]
    assert not model.doc_string and not graph.doc_string and not any(n.doc_string for n in graph.node)


def test_bias_scales_are_a_mul_ort_folds_with_bit_identical_outputs_and_the_same_fusions(w4a8, tmp_path):
    gm, path, model = w4a8
    initializers = {t.name for t in model.graph.initializer}
    assert not any("bias_scale" in name for name in initializers)  # no vector of s_x * s_w in the file
    muls = [n for n in model.graph.node if n.op_type == "Mul"]
    assert len(muls) == len(_layers(gm)) and all(set(n.input) <= initializers for n in muls)
    spelled = _with_stored_bias_scales(model, {n: layer.bias_scale for n, layer in _layers(gm).items()})
    spelled_path = tmp_path / "spelled.onnx"
    onnx.save(spelled, str(spelled_path))
    assert spelled_path.stat().st_size > path.stat().st_size
    x = torch.randn(8, 3, 8, 8).numpy()
    for level in (ort.GraphOptimizationLevel.ORT_ENABLE_ALL, ort.GraphOptimizationLevel.ORT_DISABLE_ALL):
        ours, theirs = (_run(p, x, level) for p in (path, spelled_path))
        assert ours.tobytes() == theirs.tobytes()
    ops = ort_histogram(path, tmp_path)
    assert ops["QLinearConv"] == 3 and ops["QGemm"] == 1
    assert ops["Conv"] == ops["Gemm"] == ops["Mul"] == ops["Cast"] == 0
    assert ops == ort_histogram(spelled_path, tmp_path)


def test_conv_attributes_at_their_onnx_defaults_are_left_out(w4a8):
    _, _, model = w4a8
    attrs = [{a.name: onnx.helper.get_attribute_value(a) for a in n.attribute} for n in model.graph.node
             if n.op_type == "Conv"]  # fmt: skip
    assert attrs == [
        {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]},
        {"kernel_shape": [3, 3], "strides": [2, 2]},
        {"kernel_shape": [1, 1]},
    ]


def test_per_tensor_bias_scales_stay_one_stored_number(tmp_path):
    torch.manual_seed(0)
    gm, x = captured(_Net()), torch.randn(1, 3, 8, 8)
    scheme = dataclasses.replace(W4A8, per_channel=False)
    passes = [InsertFakeQuant(InsertFakeQuantOptions(scheme=scheme)), Calibrate()]
    PassManager(passes).run(gm, PassContext(example_inputs=(x,), calibration_data=[torch.randn(16, 3, 8, 8)]))
    model = onnx.load(str(export_onnx(gm, (x,), tmp_path / "t.onnx")))
    scales = [t for t in model.graph.initializer if t.name.endswith("bias_scale")]
    assert len(scales) == 4 and all(list(t.dims) == [] for t in scales)
    assert not any(n.op_type == "Mul" for n in model.graph.node)


def test_fp32_files_keep_their_names(tmp_path):
    gm, x = captured(_Net().eval()), torch.randn(1, 3, 8, 8)
    model = onnx.load(str(export_onnx(gm, (x,), tmp_path / "fp32.onnx")))
    assert all(n.name for n in model.graph.node)
    assert {"conv1.weight", "fc.bias"} <= {t.name for t in model.graph.initializer}


def _unnamed(tensor: onnx.TensorProto) -> onnx.TensorProto:
    copy = onnx.TensorProto()
    copy.CopyFrom(tensor)
    copy.name = ""
    return copy


def _with_stored_bias_scales(model: onnx.ModelProto, scales: dict[str, torch.Tensor]) -> onnx.ModelProto:
    """``model`` with each bias scale ``Mul`` replaced by the layer's ``bias_scale`` stored as an
    initializer: the file as it was written before the Mul."""
    spelled = onnx.ModelProto()
    spelled.CopyFrom(model)
    graph = spelled.graph
    muls = [n for n in graph.node if n.op_type == "Mul"]
    for mul in muls:
        layer = mul.input[1].removesuffix(".weight_scale")
        graph.initializer.append(numpy_helper.from_array(scales[layer].numpy(), mul.output[0]))
        graph.node.remove(mul)
    return spelled


def _run(path, x: np.ndarray, level: ort.GraphOptimizationLevel) -> np.ndarray:
    options = ort.SessionOptions()
    options.graph_optimization_level = level
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]
