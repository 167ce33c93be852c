"""space_to_depth: shallow stride-2 convs rewritten over space-to-depth, exactly, and fused by ORT."""

from __future__ import annotations

import onnx
import pytest
import torch
from torch import nn

import graphopt
from graphopt.errors import ConfigError
from graphopt.ir.graph import module_of
from graphopt.ir.layout import SpaceToDepth, phase_weight, plan_axis
from graphopt.passes import SpaceToDepthRewrite
from graphopt.quant import QuantizedLayer
from tests.factories import rgb_stem_net
from tests.helpers import captured, count_modules, ort_histogram, outputs, run_pass


class OneConv(nn.Module):
    def __init__(self, c_in: int = 3, c_out: int = 16, kernel: int = 7, padding: int = 3, **kw: int):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel, 2, padding, **kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv(x))


@pytest.mark.parametrize(
    ("kernel", "padding", "size", "new_kernel"),
    [
        ((7, 7), 3, (64, 64), (4, 4)),  # ResNet's stem
        ((3, 3), 1, (33, 33), (2, 2)),  # MobileNet's stem, odd input (padded at the end first)
        ((4, 4), 1, (32, 33), (3, 3)),  # odd padding shifts the phases: one more offset
        ((5, 3), (2, 0), (31, 48), (3, 2)),  # non-square kernel, padding and input
        ((3, 3), 0, (20, 21), (2, 2)),
    ],
)
def test_rewrite_is_exact(kernel, padding, size, new_kernel):
    gm = captured(OneConv(kernel=kernel, padding=padding))
    x = torch.randn(2, 3, *size)
    before = outputs(gm, x)
    record = run_pass(SpaceToDepthRewrite(), gm, x)  # the PassManager checks exactness too
    assert record.stats == {"rewritten": 1}
    assert count_modules(gm, SpaceToDepth) == 1
    conv = gm.get_submodule("conv")
    assert conv.stride == (1, 1) and conv.padding == (0, 0) and conv.in_channels == 12
    assert conv.kernel_size == new_kernel
    torch.testing.assert_close(outputs(gm, x), before, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("model", "reason"),
    [
        (OneConv(c_in=4), "skipped:aligned"),  # the int8 kernel takes 4 channels already
        (OneConv(c_out=8), "skipped:output_channels"),  # the fast kernel needs >= 16 outputs
        (OneConv(c_out=20), "skipped:output_channels"),  # ... in multiples of 8
        (OneConv(c_in=3, c_out=18, groups=3), "skipped:unsupported_conv"),
        (OneConv(kernel=3, padding=1, dilation=2), "skipped:unsupported_conv"),
        (OneConv(kernel=1, padding=0), "skipped:unsupported_conv"),
    ],
)
def test_convs_the_kernel_would_not_take_are_skipped_with_a_reason(model, reason):
    gm = captured(model)
    record = run_pass(SpaceToDepthRewrite(), gm, torch.randn(1, model.conv.in_channels, 32, 32))
    assert record.stats == {reason: 1}
    assert count_modules(gm, SpaceToDepth) == 0


def test_weight_phases_follow_onnx_order():
    """7x7/2 with padding 3: offsets d = -2..1; tap kh = 2 (u + d_min) + i + 3 of phase i lands at u."""
    weight = torch.randn(2, 3, 7, 7)
    plan = plan_axis(64, 7, 3, 2)
    assert (plan.d_min, plan.kernel, plan.pad_before, plan.pad_after) == (-2, 4, 2, 1)
    phases = phase_weight(weight, 2, (3, 3), (plan, plan))
    assert phases.shape == (2, 12, 4, 4)
    # channel (i * 2 + j) * 3 + c, position (u, v) <- W[:, c, 2u - 1 + i, 2v - 1 + j]
    assert torch.equal(phases[:, (1 * 2 + 0) * 3 + 2, 1, 3], weight[:, 2, 2, 5])
    assert torch.equal(phases[:, (0 * 2 + 1) * 3 + 0, 0, 2], torch.zeros(2))  # row -1: outside the kernel


def test_options_are_checked():
    with pytest.raises(ConfigError, match="block"):
        SpaceToDepthRewrite(block=1)


def _stem_result():
    model, x = rgb_stem_net().eval(), torch.randn(1, 3, 32, 32)
    calibration = [torch.randn(4, 3, 32, 32) for _ in range(4)]
    return graphopt.optimize(model, "x86-int8", example_inputs=(x,), calibration_data=calibration)


def test_x86_int8_stem_runs_as_qlinearconv_after_space_to_depth(tmp_path):
    result = _stem_result()
    assert result.report.stage("space_to_depth").stats["rewritten"] == 1
    assert isinstance(result.model.get_submodule("stem.0"), QuantizedLayer)
    path = result.export(tmp_path / "stem.onnx", latency_guard=False)
    assert result.report.stages[-1].agreement.cosine > 0.999
    graph = onnx.load(str(path)).graph
    assert [n.op_type for n in graph.node][:3] == ["SpaceToDepth", "QuantizeLinear", "DequantizeLinear"]
    (stem,) = [n for n in graph.node if n.op_type == "Conv" and n.input[0] == graph.node[2].output[0]]
    pads = next(a.ints for a in stem.attribute if a.name == "pads")
    assert list(pads) == [2, 2, 1, 1]  # the zero padding folded into the conv: no Pad op is left
    assert not any(n.op_type == "Pad" for n in graph.node)
    ops = ort_histogram(path, tmp_path)
    assert ops["QLinearConv"] == 3 and ops["Conv"] == 0, ops  # the stem and the two convs of the block
    assert ops["SpaceToDepth"] == 1 and ops["DequantizeLinear"] == 1, ops  # only the logits leave int8


def test_torchscript_int8_runs_space_to_depth_on_quantized_tensors(tmp_path):
    result = _stem_result()
    result.export(tmp_path / "stem.pt", latency_guard=False)
    assert result.report.stages[-1].agreement.cosine > 0.999


def test_latency_guard_compares_with_the_model_before_the_rewrite():
    """The fp32 fallback is the plain fp32 pipeline: space-to-depth only pays off in the int8 kernels."""
    result = _stem_result()
    assert result.fp32_model is not None
    assert count_modules(result.fp32_model, SpaceToDepth) == 0
    assert count_modules(result.model, SpaceToDepth) == 1


def test_accuracy_budget_restores_a_rewritten_stem_to_float_input(tmp_path):
    """Back in fp32, the stem's padding reads the float tensor, so ORT runs it as a float Conv."""
    from graphopt.passes.accuracy_budget import _restore_fp32

    result = _stem_result()
    gm = result.model
    _restore_fp32(gm, "stem.0", gm.get_submodule("stem.0"))
    (pad,) = [n for n in gm.graph.nodes if isinstance(module_of(gm, n), nn.ZeroPad2d)]
    assert isinstance(module_of(gm, pad.args[0]), SpaceToDepth)  # the quantizer is no longer in between
    ops = ort_histogram(result.export(tmp_path / "stem.onnx", latency_guard=False), tmp_path)
    assert ops["Conv"] == 1 and ops["QLinearConv"] == 2, ops
