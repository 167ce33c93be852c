"""improve_int8: each step is tried on a copy and kept only when the score rises; fp32 rewrites rebuild the
int8 graph and are checked numerically; steps that cannot run are reported, never silently dropped."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.fx as fx

import graphopt
from graphopt import ConfigError
from graphopt.passes.calibrate import Calibrate
from graphopt.passes.improve_int8 import RESULT, ImproveInt8, ImproveInt8Options
from graphopt.passes.insert_fake_quant import InsertFakeQuant, InsertFakeQuantOptions
from graphopt.pipeline.pass_base import Pass, PassResult
from graphopt.quant import QuantizedLayer, QuantScheme
from graphopt.quant.scheme import quantize_bias, quantize_weight, weight_scales

PER_TENSOR = QuantScheme(activations="uint8", reduce_range=False, per_channel=False)


class PerChannelWeights(Pass):
    """Helps per-tensor int8: every frozen layer's weights re-quantized with one scale per channel."""

    name = "test_per_channel_weights"
    slot = "int8_budget"
    exact = False

    def call(self, gm: fx.GraphModule) -> PassResult:
        scheme = QuantScheme(reduce_range=False, per_channel=True)
        for layer in gm.modules():
            if isinstance(layer, QuantizedLayer) and layer.frozen:
                weight, bias = layer.fp32_layer.weight.detach(), layer.fp32_layer.bias
                input_scale = float(layer.bias_scale[0] / layer.weight_scale[0])
                scales = weight_scales(weight, scheme)
                layer.weight_int8.data = quantize_weight(weight, scales, scheme)
                layer.weight_scale.data = scales
                layer.bias_scale.data = (scales * input_scale).float()
                layer.bias_int32.data = quantize_bias(bias.detach(), layer.bias_scale)
        return PassResult(gm, modified=True)


class ZeroBiases(Pass):
    """Hurts: every int8 bias set to zero."""

    name = "test_zero_biases"
    slot = "int8_budget"
    exact = False

    def call(self, gm: fx.GraphModule) -> PassResult:
        for layer in gm.modules():
            if isinstance(layer, QuantizedLayer) and layer.frozen:
                layer.bias_int32.data.zero_()
        return PassResult(gm, modified=True)


class SpreadChannels(Pass):
    """An exact fp32 rewrite that hurts per-tensor int8: the first conv's channel 0 scaled 50x, the next
    conv's matching input channel by 1/50 (ReLU commutes with a positive scale)."""

    name = "test_spread_channels"
    slot = "int8_layout"
    exact = True

    def call(self, gm: fx.GraphModule) -> PassResult:
        convs = [m for m in gm.modules() if isinstance(m, torch.nn.Conv2d)]
        with torch.no_grad():
            convs[0].weight[0] *= 50
            convs[0].bias[0] *= 50
            convs[1].weight[:, 0] /= 50
        return PassResult(gm, modified=True)


class BreakFunction(SpreadChannels):
    """Claims to be exact and is not: the numeric check must catch it inside the driver."""

    name = "test_break_function"

    def call(self, gm: fx.GraphModule) -> PassResult:
        convs = [m for m in gm.modules() if isinstance(m, torch.nn.Conv2d)]
        with torch.no_grad():
            convs[0].weight.mul_(3)
        return PassResult(gm, modified=True)


def _run(model, digits, steps, **kwargs):
    return graphopt.optimize(
        model, "generic-fp32", example_inputs=(digits.test_x[:1],),
        calibration_data=[digits.train_x[i : i + 32] for i in range(0, 96, 32)],
        passes=["fold_batchnorm", InsertFakeQuant(InsertFakeQuantOptions(scheme=PER_TENSOR)), Calibrate(),
                ImproveInt8(ImproveInt8Options(steps=steps, **kwargs.pop("options", {})))],
        **kwargs,
    )  # fmt: skip


def _rows(res):
    return {row["step"]: row for row in res.report.tables["improve_int8"]}


def test_a_step_that_helps_is_kept_and_one_that_hurts_is_not(digits_model, digits):
    before = copy.deepcopy(digits_model.state_dict())
    res = _run(digits_model, digits, (ZeroBiases(), PerChannelWeights(), "no_such_pass"))
    rows = _rows(res)
    assert (
        not rows["test_zero_biases"]["kept"]
        and rows["test_zero_biases"]["after"] < rows["test_zero_biases"]["before"]
    )
    assert rows["test_per_channel_weights"]["kept"]
    assert rows["test_per_channel_weights"]["after"] > rows["test_per_channel_weights"]["before"]
    assert not rows["no_such_pass"]["kept"] and "registered" in rows["no_such_pass"]["why"]
    note = res.report.note(RESULT)
    assert note.facts["kept"] == ("test_per_channel_weights",) and note.facts["unit"] == "dB output SQNR"
    # what was kept is what ships: the per-channel weights
    scales = [m.weight_scale for m in res.model.modules() if isinstance(m, QuantizedLayer)]
    assert scales and all(len(set(s.tolist())) > 1 for s in scales)
    assert all(torch.equal(before[k], v) for k, v in digits_model.state_dict().items())


def test_an_fp32_rewrite_rebuilds_the_int8_graph_and_is_checked(digits_model, digits):
    res = _run(digits_model, digits, (SpreadChannels(), BreakFunction()))
    rows = _rows(res)
    spread = rows["test_spread_channels"]
    assert spread["after"] is not None and spread["after"] < spread["before"] and not spread["kept"]
    broken = rows["test_break_function"]
    assert broken["after"] is None and not broken["kept"] and broken["why"].startswith("failed")


def test_with_labels_the_driver_stops_within_the_budget(digits_model, digits):
    res = _run(digits_model, digits, (PerChannelWeights(),), eval_data=digits.test_batches(),
               options={"budget_pp": 99.0})  # fmt: skip
    row = _rows(res)["test_per_channel_weights"]
    assert not row["kept"] and row["why"] == "already within the budget"
    assert res.report.note(RESULT).facts["unit"] == "% accuracy"


@pytest.mark.parametrize(
    "bad", [{"budget_pp": -1.0}, {"budget_pp": 100.0}, {"steps": "equalize"}, {"steps": (3,)}]
)
def test_bad_options_are_config_errors(bad):
    with pytest.raises(ConfigError):
        ImproveInt8Options(**bad)


def test_a_step_with_options_runs_them_and_is_named_by_them():
    """The default steps equalize twice: exactly, then with ReLU6 replaced by ReLU (lossy, kept only if it
    scores higher): a ReLU6 network whose per-tensor int8 collapses without equalization."""
    from graphopt.passes.equalize import EqualizeOptions
    from graphopt.passes.improve_int8 import step_label

    replace = ("equalize", EqualizeOptions(relu6="replace_with_relu"))
    assert replace in ImproveInt8Options().steps
    assert (
        step_label(replace) == "equalize (relu6='replace_with_relu')" and step_label("adaround") == "adaround"
    )
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU6(),
                                torch.nn.Conv2d(16, 8, 3, padding=1)).eval()  # fmt: skip
    with torch.no_grad():  # channel ranges 100x apart, pre-activations within ReLU6's linear range
        f = 100.0 ** torch.linspace(-1, 1, 16)
        model[0].weight.mul_(0.05 * f[:, None, None, None])
        model[0].bias.mul_(0.05 * f)
        model[2].weight.div_(f[None, :, None, None])
    calibration = [torch.rand(8, 3, 8, 8) for _ in range(3)]
    res = graphopt.optimize(
        model, "generic-fp32", example_inputs=(calibration[0][:1],), calibration_data=calibration,
        passes=["fold_batchnorm", InsertFakeQuant(InsertFakeQuantOptions(scheme=PER_TENSOR)), Calibrate(),
                ImproveInt8(ImproveInt8Options(steps=("equalize", replace)))],
    )  # fmt: skip
    rows = _rows(res)
    assert not rows["equalize"]["kept"]  # exact equalization leaves the pair alone: the ReLU6 is between
    assert rows[step_label(replace)]["kept"]
    assert rows[step_label(replace)]["after"] > rows[step_label(replace)]["before"] + 10  # dB
