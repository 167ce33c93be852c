"""Structured channel pruning: dependency analysis, exactness on every reference architecture, surgery."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from graphopt import ConfigError, PruneConfig
from graphopt.frontend.capture import capture
from graphopt.ir.graph import shape_of
from graphopt.ir.shapes import propagate_shapes
from graphopt.passes.prune_channels import CLAMPED, NOTHING_PRUNABLE, PruneChannels
from graphopt.pipeline.pass_base import PassContext
from graphopt.pipeline.pass_manager import PassManager
from graphopt.pruning import analyze, choose, remove_units, unit_scores
from graphopt.pruning.exactness import zero_then_prune, zero_units
from graphopt.reporting.cost import count_macs
from graphopt.reporting.notes import note_keys, notes_with
from graphopt.zoo import TEST_MODELS, get_model
from tests.helpers import captured, outputs


def _analyzed(name: str) -> tuple[fx.GraphModule, tuple[torch.Tensor, ...]]:
    model, inputs = get_model(name).build()
    gm = captured(model)
    propagate_shapes(gm, inputs)
    return gm, inputs


@pytest.mark.parametrize("ratio", [0.3, 0.5])
@pytest.mark.parametrize("name", TEST_MODELS)
def test_pruning_is_exact_once_removed_weights_are_zero(name, ratio):
    """Zero what pruning removes, then prune: a forgotten coupling would leave a path and move the outputs."""
    gm, inputs = _analyzed(name)
    macs_before = count_macs(gm)
    graph = analyze(gm)
    config = PruneConfig(ratio=ratio)
    selection = choose(graph.groups(), unit_scores(graph, config), config)
    assert selection.removed, f"{name}: nothing was selected at ratio {ratio}"
    zero_units(graph, selection.removed)
    dense = outputs(gm, *inputs)
    remove_units(graph, selection.removed)
    propagate_shapes(gm, inputs)
    gm.graph.lint()
    torch.testing.assert_close(outputs(gm, *inputs), dense, rtol=1e-5, atol=1e-5)
    assert count_macs(gm) < macs_before


def _groups_by_producer(name: str) -> dict[str, object]:
    gm, _ = _analyzed(name)
    return {p: g for g in analyze(gm).groups() for p in g.producers}


def test_residual_partners_share_a_group_and_the_head_is_never_pruned():
    groups = _groups_by_producer("resnet_basic")
    # the second conv of a block, the downsample conv and the next block's residual are one group
    assert groups["stages.1.0.conv2"] is groups["stages.1.0.downsample.0"]
    assert groups["stages.0.0.conv1"] is not groups["stages.0.0.conv2"]
    head = groups["fc"]
    assert not head.prunable and head.reasons == {"reaches the network output"}


def test_an_op_outside_the_table_blocks_its_group_and_names_itself():
    groups = _groups_by_producer("control_flow")
    assert not groups["stem.0"].prunable
    assert any(
        "PadToMultiple" in r and "not in the channel-dependency table" in r for r in groups["stem.0"].reasons
    )


def test_layernorm_blocks_the_residual_stream_but_heads_and_mlp_prune():
    gm, inputs = _analyzed("vit")
    graph = analyze(gm)
    groups = {p: g for g in graph.groups() for p in g.producers}
    assert not groups["patch_embed"].prunable
    assert any("normalizes over these channels" in r for r in groups["patch_embed"].reasons)
    assert groups["blocks.0.attn.qkv"].prunable and groups["blocks.0.mlp.0"].prunable
    record = PassManager([PruneChannels(ratio=0.5)]).run(gm, PassContext(example_inputs=inputs))[0]
    assert record.modified
    qkv = gm.get_submodule("blocks.0.attn.qkv")
    assert qkv.out_features == 3 * 4 * 4  # 3 x heads x head dim 8 -> 4
    assert gm.get_submodule("blocks.0.attn.proj").in_features == 16
    sdpa = [n for n in gm.graph.nodes if n.target is F.scaled_dot_product_attention]
    assert all(n.kwargs["scale"] == pytest.approx(8**-0.5) for n in sdpa)  # pinned to the original head dim


def _attention_shapes(gm: fx.GraphModule) -> set[tuple[int, int]]:
    """``(heads, head_dim)`` of every attention's query."""
    sdpa = [n for n in gm.graph.nodes if n.target is F.scaled_dot_product_attention]
    return {(shape_of(n.args[0])[1], shape_of(n.args[0])[-1]) for n in sdpa}


@pytest.mark.parametrize(("heads", "expected"), [("whole", (2, 8)), ("narrow", (4, 4))])
def test_attention_loses_whole_heads_or_the_same_channels_of_every_head(heads, expected):
    gm, context = _prune("vit", ratio=0.5, heads=heads)  # 4 heads of 8 channels
    propagate_shapes(gm, context.example_inputs)
    assert _attention_shapes(gm) == {expected}
    assert gm.get_submodule("blocks.0.attn.qkv").out_features == 3 * expected[0] * expected[1]


def test_a_single_head_attention_loses_channels_and_min_channels_counts_channels_not_heads():
    from graphopt.zoo.transformer import ViT

    model, x = ViT(heads=1).eval(), torch.randn(1, 3, 32, 32)
    gm = captured(model)
    propagate_shapes(gm, (x,))
    PassManager([PruneChannels(ratio=0.5)]).run(gm, PassContext(example_inputs=(x,)))
    propagate_shapes(gm, (x,))
    assert _attention_shapes(gm) == {(1, 16)}  # one head of 32 channels: narrowed, not removed
    # a head is 24 channels of the fused qkv (3 x 8): 48 channels keep 2 heads of the 1 that ratio 0.75 leaves
    gm, context = _prune("vit", ratio=0.75, min_channels=48)
    propagate_shapes(gm, context.example_inputs)
    assert _attention_shapes(gm) == {(2, 8)}


def test_pruning_narrow_heads_is_exact_once_removed_weights_are_zero():
    gm, inputs = _analyzed("vit")
    dense_heads = zero_then_prune(gm, inputs, PruneConfig(ratio=0.5, heads="narrow"))
    torch.testing.assert_close(dense_heads.pruned, dense_heads.zeroed, rtol=1e-5, atol=1e-5)
    assert dense_heads.macs_after < dense_heads.macs_before


def test_rounding_to_a_channel_multiple_counts_whole_heads_as_their_width():
    """Two heads of 8 channels are 16 channels, a multiple of 8: rounding must not keep all 4 heads."""
    gm, context = _prune("vit", ratio=0.5, round_to=8)
    propagate_shapes(gm, context.example_inputs)
    assert _attention_shapes(gm) == {(2, 8)}
    gm, context = _prune("vit", ratio=0.5, round_to=32)  # 4 heads of 8: nothing but all 4 is a multiple
    propagate_shapes(gm, context.example_inputs)
    assert _attention_shapes(gm) == {(4, 8)}


def _prune(name: str, **options: object) -> tuple[fx.GraphModule, PassContext]:
    gm, inputs = _analyzed(name)
    context = PassContext(example_inputs=inputs)
    PassManager([PruneChannels(**options)]).run(gm, context)
    return gm, context


def test_grouped_conv_keeps_its_groups_and_equal_group_widths():
    gm, _ = _prune("grouped_conv", ratio=0.5)
    grouped = gm.get_submodule("grouped.0")
    assert grouped.groups == 4 and grouped.in_channels % 4 == 0 and grouped.out_channels % 4 == 0
    assert grouped.in_channels < 16


def test_split_sizes_follow_the_pruned_widths():
    gm, _ = _prune("split", ratio=0.5)
    (split,) = [n for n in gm.graph.nodes if n.target is torch.split]
    assert split.args[1] == [gm.get_submodule("small.0").in_channels, gm.get_submodule("large.0").in_channels]
    assert sum(split.args[1]) == gm.get_submodule("stem.0").out_channels < 24


def test_channel_shuffle_keeps_equal_halves():
    gm, _ = _prune("shufflenet", ratio=0.5)
    for unit in ("units.0", "units.1"):
        half = gm.get_submodule(f"{unit}.branch.0.0").in_channels
        assert gm.get_submodule(f"{unit}.branch.3.0").out_channels == half
    assert gm.get_submodule("stem.0").out_channels == 2 * gm.get_submodule("units.0.branch.0.0").in_channels


def test_round_to_and_min_channels_shape_the_widths():
    gm, _ = _prune("resnet_basic", ratio=0.5, round_to=4)
    assert all(m.out_channels % 4 == 0 for m in gm.modules() if isinstance(m, nn.Conv2d))
    gm, context = _prune("resnet_basic", ratio=0.9, scope="global", min_channels=6)
    assert all(m.out_channels >= 6 for m in gm.modules() if isinstance(m, nn.Conv2d))
    clamped = notes_with(context, CLAMPED)
    assert clamped and all(n.facts["min_channels"] == 6 and n.facts["layers"] for n in clamped)


def test_protected_layers_keep_their_channels():
    gm, context = _prune("resnet_basic", ratio=0.5, protect=("stages.0",))
    assert gm.get_submodule("stages.0.0.conv1").out_channels == 8
    assert gm.get_submodule("stages.1.0.conv1").out_channels == 8  # 16 -> 8
    rows = context.tables["pruning"]
    assert any("protected (stages.0)" in str(r["status"]) and r["blocked"] == ("protected",) for r in rows)


def _net_with_weak_channels() -> tuple[nn.Module, torch.Tensor, list[int]]:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 4)
    )
    weak = [1, 4, 6]
    with torch.no_grad():
        model[0].weight[weak] *= 1e-3
        model[1].weight[weak] = 1e-3
    return model, torch.randn(2, 3, 8, 8), weak


@pytest.mark.parametrize("importance", ["l1", "l2", "bn_scale"])
def test_importance_criteria_remove_the_weak_channels(importance):
    model, x, weak = _net_with_weak_channels()
    gm = captured(model)
    with torch.no_grad():  # captured() randomised BN; restore the weak gammas
        gm.get_submodule("1").weight[weak] = 1e-3
    propagate_shapes(gm, (x,))
    graph = analyze(gm)
    config = PruneConfig(ratio=0.4, importance=importance)
    selection = choose(graph.groups(), unit_scores(graph, config), config)
    conv_atoms = graph.producers["0"].atoms
    assert sorted(int(conv_atoms.tolist().index(u)) for u in selection.removed) == weak


def test_taylor_importance_needs_train_data_and_ranks_every_channel(digits_model, digits):
    import graphopt

    with pytest.raises(graphopt.InvalidInputError, match="train_data"):
        graphopt.optimize(digits_model, example_inputs=(digits.test_x[:1],), prune=PruneConfig(0.5, "taylor"))
    gm = capture(copy.deepcopy(digits_model)).gm  # captured() would randomise the shared model's BN
    propagate_shapes(gm, (digits.test_x[:1],))
    graph = analyze(gm)
    from graphopt.data.labelled import LabelledTensors

    scores = unit_scores(
        graph, PruneConfig(importance="taylor"), LabelledTensors((digits.train_x,), digits.train_y)
    )
    prunable = [u for g in graph.groups() for u in g.prunable]
    assert set(prunable) <= set(scores) and len({round(scores[u], 9) for u in prunable}) > len(prunable) // 2


def test_activation_importance_removes_units_that_feed_nothing_even_with_the_largest_weights():
    """Hidden units 0-3 read an input feature that is always zero in the data: the largest weights, no
    output. ``activation`` ranks them last (pruning them changes nothing); ``l2`` keeps them."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    with torch.no_grad():
        model[0].weight[:4] = 0
        model[0].weight[:4, 0] = 10.0  # dead units: feature 0 is zero in every sample
        model[0].bias[:4] = 0
    samples = [(torch.cat([torch.zeros(16, 1), torch.randn(16, 3)], dim=1),) for _ in range(3)]
    removed = {}
    for importance in ("activation", "l2"):
        gm = captured(model)
        propagate_shapes(gm, samples[0])
        graph = analyze(gm)
        config = PruneConfig(ratio=0.5, importance=importance)
        selection = choose(graph.groups(), unit_scores(graph, config, samples=samples), config)
        atoms = graph.producers["0"].atoms.tolist()
        removed[importance] = sorted(atoms.index(u) for u in selection.removed)
    assert removed["activation"] == [0, 1, 2, 3]
    assert not set(removed["l2"]) & {0, 1, 2, 3}


def test_activation_importance_reads_calibration_data_and_says_when_there_is_none():
    import graphopt

    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    x = torch.randn(2, 4)
    with pytest.raises(graphopt.InvalidInputError, match=r"needs train_data=.* or calibration_data="):
        graphopt.optimize(model, example_inputs=(x,), prune=PruneConfig(0.5, "activation"))
    with torch.no_grad():
        model[0].weight[:4] = 0
        model[0].weight[:4, 0] = 10.0  # units 0-3 read only feature 0, zero in the calibration data
    calibration = [torch.cat([torch.zeros(8, 1), torch.randn(8, 3)], dim=1)]
    res = graphopt.optimize(
        model, example_inputs=(x,), prune=PruneConfig(0.5, "activation"), calibration_data=calibration
    )
    kept = res.model.get_submodule("0").weight
    assert kept.shape == (4, 4) and kept[:, 0].abs().max() < 10  # the 4 units that feed something


@pytest.mark.parametrize("ratio", [-0.1, 1.0, 1.5, True, "half"])
def test_ratio_outside_unit_interval_is_rejected(ratio):
    with pytest.raises(ConfigError, match="fraction in \\[0, 1\\)"):
        PruneConfig(ratio=ratio)


def test_unknown_protected_name_lists_close_matches():
    import graphopt

    model, inputs = get_model("resnet_basic").build()
    with pytest.raises(ConfigError, match=r"did you mean .*stages\.0\.0\.conv1"):
        graphopt.optimize(model, example_inputs=inputs, prune=PruneConfig(0.5, protect=("stages.0.0.conv",)))


def test_a_model_with_nothing_prunable_says_so():
    gm = captured(nn.Sequential(nn.Linear(4, 3)))
    context = PassContext(example_inputs=(torch.randn(2, 4),))
    (record,) = PassManager([PruneChannels(ratio=0.5)]).run(gm, context)
    assert not record.modified and record.stats["skipped:nothing_prunable"] == 1
    assert record.stats["blocked:network_output"] == 3  # why, counted by reason
    assert note_keys(context) == [NOTHING_PRUNABLE]
    assert context.tables["pruning"][0]["status"] == "kept (3/3 blocked: reaches the network output)"


def test_dependency_analysis_of_a_shared_module_couples_its_call_sites():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 8, 1), nn.Conv2d(3, 8, 1)
            self.shared = nn.Conv2d(8, 8, 1)
            self.head = nn.Conv2d(8, 2, 1)

        def forward(self, x):
            return self.head(self.shared(self.a(x)) + self.shared(self.b(x)))

    model, x = Twice().eval(), torch.randn(1, 3, 4, 4)
    gm = captured(model)
    propagate_shapes(gm, (x,))
    groups = {p: g for g in analyze(gm).groups() for p in g.producers}
    assert groups["a"] is groups["b"]  # both feed the one module's input channels
    gm2, _ = gm, None
    record = PassManager([PruneChannels(ratio=0.5)]).run(gm2, PassContext(example_inputs=(x,)))[0]
    assert record.modified and gm2.get_submodule("shared").in_channels == 4
    assert gm2(x).shape == (1, 2, 4, 4)
