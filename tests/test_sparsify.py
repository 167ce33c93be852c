"""Unstructured sparsity: the magnitude masks, the pass (structure, skip reasons, idempotence), masks held
through recovery and QAT, zipped artifact bytes, and bad input."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import graphopt
from graphopt import ConfigError
from graphopt.data.digits import batches, random_shift
from graphopt.passes.sparsify import DENSE_KERNELS, Sparsify, SparsifyConfig
from graphopt.pruning.sparsity import magnitude_masks, schedule, zero_fraction
from graphopt.quant import QuantizedLayer
from graphopt.recovery import RecoveryConfig
from graphopt.recovery.engine import fit
from graphopt.zoo import get_model
from tests.helpers import captured, run_pass


def test_magnitude_masks_global_and_local():
    big = torch.tensor([1.0, 2.0, 3.0, 4.0])
    small = torch.tensor([0.1, 0.2, 0.3, 0.4])
    global_masks = magnitude_masks([big, small], 0.5, "global")
    assert global_masks[0].tolist() == [1, 1, 1, 1] and global_masks[1].tolist() == [0, 0, 0, 0]
    local_masks = magnitude_masks([big, small], 0.5, "local")
    assert local_masks[0].tolist() == [0, 0, 1, 1] and local_masks[1].tolist() == [0, 0, 1, 1]
    assert magnitude_masks([big], 0.0, "global")[0].tolist() == [1, 1, 1, 1]


def test_cubic_schedule_rises_fast_then_flattens():
    steps = schedule(0.8, 4)
    assert steps[-1] == pytest.approx(0.8) and steps == sorted(steps)
    assert steps[0] > 0.8 / 4  # more than a linear ramp at first
    assert schedule(0.5, 1) == [0.5]


def _small_cnn() -> nn.Module:
    torch.manual_seed(0)
    convs = (nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU())
    return nn.Sequential(*convs, nn.Flatten(), nn.Linear(16 * 8 * 8, 10))


def test_pass_zeroes_the_fraction_asked_and_says_what_it_buys():
    gm = captured(_small_cnn())
    x = torch.randn(2, 3, 8, 8)
    record = run_pass(Sparsify(SparsifyConfig(sparsity=0.7)), gm, x)
    assert record.modified
    assert record.stats["sparsity"] == pytest.approx(0.7, abs=1e-3) and record.stats["layers"] == 3
    # Global ranking takes most from the large linear layer (small weights), which does few of the MACs.
    assert 0.3 < record.stats["sparse_macs_share"] < 1.0
    gm.graph.lint()
    weights = [m.weight for m in gm.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights) == pytest.approx(
        0.7, abs=1e-3
    )
    again = run_pass(Sparsify(SparsifyConfig(sparsity=0.7)), gm, x)
    assert not again.modified and again.stats["skipped:already_sparse"] == 1
    local = captured(_small_cnn())
    per_layer = run_pass(Sparsify(SparsifyConfig(sparsity=0.7, scope="local")), local, x)
    assert per_layer.stats["sparse_macs_share"] == pytest.approx(0.3, abs=0.01)  # every layer at 70 %


def test_dense_layers_and_nothing_eligible_are_reported():
    gm = captured(_small_cnn())
    record = run_pass(Sparsify(SparsifyConfig(sparsity=0.5, dense=("0",))), gm, torch.randn(1, 3, 8, 8))
    assert zero_fraction(gm.get_submodule("0").weight) == 0.0 and record.stats["layers"] == 2
    nothing = captured(nn.Sequential(nn.ReLU()))
    skipped = run_pass(Sparsify(SparsifyConfig(sparsity=0.5)), nothing, torch.randn(1, 3))
    assert not skipped.modified and skipped.stats == {"skipped:nothing_eligible": 1}


@pytest.mark.parametrize("bad", [1.0, -0.1, 1.5, "half", True])
def test_bad_sparsity_is_a_clear_error(bad):
    model, inputs = get_model("resnet_basic").build()
    with pytest.raises(
        ConfigError, match=r"sparsify must be a fraction in \[0, 1\)|sparsity must be a fraction"
    ):
        graphopt.optimize(model, example_inputs=inputs, sparsify=bad)


def test_keep_zero_weights_holds_zeros_through_training(digits_model, digits):
    model = _copy(digits_model)
    conv = model.features[0]
    with torch.no_grad():
        conv.weight[:, :, 0, 0] = 0.0
    data = batches(digits.train_x[:256], digits.train_y[:256], 64)
    fit(model, None, data, RecoveryConfig(epochs=1, keep_zero_weights=True, quiet=True),
        example_inputs=(digits.test_x[:1],))  # fmt: skip
    assert bool((conv.weight[:, :, 0, 0] == 0).all())
    fit(model, None, data, RecoveryConfig(epochs=1, quiet=True), example_inputs=(digits.test_x[:1],))
    assert not bool((conv.weight[:, :, 0, 0] == 0).all())  # without the flag the optimizer moves them


def test_sparsity_survives_recovery_and_qat_and_shrinks_the_zipped_artifact(digits_model, digits, tmp_path):
    recovery = RecoveryConfig(epochs=2, augment=random_shift, quiet=True)
    data = {
        "example_inputs": (digits.test_x[:1],),
        "train_data": batches(digits.train_x, digits.train_y, 64),
        "eval_data": digits.test_batches(),
        "recovery": recovery,
    }
    dense = graphopt.optimize(digits_model, **data)
    dense.export(tmp_path / "dense.onnx")
    sparse = graphopt.optimize(digits_model, sparsify=SparsifyConfig(sparsity=0.8, recovery=recovery), **data)
    sparse.export(tmp_path / "sparse.onnx")
    stages = [s.stage for s in sparse.report.stages]
    assert stages.index("sparsify") < stages.index("recover")  # recovery ran after, and kept the zeros
    layers = [m for m in sparse.model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    total = sum(m.weight.numel() for m in layers)
    assert sum(int((m.weight == 0).sum()) for m in layers) / total >= 0.8 - 1e-3
    assert (
        sparse.report.stages[-1].stats["zipped_bytes"] * 2.5 < dense.report.stages[-1].stats["zipped_bytes"]
    )
    assert sparse.report.stages[-1].accuracy > 0.9
    share = sparse.report.note(DENSE_KERNELS).facts["sparse_macs_share"]  # what a sparse kernel would do
    assert "sparsity" in sparse.report.tables
    assert share == sparse.report.stage("sparsify").stats["sparse_macs_share"]

    int8 = graphopt.optimize(
        digits_model, "x86-int8", sparsify=SparsifyConfig(sparsity=0.8, recovery=recovery),
        calibration_data=[digits.train_x[:64]], **data,
    )  # fmt: skip
    assert [s.stage for s in int8.report.stages][-2:] == ["calibrate", "qat"]
    q = [m.weight_int8 for m in int8.model.modules() if isinstance(m, QuantizedLayer)]
    assert sum(int((w == 0).sum()) for w in q) / sum(w.numel() for w in q) >= 0.8 - 1e-3  # QAT kept them


def _copy(model: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(model)
