from __future__ import annotations

import copy
from collections import Counter

import onnxruntime as ort
import pytest
import torch
from torch import nn

import graphopt
from graphopt.errors import ConfigError
from graphopt.passes import FoldBatchNorm
from graphopt.passes.equalize import RELU6_REPLACED, Equalize
from graphopt.quant import equalization as eq
from graphopt.quant.scheme import sqnr_db
from graphopt.zoo.mobilenet import mobilenet_v2_tiny
from tests.helpers import captured, outputs, run_pass
from tests.ptq_cases import PER_TENSOR, calibration_batches, int8_passes, rescaled_case, run_passes

X = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(3))


@pytest.fixture(scope="module")
def case():
    base, model = rescaled_case()
    calibration = calibration_batches((16, 3, 8, 8))
    test_x = torch.randn(32, 3, 8, 8, generator=torch.Generator().manual_seed(4))
    return base, model, calibration, test_x


def test_per_tensor_int8_collapses_without_equalization_and_holds_with_it(case):
    base, model, calibration, test_x = case
    reference = outputs(base, test_x)
    plain, _, _ = run_passes(model, int8_passes(PER_TENSOR), calibration)
    equalized, records, _ = run_passes(model, [Equalize(), *int8_passes(PER_TENSOR)], calibration)
    assert sqnr_db(reference, outputs(plain, test_x)) < 20.0  # measured 16.7 dB
    assert sqnr_db(reference, outputs(equalized, test_x)) > 40.0  # measured 44.9 dB (46.8 without c3 -> fc)
    assert records[0].stats["pairs_equalized"] == 3  # c1 -> c2, c2 -> c3 and c3 -> mean -> fc


def test_equalize_is_exact_and_balances_the_ranges(case):
    _, model, _, _ = case
    gm = captured(copy.deepcopy(model))
    expected = outputs(gm, X)
    pass_ = Equalize()
    record = run_pass(pass_, gm, X)  # the PassManager holds the exact pass to the previous outputs
    gm.graph.lint()
    assert record.modified and record.stats == {"skipped:no_next_layer": 1, "pairs_equalized": 3,
                                                "iterations": record.stats["iterations"]}  # fmt: skip
    torch.testing.assert_close(outputs(gm, X), expected, rtol=1e-5, atol=1e-5)
    for layer in (gm.c1, gm.c2):
        assert eq.range_spread(eq.output_channel_ranges(layer.weight.detach())) < 1.5  # from ~1e4


def test_a_second_run_changes_nothing(case):
    _, model, _, _ = case
    gm = captured(copy.deepcopy(model))
    run_pass(Equalize(), gm, X)
    weights = {name: p.detach().clone() for name, p in gm.named_parameters()}
    again = run_pass(Equalize(), gm, X)
    assert not again.modified and again.stats["already_balanced"] == 3
    assert all(torch.equal(weights[name], p) for name, p in gm.named_parameters())


class TwoConvs(nn.Module):
    def __init__(self, between: nn.Module, c_mid: int = 6):
        super().__init__()
        self.a, self.b, self.between = nn.Conv2d(3, c_mid, 3), nn.Conv2d(c_mid, 4, 1), between

    def forward(self, x):
        return self.b(self.between(self.a(x)))


class SharedOutput(TwoConvs):
    def forward(self, x):
        y = self.a(x)
        return self.b(y) + y.mean()


class SharedModule(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(4, 4, 1), nn.Conv2d(4, 4, 1)

    def forward(self, x):
        return self.b(self.a(self.a(x)))


UNTOUCHABLE = {
    "relu6": (TwoConvs(nn.ReLU6()), (1, 3, 6, 6), {"skipped:relu6": 1}),
    "sigmoid": (TwoConvs(nn.Sigmoid()), (1, 3, 6, 6), {"skipped:no_next_layer": 1}),
    "shared_output": (SharedOutput(nn.Identity()), (1, 3, 6, 6), {"skipped:shared_output": 1}),
    "shared_module": (SharedModule(), (1, 4, 5, 5), {"skipped:shared_module": 2}),
}
#: The last layer of each model feeds the output: counted too.
LAST_LAYER = {"skipped:no_next_layer": 1}


@pytest.mark.parametrize("name", UNTOUCHABLE)
def test_models_it_cannot_touch_are_left_unchanged_with_a_reason(name):
    model, shape, expected_skips = UNTOUCHABLE[name]
    x = torch.randn(*shape)
    gm = captured(copy.deepcopy(model))
    weights = {n: p.detach().clone() for n, p in gm.named_parameters()}
    record = run_pass(Equalize(), gm, x)
    assert not record.modified
    assert record.stats == dict(Counter(LAST_LAYER) + Counter(expected_skips))
    assert all(torch.equal(weights[n], p) for n, p in gm.named_parameters())


def test_a_quantized_graph_is_skipped(case):
    _, model, calibration, _ = case
    gm, _, _ = run_passes(model, int8_passes(PER_TENSOR), calibration)
    record = run_pass(Equalize(), gm, X)
    assert not record.modified and record.stats == {"skipped:already_quantized": 1}


@pytest.mark.parametrize(
    "fields", [{"relu6": "clip"}, {"max_iterations": 0}, {"tolerance": 0.0}, {"tolerance": 1.0}]
)
def test_bad_options_are_config_errors(fields):
    with pytest.raises(ConfigError):
        Equalize(**fields)


@pytest.mark.parametrize("groups", [1, 2, 8])
def test_input_channel_scaling_matches_a_brute_force_reference(groups):
    conv = nn.Conv2d(8, 8, 3, groups=groups)
    weight = conv.weight.detach().double()
    scales = torch.rand(8, dtype=torch.float64) + 0.5
    x = torch.randn(1, 8, 5, 5, dtype=torch.float64)
    scaled = eq.scale_input_channels(weight, scales, groups)
    torch.testing.assert_close(
        torch.nn.functional.conv2d(x / scales[None, :, None, None], scaled, groups=groups),
        torch.nn.functional.conv2d(x, weight, groups=groups),
    )
    ranges = eq.input_channel_ranges(weight, groups)
    per_group = 8 // groups
    for i in range(8):
        rows = weight[(i // per_group) * per_group : (i // per_group + 1) * per_group, i % per_group]
        assert float(ranges[i]) == float(rows.abs().max())


@pytest.fixture(scope="module")
def mobilenet_equalized():
    model = mobilenet_v2_tiny().eval()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    res = graphopt.optimize(
        model, "generic-fp32", example_inputs=(x,),
        passes=[FoldBatchNorm(), Equalize(relu6="replace_with_relu")],
    )  # fmt: skip
    return model, x, res


def test_depthwise_network_equalizes_pair_by_pair(mobilenet_equalized):
    model, x, res = mobilenet_equalized
    stage = res.report.stage("equalize")
    assert stage.stats["pairs_equalized"] >= 10 and stage.stats["relu6_replaced"] >= 8
    assert RELU6_REPLACED in res.report.note_keys()
    # lossy only where a pre-activation exceeds 6: random inputs on a random network stay below it
    torch.testing.assert_close(outputs(res.model, x), outputs(model, x), rtol=1e-4, atol=1e-4)


def test_the_equalized_depthwise_network_exports_to_onnx_and_matches(mobilenet_equalized, tmp_path):
    _, x, res = mobilenet_equalized
    path = tmp_path / "m.onnx"
    res.export(path)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    torch.testing.assert_close(torch.from_numpy(got), outputs(res.model, x), rtol=1e-4, atol=1e-4)


def test_relu6_replacement_makes_the_pass_lossy():
    assert Equalize().exact and not Equalize(relu6="replace_with_relu").exact


def test_the_callers_model_is_not_mutated(case):
    _, model, calibration, _ = case
    before = {k: v.clone() for k, v in model.state_dict().items()}
    graphopt.optimize(model, "generic-fp32", example_inputs=(calibration[0][:1],), passes=[Equalize()])
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


class HighBias(nn.Module):
    """conv -> ReLU -> 1x1 conv whose first layer's biases keep every pre-activation of half the channels
    far above 0: what high-bias absorption moves into the second layer."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 4, 1)
        with torch.no_grad():
            self.a.bias.copy_(torch.tensor([20.0, 0.0] * 4))

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


def test_high_bias_absorption_moves_the_always_on_part_into_the_next_layer():
    model = HighBias().eval()
    calibration = calibration_batches((8, 3, 6, 6), batches=2)
    gm, records, context = run_passes(model, [Equalize(absorb_high_bias=True)], calibration)
    pass_stats = records[0].stats
    assert not records[0].exact and pass_stats["biases_absorbed"] == 1
    (row,) = context.tables["equalize_absorbed"]
    assert row["layer"] == "a" and row["channels"] >= 4
    with torch.no_grad():  # the ReLU's output range shrank by what moved; the function is kept on the data
        before = torch.relu(model.a(calibration[0])).amax()
        after = torch.relu(gm.a(calibration[0])).amax()
    assert after < before - 5
    torch.testing.assert_close(
        outputs(gm, calibration[0]), outputs(model, calibration[0]), rtol=1e-4, atol=1e-4
    )


def test_high_bias_absorption_without_data_or_statistics_says_why():
    gm = captured(HighBias())
    record = run_pass(Equalize(absorb_high_bias=True), gm, torch.randn(1, 3, 6, 6))
    assert record.stats["skipped:absorption_no_statistics"] == 1 and "biases_absorbed" not in record.stats
