"""Mixed weight widths under a byte budget: the knapsack's greedy solution, the pass on a network with one
layer that 4 bits ruins and one it does not, the ``WeightQuant(max_weight_bytes=...)`` plan rule and the
ONNX file it writes."""

from __future__ import annotations

import onnx
import pytest
import torch
from torch import nn

import graphopt
from graphopt.errors import ConfigError
from graphopt.passes.allocate_weight_bits import OVER_BUDGET
from graphopt.quant import QuantizedLayer, WeightQuant
from graphopt.quant.bit_allocation import LayerCost, allocate, storage_bytes

# --- the allocation ---------------------------------------------------------------------------------------


def test_storage_is_half_a_byte_per_weight_at_4_bits_and_below_and_a_byte_above():
    assert [storage_bytes(9, b) for b in (2, 3, 4, 5, 7, 8)] == [5, 5, 5, 9, 9, 9]


def test_the_least_noise_per_byte_saved_is_narrowed_first_and_only_until_it_fits():
    layers = [
        LayerCost("loud", 1000, 8, noise=1e-2),
        LayerCost("quiet", 1000, 8, noise=1e-4),
        LayerCost("middle", 1000, 8, noise=1e-3),
    ]
    chosen = allocate(layers, 4, budget=2500)  # 3000 bytes at 8 bits: one layer must go to 4 bits
    assert chosen.narrowed == ("quiet",) and chosen.bytes_after == 2500 and chosen.fits
    chosen = allocate(layers, 4, budget=2000)  # two must
    assert chosen.narrowed == ("quiet", "middle") and chosen.noise == pytest.approx(1.1e-3)


def test_a_large_pick_that_made_a_small_one_unneeded_puts_the_small_one_back():
    # per byte saved "small" is cheapest, so it goes first; then "big" alone would have sufficed
    layers = [LayerCost("small", 100, 8, noise=1e-6), LayerCost("big", 1000, 8, noise=1e-3)]
    chosen = allocate(layers, 4, budget=600)
    assert chosen.narrowed == ("big",) and chosen.bytes_after == 600


def test_fixed_layers_count_at_their_width_and_a_budget_nothing_meets_narrows_everything_movable():
    layers = [LayerCost("first", 1000, 8, 0.0, movable=False), LayerCost("rest", 1000, 8, noise=1e-3)]
    chosen = allocate(layers, 4, budget=1200)
    assert chosen.narrowed == ("rest",) and chosen.bytes_after == 1500 and not chosen.fits


# --- the pass --------------------------------------------------------------------------------------------


class _TwoLayers(nn.Module):
    """conv_a's weights have one large weight per output channel: per-channel 4 bits (levels -7..7 of
    max|w|/7) round all the others to zero. conv_b's are uniform: 4 bits barely hurt. Same size."""

    def __init__(self):
        super().__init__()
        self.conv_a = nn.Conv2d(8, 8, 3, padding=1)
        self.conv_b = nn.Conv2d(8, 8, 3, padding=1)
        with torch.no_grad():
            self.conv_a.weight.normal_(0, 0.05)
            self.conv_a.weight[:, 0, 0, 0] = 1.0
            self.conv_b.weight.uniform_(-0.1, 0.1)

    def forward(self, x):
        return self.conv_b(torch.relu(self.conv_a(x)))


def _optimize(weights, **kwargs):
    torch.manual_seed(0)
    model, x = _TwoLayers().eval(), torch.randn(2, 8, 6, 6)
    calibration = [torch.randn(8, 8, 6, 6) for _ in range(3)]
    return graphopt.optimize(model, "x86-int8", example_inputs=(x,), calibration_data=calibration,
                             weights=weights, **kwargs)  # fmt: skip


def _widths(res) -> dict[str, int]:
    return {n: m.weight_bits for n, m in res.model.named_modules() if isinstance(m, QuantizedLayer)}


def test_the_layer_4_bits_ruin_stays_at_8_and_the_output_keeps_more_signal_than_all_4_bit():
    budget = storage_bytes(576, 8) + storage_bytes(576, 4)  # room for exactly one 8-bit layer
    mixed = _optimize(WeightQuant(bits=4, max_weight_bytes=budget))
    assert _widths(mixed) == {"conv_a": 8, "conv_b": 4}
    stats = mixed.report.stage("allocate_weight_bits").stats
    assert stats["weight_bytes_before"] == 1152 and stats["weight_bytes_after"] == budget
    rows = {r["layer"]: r for r in mixed.report.tables["allocate_weight_bits"]}
    assert rows["conv_a"]["narrowed_sqnr_db"] < rows["conv_b"]["narrowed_sqnr_db"] - 6
    # the other choice, forced, keeps less of the signal than the allocation's (and all 4-bit less still)
    forced = _optimize(WeightQuant(bits=4, bits_by_layer={"conv_b": 8}))
    torch.manual_seed(0)
    reference, x = _TwoLayers().eval(), torch.randn(16, 8, 6, 6)  # the weights _optimize's model got
    with torch.no_grad():
        want = reference(x)
        error = {
            name: (res.model(x) - want).pow(2).mean() for name, res in [("mixed", mixed), ("forced", forced)]
        }
    assert error["mixed"] < error["forced"] / 4


def test_the_onnx_file_stores_the_narrowed_layer_as_int4_and_is_smaller(tmp_path):
    budget = storage_bytes(576, 8) + storage_bytes(576, 4)
    path = _optimize(WeightQuant(bits=4, max_weight_bytes=budget)).export(
        tmp_path / "m.onnx", latency_guard=False
    )
    int4 = [t.name for t in onnx.load(str(path)).graph.initializer if t.data_type == onnx.TensorProto.INT4]
    assert int4 == ["conv_b.weight_int4"]
    int8 = _optimize(None).export(tmp_path / "int8.onnx", latency_guard=False)
    # 288 bytes of weights saved, less the Cast node that widens them at load (~90 bytes on this tiny net)
    assert int8.stat().st_size - path.stat().st_size > 576 // 2 - 100


def test_a_budget_nothing_fits_narrows_every_layer_and_says_what_would_fit():
    res = _optimize(WeightQuant(bits=4, max_weight_bytes=100))
    assert _widths(res) == {"conv_a": 4, "conv_b": 4}
    (note,) = [n for n in res.report.notes if n.key == OVER_BUDGET]
    assert "576 bytes" in note and "max_weight_bytes=100" in note and note.facts["bytes"] == 576


def test_bits_by_layer_is_kept_out_of_the_allocation():
    res = _optimize(WeightQuant(bits=4, max_weight_bytes=600, bits_by_layer={"conv_b": 8}))
    assert _widths(res) == {"conv_a": 4, "conv_b": 8}
    rows = {r["layer"]: r for r in res.report.tables["allocate_weight_bits"]}
    assert rows["conv_b"]["narrowed_sqnr_db"] is None


def test_the_plan_places_the_allocation_right_after_calibrate():
    res = _optimize(WeightQuant(bits=4, max_weight_bytes=900))
    names = [p.name for p in res.plan.passes()]
    assert names[names.index("calibrate") + 1] == "allocate_weight_bits"
    assert "to fit 900 bytes" in str(res.plan)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"bits": 8, "max_weight_bytes": 1000}, "saves nothing"),
        ({"bits": 6, "max_weight_bytes": 1000}, "saves nothing"),
        ({"bits": 4, "max_weight_bytes": 0}, ">= 1"),
        ({"bits": 4, "max_weight_bytes": 1.5}, ">= 1"),
    ],
)
def test_bad_budgets_are_config_errors(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        WeightQuant(**kwargs)


def test_the_searchs_weight_bits_axis_sets_one_width_and_leaves_out_a_byte_budget():
    from graphopt.pipeline.driver import OptimizeCall
    from graphopt.search import Goals, SearchConfig
    from graphopt.search.space import SearchPoint
    from graphopt.search.variants import Variants
    from graphopt.targets import TARGETS

    given = WeightQuant(bits=4, max_weight_bytes=1000, per_channel=False)
    call = OptimizeCall(model=nn.Identity(), weights=given)
    variants = Variants(call, SearchConfig(weight_bits=(8, 4)), Goals(max_bytes=10_000), TARGETS["x86-int8"])
    for bits in (8, 4):
        weights = variants.of(SearchPoint(int8="on", weight_bits=bits)).weights
        assert (weights.bits, weights.max_weight_bytes, weights.per_channel) == (bits, None, False)


def test_a_size_goal_adds_mixed_points_whose_weight_budget_is_the_goal_less_the_files_overhead():
    from graphopt.pipeline.driver import OptimizeCall
    from graphopt.search import Goals, SearchConfig
    from graphopt.search.space import SearchPoint, SpaceLimits, enumerate_points
    from graphopt.search.variants import Variants
    from graphopt.targets import TARGETS

    config = SearchConfig(prune_ratios=(0.0, 0.5), int8=("on",), weight_bits=(8, 4), exits=(False,))
    for size_goal, labels in (
        (False, ["prune=0 int8 [onnx]", "prune=0 W4A8 [onnx]"]),
        (True, ["prune=0 int8 [onnx]", "prune=0 W4A8 [onnx]", "prune=0 W4/W8 mixed [onnx]"]),
    ):
        limits = SpaceLimits(True, False, False, True, ("onnx",), size_goal=size_goal)
        assert [p.label for p in enumerate_points(config, limits) if not p.prune] == labels
    call = OptimizeCall(model=nn.Identity(), weights=WeightQuant(per_channel=False))
    variants = Variants(call, config, Goals(max_bytes=10_000), TARGETS["x86-int8"], int8_overhead=1_000)
    for prune, budget in ((0.0, 9_000), (0.5, 9_500)):
        weights = variants.of(SearchPoint(prune=prune, int8="on", weight_bits=4, mixed=True)).weights
        assert (weights.bits, weights.max_weight_bytes, weights.per_channel) == (4, int(budget), False)


def test_the_axis_keeps_a_callers_group_size_at_2_to_4_bits_only():
    from graphopt.pipeline.driver import OptimizeCall
    from graphopt.search import Goals, SearchConfig
    from graphopt.search.space import SearchPoint, SpaceLimits, enumerate_points
    from graphopt.search.variants import Variants
    from graphopt.targets import TARGETS

    call = OptimizeCall(model=nn.Identity(), weights=WeightQuant(bits=4, group_size=32))
    config = SearchConfig(weight_bits=(8, 6, 4))
    variants = Variants(call, config, Goals(max_bytes=10_000), TARGETS["x86-int8"])
    widths = {
        (bits, mixed): variants.of(SearchPoint(int8="on", weight_bits=bits, mixed=mixed)).weights
        for bits, mixed in ((8, False), (6, False), (4, False), (4, True))
    }
    assert widths[4, False].group_size == 32
    assert all(widths[key].group_size is None for key in ((8, False), (6, False), (4, True)))
    # 5..7-bit weights are stored as int8: no mixed point for them
    limits = SpaceLimits(True, False, False, True, ("onnx",), size_goal=True)
    mixed = [p.weight_bits for p in enumerate_points(config, limits) if p.mixed]
    assert mixed and set(mixed) == {4}
