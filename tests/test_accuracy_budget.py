"""accuracy_budget: the layer int8 breaks is found by its sensitivity and kept in fp32, the drop ends within
the budget, the report says which layer and why, and bad requests are clear errors."""

from __future__ import annotations

import pytest
import torch

import graphopt
from graphopt import ConfigError, InvalidInputError
from graphopt.passes.accuracy_budget import KEPT_FP32, AccuracyBudget
from graphopt.pipeline.registry import make_pass
from graphopt.quant import QuantizedLayer
from tests.helpers import fragile_digits_model, ort_histogram, per_tensor_int8_target

PER_TENSOR = per_tensor_int8_target()


@pytest.fixture(scope="module")
def fragile_model(digits_model):
    return fragile_digits_model(digits_model)


def _optimize(model, digits, **kwargs):
    return graphopt.optimize(
        model, PER_TENSOR, example_inputs=(digits.test_x[:1],),
        calibration_data=[digits.train_x[i : i + 32] for i in range(0, 128, 32)],
        eval_data=digits.test_batches(), **kwargs,
    )  # fmt: skip


def test_the_driver_mends_the_fragile_model_by_equalization_before_any_fall_back(fragile_model, digits):
    """Equalization pairs features.7 with the classifier through the pooling: the other channels are
    scaled up against the dead one, and per-tensor int8 holds with every layer int8."""
    res = _optimize(fragile_model, digits, accuracy_budget=0.5)
    assert res.report.stage("calibrate").accuracy < 0.5  # per-tensor int8 breaks this model
    steps = {r["step"]: r for r in res.report.tables["improve_int8"]}
    assert steps["equalize"]["kept"] and res.report.stage("accuracy_budget").stats["kept_fp32"] == 0
    assert res.report.stage("original").accuracy - res.report.stages[-1].accuracy <= 0.005


def test_budget_keeps_the_sensitive_layer_in_fp32(fragile_model, digits, tmp_path):
    """The fall-back alone (no improve_int8 step before it): the layer int8 breaks goes back to fp32."""
    plain = _optimize(fragile_model, digits)
    original, int8 = plain.report.stage("original").accuracy, plain.report.stages[-1].accuracy
    assert original - int8 > 0.5  # per-tensor int8 breaks this model

    passes = [*(make_pass(p.name, p.options) for p in PER_TENSOR.passes), AccuracyBudget(budget_pp=0.5)]
    res = _optimize(fragile_model, digits, passes=passes)
    row = res.report.stage("accuracy_budget")
    assert row.stats["kept_fp32"] == 1
    assert original - row.accuracy <= 0.005
    table = {r["layer"]: r for r in res.report.tables["accuracy_budget"]}
    assert table["features.7"]["kept_fp32"] and table["features.7"]["sensitivity_db"] > 20
    assert max(table, key=lambda name: table[name]["sensitivity_db"]) == "features.7"
    assert not isinstance(res.model.get_submodule("features.7"), QuantizedLayer)
    assert isinstance(res.model.get_submodule("features.3"), QuantizedLayer)
    assert res.report.note(KEPT_FP32).facts["layers"] == ("features.7",)

    path = res.export(tmp_path / "m.onnx", latency_guard=False)
    assert abs(res.report.stages[-1].accuracy - row.accuracy) <= 0.006
    # ONNX Runtime keeps the fp32 layer in fp32 (it would quantize a float-initializer weight by itself).
    ops = ort_histogram(path, tmp_path)
    assert ops["QLinearConv"] == 2 and ops["Conv"] + ops["FusedConv"] == 1, ops


def test_budget_already_met_changes_nothing(digits_model, digits):
    res = _optimize(digits_model, digits, accuracy_budget=5.0)
    row = res.report.stage("accuracy_budget")
    assert row.stats["kept_fp32"] == 0 and not row.modified


def test_budget_errors(digits_model, digits):
    with pytest.raises(InvalidInputError, match="needs eval_data"):
        graphopt.optimize(
            digits_model, "x86-int8", example_inputs=(digits.test_x[:1],),
            calibration_data=[digits.train_x[:32]], accuracy_budget=1.0,
        )  # fmt: skip
    with pytest.raises(ConfigError, match="applies to int8 targets"):
        graphopt.optimize(
            digits_model, "generic-fp32", example_inputs=(digits.test_x[:1],),
            eval_data=digits.test_batches(), accuracy_budget=1.0,
        )  # fmt: skip
    with pytest.raises(ConfigError, match=r"must be in \[0, 100\)"):
        _optimize(digits_model, digits, accuracy_budget=-1.0)


def test_with_every_layer_back_in_fp32_no_quantizer_is_left_to_mislead_onnx_runtime(
    digits_model, digits, tmp_path
):
    """Quantizers between fp32 layers made ORT 1.32 quantize a pooled fp32 conv itself and write an invalid
    QLinearConv (int32 weights): found by the search on the digits CNN pruned 0.5 with every layer kept."""
    from graphopt.passes.accuracy_budget import (
        _drop_unused_quantizers,
        _drop_useless_quantizers,
        _restore_fp32,
    )
    from graphopt.quant.modules import ActivationQuantizer

    res = _optimize(digits_model, digits)
    gm = res.model
    for name, layer in [(n, m) for n, m in gm.named_modules() if isinstance(m, QuantizedLayer)]:
        _restore_fp32(gm, name, layer)
    _drop_unused_quantizers(gm)
    _drop_useless_quantizers(gm)
    assert not any(isinstance(m, ActivationQuantizer) for m in gm.modules())
    res.export(tmp_path / "m.onnx", latency_guard=False)
    assert res.report.stages[-1].accuracy >= res.report.stage("original").accuracy - 0.003


def test_after_pruning_int8_is_measured_against_the_pruned_model(digits_model, digits):
    res = _optimize(digits_model, digits, prune=0.5, accuracy_budget=0.5)
    stages = [r.stage for r in res.report.stages]
    entering = res.report.stages[stages.index("insert_fake_quant") - 1]
    row = res.report.stage("accuracy_budget")
    assert row.stats["fp32_accuracy"] == pytest.approx(100 * entering.accuracy, abs=0.01)
    assert row.stats["fp32_accuracy"] < 100 * res.report.stage("original").accuracy - 1  # pruning cost


def test_a_budget_already_met_leaves_every_quantizer_in_place():
    """Dropping quantizers that no int8 layer needs is for layers put back in fp32; with none kept the int8
    graph is exactly the one without a budget (it lost the two quantizers before the classifier's flatten,
    a different model and file while the report said nothing changed)."""
    from graphopt.quant import ActivationQuantizer
    from graphopt.zoo.resnet import resnet_digits

    torch.manual_seed(0)
    model = resnet_digits().eval()
    x = torch.randn(32, 1, 8, 8)
    common = {"example_inputs": (x[:1],), "calibration_data": [torch.randn(16, 1, 8, 8) for _ in range(2)]}
    plain = graphopt.optimize(model, "x86-int8", **common)
    budget = graphopt.optimize(model, "x86-int8", accuracy_budget=50.0, eval_data=[(x, model(x).argmax(-1))],
                               **common)  # fmt: skip
    assert budget.report.stage("accuracy_budget").stats["kept_fp32"] == 0
    count = lambda r: sum(isinstance(m, ActivationQuantizer) for m in r.model.modules())  # noqa: E731
    assert count(budget) == count(plain)
    with torch.no_grad():
        assert torch.equal(plain.model(x), budget.model(x))
