"""The energy estimate: the arithmetic of the model, and its place in the report (labelled an estimate)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import graphopt
from graphopt.reporting.energy import (
    DRAM_PJ_PER_BYTE,
    MAC_PJ,
    SRAM_PJ_PER_BYTE,
    activation_elements,
    estimate,
)
from graphopt.zoo import get_model
from tests.helpers import captured


def test_estimate_adds_arithmetic_weights_and_activations():
    e = estimate(macs=1_000_000, weight_bytes=1_000, activation_elements=500, numeric="fp32")
    assert e.arithmetic_uj == pytest.approx(1e6 * 4.6e-6)
    assert e.weights_uj == pytest.approx(1_000 * 160e-6)
    assert e.activations_uj == pytest.approx(2 * 500 * 4 * 1.25e-6)
    assert e.total_uj == pytest.approx(e.arithmetic_uj + e.weights_uj + e.activations_uj)
    int8 = estimate(macs=1_000_000, weight_bytes=250, activation_elements=500, numeric="int8")
    assert int8.arithmetic_uj == pytest.approx(e.arithmetic_uj * MAC_PJ["int8"] / MAC_PJ["fp32"])
    assert int8.activations_uj == pytest.approx(e.activations_uj / 4)
    assert DRAM_PJ_PER_BYTE == 160 and SRAM_PJ_PER_BYTE == 1.25  # 640 pJ and 5 pJ per 32-bit read
    with pytest.raises(ValueError, match="numeric must be one of"):
        estimate(1, 1, 1, "fp16")


def test_activation_elements_counts_every_computed_value():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 10))
    gm = captured(model)
    from graphopt.ir.shapes import propagate_shapes

    propagate_shapes(gm, (torch.randn(1, 3, 4, 4),))
    assert activation_elements(gm) == 8 * 16 + 8 * 16 + 8 * 16 + 10  # conv, relu, flatten, linear


def test_every_report_row_has_an_estimate_and_says_it_is_one(tmp_path):
    model, inputs = get_model("resnet_basic").build()
    calibration = [torch.randn(4, *inputs[0].shape[1:]) for _ in range(2)]
    res = graphopt.optimize(model, "x86-int8", example_inputs=inputs, calibration_data=calibration)
    res.export(tmp_path / "m.onnx", latency_guard=False)
    stages = res.report.stages
    assert all(s.energy is not None and s.energy.total_uj > 0 for s in stages)
    original, artifact = stages[0].energy, stages[-1].energy
    assert artifact.total_uj < original.total_uj / 3  # int8: 20x cheaper MACs, 4x fewer bytes
    text = str(res.report)
    assert "energy µJ (est.)" in text and "energy is an ESTIMATE" in text and "Horowitz" in text
    assert res.report.to_dict()["stages"][0]["energy"]["arithmetic_uj"] == pytest.approx(
        original.arithmetic_uj
    )
