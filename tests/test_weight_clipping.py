"""Clipped weight ranges (``weight_clipping="mse"``): the least-error scale per channel, never worse than
``max|w|``, what it buys 4-bit weights on heavy-tailed layers end to end, and QAT keeping the same grid."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

import graphopt
from graphopt.errors import ConfigError
from graphopt.quant import QuantizedLayer, QuantScheme, WeightQuant
from graphopt.quant.scheme import quantize_weight, sqnr_db, weight_scales


def _laplace(*shape: int) -> torch.Tensor:
    torch.manual_seed(0)
    return torch.distributions.Laplace(0.0, 0.05).sample(shape)


def _round_trip(weight: torch.Tensor, scheme: QuantScheme) -> torch.Tensor:
    scales = weight_scales(weight, scheme)
    return quantize_weight(weight, scales, scheme).float() * scales.reshape(-1, *([1] * (weight.dim() - 1)))


@pytest.mark.parametrize("per_channel", [True, False])
def test_clipping_heavy_tailed_4_bit_weights_gains_over_a_db_and_only_ever_shrinks_the_scale(per_channel):
    weight = _laplace(16, 64, 3, 3)  # 576 weights per channel: the largest are ~7x the mean magnitude
    plain = QuantScheme(weight_bits=4, per_channel=per_channel)
    clipped = dataclasses.replace(plain, weight_clipping="mse")
    gain = sqnr_db(weight, _round_trip(weight, clipped)) - sqnr_db(weight, _round_trip(weight, plain))
    assert gain > 1.5
    assert torch.all(weight_scales(weight, clipped) <= weight_scales(weight, plain) * (1 + 1e-6))


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_each_channels_error_is_never_above_the_unclipped_one(bits):
    weight = torch.randn(8, 50)
    errors = {
        clip: (_round_trip(weight, QuantScheme(weight_bits=bits, weight_clipping=clip)) - weight)
        .pow(2)
        .sum(1)
        for clip in ("none", "mse")
    }
    assert torch.all(errors["mse"] <= errors["none"] * (1 + 1e-5))


class _HeavyTailed(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(64, 32, 3, padding=1)
        self.fc = nn.Linear(32, 10)
        with torch.no_grad():
            self.conv.weight.copy_(_laplace(32, 64, 3, 3))

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).mean(dim=(2, 3)))


def _optimize(clipping: str):
    torch.manual_seed(1)
    model, x = _HeavyTailed().eval(), torch.randn(2, 64, 8, 8)
    calibration = [torch.randn(16, 64, 8, 8) for _ in range(2)]
    res = graphopt.optimize(model, "x86-int8", example_inputs=(x,), calibration_data=calibration,
                            weights=WeightQuant(bits=4, clipping=clipping))  # fmt: skip
    return model, res


def test_4_bit_weights_clipped_keep_more_of_the_networks_output():
    x = torch.randn(32, 64, 8, 8)
    model, plain = _optimize("none")
    _, clipped = _optimize("mse")
    weight_gain = clipped.model.conv.weight_sqnr_db - plain.model.conv.weight_sqnr_db
    with torch.no_grad():
        reference = model(x)
        gain = sqnr_db(reference, clipped.model(x)) - sqnr_db(reference, plain.model(x))
    # the conv's weights gain ~2 dB; at the output, 8-bit activation noise and the fc's weights dilute it
    assert weight_gain > 1.5 and gain > 0.1
    assert "clipped to the least squared error" in str(clipped.plan)


def test_qat_trains_on_the_clipped_grid_and_refreezing_keeps_it():
    _, res = _optimize("mse")
    layer = res.model.get_submodule("conv")
    assert isinstance(layer, QuantizedLayer) and layer.frozen
    frozen_weights, frozen_scales = layer.weight_int8.clone(), layer.weight_scale.clone()
    fp32 = layer.fp32_layer.weight.detach()
    assert torch.any(frozen_scales < weight_scales(fp32, QuantScheme(weight_bits=4)) * 0.99)  # it clipped
    layer.thaw()
    torch.testing.assert_close(layer._weight_scales(layer.float_layer.weight), frozen_scales)
    layer.freeze(layer.input_scale)  # weights unchanged by training: the same integers come back
    assert torch.equal(layer.weight_int8, frozen_weights)


def test_an_unknown_clipping_is_a_config_error():
    with pytest.raises(ConfigError, match="'none' or 'mse'"):
        WeightQuant(bits=4, clipping="best")
