"""Sequential MSE: weight scales chosen by the layer's output error. Where a channel's largest weights meet
inputs that are always 0, clipping them costs nothing in the output and buys finer steps for the rest: the
output search finds that, the weight-only search cannot. The pass sets the scales, the integers and the
int32 bias follow, the file agrees with eager, and what it does not search it counts."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import graphopt
from graphopt import ConfigError, WeightQuant
from graphopt.backends import OnnxRunner
from graphopt.passes import AdaRound, AdaRoundOptions, ImproveInt8, ImproveInt8Options
from graphopt.passes.sequential_mse import SequentialMse, SequentialMseOptions
from graphopt.pipeline.registry import make_pass
from graphopt.quant import QuantizedLayer, QuantScheme
from graphopt.quant.range_search import candidate_fractions, search_weight_scales
from graphopt.quant.scheme import sqnr_db, weight_scales
from graphopt.targets import TARGETS, X86_INT8

BOUND = 7  # 4-bit weights


def _dead_input_case(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A (32, 16) weight whose column 0 is 20x the rest, and inputs whose feature 0 is always 0."""
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(32, 16, generator=generator)
    weight[:, 0] *= 20.0
    inputs = torch.randn(512, 16, generator=generator)
    inputs[:, 0] = 0.0
    return weight, inputs


def _dequantized(weight: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    s = scales.reshape(-1, 1)
    return torch.clamp(torch.round(weight / s), -BOUND, BOUND) * s


def test_the_output_search_clips_what_the_inputs_never_read_and_beats_the_weight_only_search():
    weight, inputs = _dead_input_case()
    target = inputs @ weight.T
    unclipped = weight.abs().amax(dim=1) / BOUND
    result = search_weight_scales(
        weight, unclipped, _dequantized(weight, unclipped), BOUND, True, lambda w: inputs @ w.T, target,
        channel_dim=-1, fractions=candidate_fractions(20, 0.1),
    )  # fmt: skip
    assert result.mse_after < 0.1 * result.mse_before  # the dead column no longer sets the steps
    assert float(result.fractions.median()) < 0.5  # most rows: their largest weight is in column 0
    weight_only = weight_scales(weight, QuantScheme(weight_bits=4, weight_clipping="mse"))
    output_error = lambda scales: float((inputs @ _dequantized(weight, scales).T - target).pow(2).mean())  # noqa: E731
    assert output_error(result.scales) < 0.5 * output_error(weight_only)
    assert output_error(result.scales) == pytest.approx(result.mse_after, rel=1e-3)


def test_per_tensor_scales_move_together():
    weight, inputs = _dead_input_case(1)
    peak = weight.abs().amax() / BOUND
    result = search_weight_scales(
        weight, peak.expand(32), _dequantized(weight, peak.expand(32)), BOUND, False, lambda w: inputs @ w.T,
        inputs @ weight.T, channel_dim=-1, fractions=candidate_fractions(20, 0.1),
    )  # fmt: skip
    assert (result.scales == result.scales[0]).all() and result.scales[0] < peak
    assert result.mse_after < result.mse_before


class _DeadFeature(nn.Module):
    """Linear -> ReLU -> Linear whose first layer's column 0 is 20x the rest and reads a feature that the
    data never sets (the model computes with it as 0)."""

    def __init__(self):
        super().__init__()
        weight, _ = _dead_input_case(2)
        self.fc1, self.fc2 = nn.Linear(16, 32), nn.Linear(32, 8)
        with torch.no_grad():
            self.fc1.weight.copy_(weight)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


def _inputs(count: int, seed: int) -> torch.Tensor:
    x = torch.randn(count, 16, generator=torch.Generator().manual_seed(seed))
    x[:, 0] = 0.0
    return x


def _optimize(model, target=X86_INT8, extra=(), **kwargs):
    passes = [*(make_pass(p.name, p.options) for p in target.passes), *extra]
    return graphopt.optimize(
        model, target, example_inputs=(_inputs(1, 0),), calibration_data=[_inputs(64, s) for s in range(4)],
        passes=passes, **kwargs,
    )  # fmt: skip


def test_the_pass_sets_scales_integers_and_bias_and_the_file_agrees(tmp_path):
    model = _DeadFeature().eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    plain = _optimize(model, weights=4)
    searched = _optimize(model, weights=4, extra=[SequentialMse()])
    row = searched.report.stage("sequential_mse")
    assert row.stats["searched_layers"] == 2 and row.stats["changed_channels"] > 0
    table = {r["layer"]: r for r in searched.report.tables["sequential_mse"]}
    assert table["fc1"]["mse_after"] < 0.2 * table["fc1"]["mse_before"] and table["fc1"]["min_fraction"] < 0.5
    layer = searched.model.get_submodule("fc1")
    assert isinstance(layer, QuantizedLayer)
    scales = layer.weight_scale.reshape(-1, 1)
    assert torch.equal(
        layer.weight_int8.float(), torch.clamp(torch.round(layer.fp32_layer.weight / scales), -7, 7)
    )
    assert torch.allclose(layer.bias_scale, layer.weight_scale * layer.input_scale)  # the bias followed
    assert (layer.weight_scale < plain.model.get_submodule("fc1").weight_scale).sum() > 16  # clipped
    held_out = _inputs(256, 9)
    with torch.no_grad():
        reference = model(held_out)
        gained = sqnr_db(reference, searched.model(held_out)) - sqnr_db(reference, plain.model(held_out))
    assert gained > 3.0
    path = searched.export(
        tmp_path / "searched.onnx", latency_guard=False
    )  # the file is checked against eager
    runner = OnnxRunner(path)
    assert torch.allclose(
        torch.from_numpy(runner.run(held_out.numpy())[0]), searched.model(held_out), atol=1e-4
    )
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the caller's model


def test_what_it_does_not_search_it_counts():
    fixed_point = TARGETS["fixed-point-int8"]
    res = _optimize(_DeadFeature().eval(), target=fixed_point, extra=[SequentialMse()])
    stats = res.report.stage("sequential_mse").stats
    assert stats["skipped:power_of_two_scales"] == 2 and "searched_layers" not in stats
    rounded = _optimize(
        _DeadFeature().eval(), weights=4, extra=[AdaRound(AdaRoundOptions(iterations=20)), SequentialMse()]
    )
    assert rounded.report.stage("sequential_mse").stats["skipped:rounded_by_adaround"] == 2
    grouped = _optimize(
        _DeadFeature().eval(), weights=WeightQuant(bits=4, group_size=8), extra=[SequentialMse()]
    )
    assert grouped.report.stage("sequential_mse").stats["skipped:per_group_scales"] == 2


def test_the_driver_says_why_a_step_changed_nothing():
    """On power-of-two scales sequential_mse searches nothing: the driver's row says so, not 'no gain'."""
    driver = ImproveInt8(ImproveInt8Options(steps=("sequential_mse",)))
    res = _optimize(_DeadFeature().eval(), target=TARGETS["fixed-point-int8"], extra=[driver])
    (row,) = res.report.tables["improve_int8"]
    assert not row["kept"] and row["why"] == "changed nothing (skipped: power_of_two_scales 2)"


@pytest.mark.parametrize(
    "kwargs, phrase",
    [({"candidates": 0}, "candidates must be an integer >= 1"), ({"min_fraction": 0.0}, "min_fraction"),
     ({"samples": 2.5}, "samples must be an integer")],
)  # fmt: skip
def test_bad_options_are_config_errors(kwargs, phrase):
    with pytest.raises(ConfigError, match=phrase):
        SequentialMseOptions(**kwargs)
