"""The direct IR -> ONNX lowering: every op in its table matches torch in ONNX Runtime at any batch size, and
graphs with other ops fall back to the dynamo exporter instead of being lowered approximately."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import graphopt
from graphopt.artifacts.result import WRITTEN
from graphopt.backends import OnnxRunner, export_onnx
from graphopt.backends.onnx_lowering import PRODUCER, UnsupportedNode, lower_to_onnx
from graphopt.frontend.capture import capture
from graphopt.ir.shapes import propagate_shapes
from graphopt.zoo import get_model


class Wrap(nn.Module):
    def __init__(self, fn, *modules: nn.Module):
        super().__init__()
        self.layers = nn.ModuleList(modules)
        self.fn = fn

    def forward(self, x):
        return self.fn(self, x)


def _chain(layers, x):
    for layer in layers:
        x = layer(x)
    return x


def _seq(*modules: nn.Module) -> Wrap:
    return Wrap(lambda self, x: _chain(self.layers, x), *modules)


CASES = {
    "conv_strided_dilated_grouped": (
        _seq(nn.Conv2d(4, 8, 3, stride=2, padding=2, dilation=2, groups=2), nn.ReLU6()),
        (4, 9, 9),
    ),
    "conv1d_bn_hardtanh": (_seq(nn.Conv1d(3, 6, 3), nn.BatchNorm1d(6), nn.Hardtanh(-0.5, 0.7)), (3, 12)),
    "maxpool_ceil_avgpool_no_pad_count": (
        _seq(nn.MaxPool2d(3, 2, 1, ceil_mode=True), nn.AvgPool2d(2, padding=1, count_include_pad=False)),
        (3, 11, 11),
    ),
    "linear_on_3d_input": (_seq(nn.Linear(5, 7), nn.Sigmoid(), nn.Linear(7, 2, bias=False)), (4, 5)),
    "gap_flatten_linear": (
        _seq(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 4), nn.Tanh()),
        (3, 5, 5),
    ),
    # torch's adaptive windows: overlapping and uneven (7 -> 4, 10 -> 3) lower as MatMuls, even ones as pools
    "adaptive_pool_uneven_windows": (_seq(nn.AdaptiveAvgPool2d(4), nn.Flatten()), (3, 7, 7)),
    "adaptive_pool_call_mixed_axes": (Wrap(lambda self, x: F.adaptive_avg_pool2d(x, (3, 2))), (2, 10, 4)),
    "adaptive_pool_1d_uneven": (_seq(nn.AdaptiveAvgPool1d(3)), (2, 7)),
    "adaptive_pool_even_none_keeps": (_seq(nn.AdaptiveAvgPool2d((2, None))), (3, 4, 6)),
    "mean_keepdim_mul_add_scalar": (
        Wrap(lambda self, x: x * x.mean(dim=(2, 3), keepdim=True) + 1.5),
        (3, 4, 4),
    ),
    "cat_relu_mean_flatten": (
        Wrap(lambda self, x: F.relu(torch.cat([self.layers[0](x), x], 1)).mean((-2, -1)), nn.Conv2d(2, 3, 1)),
        (2, 6, 6),
    ),
}


@pytest.mark.parametrize("name", CASES)
def test_direct_lowering_matches_torch_at_any_batch(name, tmp_path):
    model, shape = CASES[name]
    model.eval()
    gm = capture(model).gm
    propagate_shapes(gm, (torch.randn(2, *shape),))
    path = tmp_path / "m.onnx"
    onnx.save(lower_to_onnx(gm, opset=18), str(path))
    runner = OnnxRunner(path)
    for batch in (1, 3):
        x = torch.randn(batch, *shape)
        with torch.no_grad():
            expected = model(x).numpy()
        np.testing.assert_allclose(runner.run(x)[0], expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("fn", "reason"),
    [
        (lambda self, x: x.view(x.shape[0], -1), "getattr_1 has dtype None"),
        (lambda self, x: torch.flatten(x, 0), r"flatten\(0, -1\)"),
    ],
)
def test_ops_outside_the_table_are_refused_with_the_reason(fn, reason):
    model = Wrap(fn).eval()
    gm = capture(model).gm
    propagate_shapes(gm, (torch.randn(2, 3, 4, 4),))
    with pytest.raises(UnsupportedNode, match=reason):
        lower_to_onnx(gm, opset=18)


def test_inplace_relu_on_a_shared_input_is_refused():
    model = Wrap(lambda self, x: F.relu(x, inplace=True) + x).eval()
    gm = capture(model).gm
    propagate_shapes(gm, (torch.randn(2, 3),))
    with pytest.raises(UnsupportedNode, match="in-place relu"):
        lower_to_onnx(gm, opset=18)


def test_export_falls_back_to_dynamo_for_uncovered_ops(tmp_path):
    model, inputs = get_model("vit").build()
    result = graphopt.optimize(model, example_inputs=inputs)
    path = result.export(tmp_path / "vit.onnx")
    assert onnx.load(str(path)).producer_name != PRODUCER
    assert "torch.onnx" in result.report.artifact("onnx").note(WRITTEN).facts["writer"]


def test_int8_cnn_is_lowered_directly_with_layer_named_initializers(tmp_path):
    model, inputs = get_model("resnet_basic").build()
    calibration = [torch.randn(4, *inputs[0].shape[1:]) for _ in range(2)]
    result = graphopt.optimize(model, "x86-int8", example_inputs=inputs, calibration_data=calibration)
    path = export_onnx(result.model, inputs, tmp_path / "m.onnx")
    proto = onnx.load(str(path))
    assert proto.producer_name == PRODUCER
    names = {i.name for i in proto.graph.initializer}
    assert {"fc.weight_int8", "fc.bias_int32", "x_quant.scale", "x_quant.zero_point"} <= names
    assert sum(n.op_type == "GlobalAveragePool" for n in proto.graph.node) == 1
