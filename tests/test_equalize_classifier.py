"""Cross-layer equalization into the classifier: conv -> ReLU -> global average pooling -> flatten -> linear
is a pair (passes/equalize.py), equalized exactly like conv -> conv; paths that do not keep channel ``i`` at
feature ``i`` are not."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from graphopt.passes.equalize import Equalize
from graphopt.quant import equalization as eq
from graphopt.quant.scheme import sqnr_db
from tests.helpers import captured, outputs, run_pass
from tests.ptq_cases import PER_TENSOR, calibration_batches, int8_passes, run_passes

X = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(3))


class Classifier(nn.Module):
    """conv -> ReLU -> GAP -> (flatten) -> linear, the head of most CNNs, in the forms models write it."""

    def __init__(self, head: str = "pool_flatten"):
        super().__init__()
        self.head = head
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1) if head != "pool2_flatten" else nn.AdaptiveAvgPool2d(2)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(16 if head != "pool2_flatten" else 64, 10)

    def forward(self, x):
        x = torch.relu(self.conv(x))
        if self.head == "mean":
            return self.fc(x.mean((2, 3)))
        if self.head == "functional_view":
            return self.fc(nn.functional.adaptive_avg_pool2d(x, 1).view(x.shape[0], -1))
        if self.head == "module_flatten":
            return self.fc(self.flatten(self.pool(x)))
        if self.head == "shared":
            return self.fc(self.pool(x).flatten(1)) + x.mean()
        return self.fc(self.pool(x).flatten(1))  # pool_flatten, pool2_flatten


def _rescaled(model: Classifier, spread: float = 100.0) -> Classifier:
    """The same function with every other conv output channel scaled by ``spread`` and the linear's
    matching input column by ``1 / spread`` (ReLU and average pooling commute with a positive scale)."""
    out = copy.deepcopy(model)
    f = torch.where(torch.arange(16) % 2 == 0, spread, 1.0)
    with torch.no_grad():
        out.conv.weight *= f[:, None, None, None]
        out.conv.bias *= f
        out.fc.weight /= f[None, :]
    return out.eval()


@pytest.fixture(scope="module")
def case():
    torch.manual_seed(0)
    base = Classifier().eval()
    return base, _rescaled(base)


def test_the_classifier_pair_turns_per_tensor_int8_from_poor_to_good(case):
    base, model = case
    calibration = calibration_batches((16, 3, 8, 8))
    test_x = torch.randn(32, 3, 8, 8, generator=torch.Generator().manual_seed(4))
    reference = outputs(base, test_x)
    plain, _, _ = run_passes(model, int8_passes(PER_TENSOR), calibration)
    equalized, records, context = run_passes(model, [Equalize(), *int8_passes(PER_TENSOR)], calibration)
    assert sqnr_db(reference, outputs(plain, test_x)) < 10.0  # measured 4.8 dB
    assert sqnr_db(reference, outputs(equalized, test_x)) > 35.0  # measured 41.5 dB
    stats = records[0].stats  # (the linear feeds the output: no pair of its own)
    assert stats == {"pairs_equalized": 1, "iterations": stats["iterations"], "skipped:no_next_layer": 1}
    rows = {row["layer"]: row for row in context.tables["equalize"]}
    assert set(rows) == {"conv", "fc"}
    # the spread of each layer's output-channel ranges: the conv's 122 -> 1.23, the linear's 1.36 -> 1.13
    assert rows["conv"]["spread_before"] > 100 and rows["conv"]["spread_after"] < 2
    assert rows["fc"]["spread_after"] <= rows["fc"]["spread_before"]


@pytest.mark.parametrize("head", ["pool_flatten", "mean", "functional_view", "module_flatten"])
def test_every_form_of_the_head_is_equalized_exactly(case, head):
    _, rescaled = case
    model = Classifier(head).eval()
    model.load_state_dict(rescaled.state_dict())
    gm = captured(model)
    expected = outputs(gm, X)
    record = run_pass(Equalize(), gm, X)  # the PassManager holds the exact pass to the previous outputs
    gm.graph.lint()
    assert record.modified and record.stats["pairs_equalized"] == 1
    torch.testing.assert_close(outputs(gm, X), expected, rtol=1e-5, atol=1e-5)
    assert eq.range_spread(eq.output_channel_ranges(gm.conv.weight.detach())) < 10  # from > 100
    again = run_pass(Equalize(), gm, X)
    assert not again.modified and again.stats["already_balanced"] == 1


@pytest.mark.parametrize(
    ("head", "stats"),
    [  # (the linear feeds the output: one skipped:no_next_layer of its own)
        # 2x2 pooling flattened: features 4i..4i+3 are channel i
        ("pool2_flatten", {"skipped:no_next_layer": 2}),
        # the mean of the conv's output would see the rescaled tensor
        ("shared", {"skipped:shared_output": 1, "skipped:no_next_layer": 1}),
    ],
)
def test_heads_that_do_not_keep_channel_i_at_feature_i_are_left_alone(head, stats):
    torch.manual_seed(0)
    gm = captured(Classifier(head).eval())
    weights = {n: p.detach().clone() for n, p in gm.named_parameters()}
    record = run_pass(Equalize(), gm, X)
    assert not record.modified and record.stats == stats
    assert all(torch.equal(weights[n], p) for n, p in gm.named_parameters())


def test_a_linear_on_a_conv_s_last_axis_is_not_a_classifier():
    """``fc`` applied to ``(N, C, H, W)`` mixes the width axis, not the channels: no pair."""

    class LastAxis(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.fc = nn.Conv2d(3, 8, 1), nn.Linear(8, 4)

        def forward(self, x):
            return self.fc(torch.relu(self.conv(x)))

    gm = captured(LastAxis().eval())
    record = run_pass(Equalize(), gm, torch.randn(2, 3, 8, 8))
    assert not record.modified and record.stats == {"skipped:layout": 1, "skipped:no_next_layer": 1}
