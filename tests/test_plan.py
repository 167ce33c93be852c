"""The plan: one declared list of slots per call, built by rules; optimize() runs exactly it, and lossy
passes run once whatever ``steps`` says."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch
from torch import nn

import graphopt
from graphopt.errors import ConfigError
from graphopt.passes.qat import QAT_DEFAULTS
from graphopt.pipeline.pass_base import Pass, PassResult
from graphopt.pipeline.plan import SLOT_ORDER, make_plan, plan_options
from graphopt.recovery.config import RecoveryConfig
from graphopt.targets import resolve_target


def _slots(plan) -> list[str]:
    return [slot.name for slot in plan.slots]


def test_every_option_adds_its_slot_in_order():
    options = plan_options(prune=0.5, sparsify=0.3, accuracy_budget=1.0, has_train_data=True,
                           early_exit=graphopt.EarlyExitConfig())  # fmt: skip
    plan = make_plan(resolve_target("x86-int8"), options)
    assert _slots(plan) == list(SLOT_ORDER)
    assert [p.name for p in plan.slots[0].passes] == [
        "prune_channels", "reestimate_batchnorm", "probe_int8", "recover"
    ]  # fmt: skip
    assert [p.name for p in plan.slots[-2].passes] == ["qat"]  # int8 calibrated: QAT, not distillation
    assert "prune=0.5" in str(plan) and "accuracy_budget=1 pp" in str(plan)


def test_training_follows_what_the_plan_has():
    fp32 = resolve_target("generic-fp32")
    assert _slots(make_plan(fp32, plan_options(has_train_data=True))) == [
        "cleanup"
    ]  # exact only: no training
    lossy = make_plan(fp32, plan_options(has_train_data=True, sparsify=0.5))
    assert _slots(lossy) == ["cleanup", "sparsify", "training"]
    pruned = make_plan(fp32, plan_options(has_train_data=True, prune=0.5))
    assert _slots(pruned) == ["prune", "cleanup"]  # the prune slot already recovers
    asked = make_plan(fp32, plan_options(has_train_data=True, recovery=RecoveryConfig(epochs=1)))
    assert _slots(asked) == ["cleanup", "training"]


class Custom(Pass):
    name = "custom_test_pass"
    description = "does nothing"
    exact = True

    def call(self, gm):
        return PassResult(gm, modified=False)


def test_slots_land_around_the_callers_own_pipeline():
    passes = ["fold_batchnorm", Custom(), "insert_fake_quant", "calibrate", "fold_batchnorm"]
    options = plan_options(passes=passes, sparsify=0.5, accuracy_budget=1.0, has_train_data=True)
    names = [p.name for p in make_plan(resolve_target("generic-fp32"), options).passes()]
    assert names == ["fold_batchnorm", "custom_test_pass", "sparsify", "insert_fake_quant", "calibrate",
                     "improve_int8", "accuracy_budget", "fold_batchnorm", "qat"]  # fmt: skip


def test_a_budget_without_int8_is_refused():
    with pytest.raises(ConfigError, match="accuracy_budget applies to int8"):
        make_plan(resolve_target("generic-fp32"), plan_options(accuracy_budget=1.0))


def test_steps_repeat_exact_passes_only_so_a_model_is_pruned_and_trained_once():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                          nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4)).eval()  # fmt: skip
    x = torch.randn(8, 3, 8, 8)
    train = [(x, torch.randint(0, 4, (8,)))]
    res = graphopt.optimize(model, example_inputs=(x[:1],), prune=0.5, train_data=train, steps=3,
                            recovery=RecoveryConfig(epochs=1))  # fmt: skip
    stages = [r.stage for r in res.report.stages]
    assert stages.count("prune_channels") == 1 and stages.count("recover") == 1
    assert res.plan is not None and res.plan.has("prune_channels")
    assert sum(m.out_channels for m in res.model.modules() if isinstance(m, nn.Conv2d)) == 16


def test_the_api_imports_no_pass_class_and_places_nothing_by_type():
    source = (Path(graphopt.__file__).parent / "api.py").read_text()
    tree = ast.parse(source)
    imported = [alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                and (node.module or "").startswith("graphopt.passes") for alias in node.names]  # fmt: skip
    assert all(name.startswith("check_") or name.endswith("Config") for name in imported), imported
    assert source.count("isinstance(") <= 2


#: The pipelines the API's keyword splicers built before the planner replaced them (recorded from commit
#: a8a2c6e): every documented combination of a target and options must run the same passes in order.
RECORDED = {
    "generic-fp32": ["fold_batchnorm", "remove_identity", "eliminate_dead_code"],
    "generic-fp32+train": ["fold_batchnorm", "remove_identity", "eliminate_dead_code"],
    "generic-fp32+recovery+train": ["fold_batchnorm", "remove_identity", "eliminate_dead_code", "recover"],
    "arm-fp32+prune": ["prune_channels", "reestimate_batchnorm", "fold_batchnorm", "remove_identity",
                       "eliminate_dead_code"],
    "x86-int8": ["fold_batchnorm", "remove_identity", "eliminate_dead_code", "space_to_depth",
                 "insert_fake_quant", "calibrate"],
    "x86-int8+prune+train": ["prune_channels", "reestimate_batchnorm", "probe_int8", "recover",
                             "fold_batchnorm", "remove_identity", "eliminate_dead_code", "space_to_depth",
                             "insert_fake_quant", "calibrate", "qat"],
    "x86-int8+budget": ["fold_batchnorm", "remove_identity", "eliminate_dead_code", "space_to_depth",
                        "insert_fake_quant", "calibrate", "improve_int8", "accuracy_budget"],
    "x86-int8+sparsify+train": ["fold_batchnorm", "remove_identity", "eliminate_dead_code", "sparsify",
                                "space_to_depth", "insert_fake_quant", "calibrate", "qat"],
    "x86-int8+prune+train+exits": ["prune_channels", "reestimate_batchnorm", "probe_int8", "recover",
                                   "fold_batchnorm", "remove_identity", "eliminate_dead_code",
                                   "space_to_depth", "insert_fake_quant", "calibrate", "qat",
                                   "insert_early_exit"],
    "arm-int8+prune+budget+train": ["prune_channels", "reestimate_batchnorm", "probe_int8", "recover",
                                    "fold_batchnorm", "remove_identity", "eliminate_dead_code",
                                    "insert_fake_quant", "calibrate", "improve_int8", "accuracy_budget",
                                    "qat"],
    "x86-dynamic-int8": ["fold_batchnorm", "remove_identity", "eliminate_dead_code", "quantize_dynamic"],
    "fixed-point-int8+sparsify": ["fold_batchnorm", "remove_identity", "eliminate_dead_code", "sparsify",
                                  "insert_fake_quant", "calibrate"],
}  # fmt: skip


def test_the_int8_probe_declines_the_plans_int8_passes_and_hands_qats_epochs_to_recovery():
    recovery = RecoveryConfig(epochs=2)
    options = plan_options(prune=0.5, accuracy_budget=1.0, has_train_data=True, recovery=recovery)
    probe = next(p for p in make_plan(resolve_target("arm-int8"), options).passes() if p.name == "probe_int8")
    int8 = ("insert_fake_quant", "calibrate", "improve_int8", "accuracy_budget")
    assert probe.options.declines == (*int8, "qat")
    assert probe.options.target is resolve_target("arm-int8") and probe.options.moved_epochs == 2
    default = plan_options(prune=0.5, has_train_data=True)  # QAT's own default epochs move
    probe = next(p for p in make_plan(resolve_target("x86-int8"), default).passes() if p.name == "probe_int8")
    assert probe.options.moved_epochs == QAT_DEFAULTS.epochs
    assert "space_to_depth" in probe.options.declines


@pytest.mark.parametrize(
    "options",
    [
        {"prune": graphopt.PruneConfig(0.5, skip_int8_if_slower=False), "has_train_data": True},
        {"prune": 0.5},  # nothing trains, nothing to move
        {"prune": 0.5, "has_train_data": True, "passes": ["insert_fake_quant", "calibrate"]},
    ],
    ids=["opted-out", "no-train-data", "own-passes"],
)
def test_no_int8_probe_without_a_target_pipeline_that_trains_qat(options):
    assert not make_plan(resolve_target("x86-int8"), plan_options(**options)).has("probe_int8")
    assert not make_plan(resolve_target("generic-fp32"), plan_options(prune=0.5, has_train_data=True)).has(
        "probe_int8"
    )


@pytest.mark.parametrize("label", sorted(RECORDED))
def test_the_planner_runs_what_the_splicers_ran(label):
    target, *flags = label.split("+")
    options = plan_options(
        prune=0.5 if "prune" in flags else 0.0,
        sparsify=0.5 if "sparsify" in flags else 0.0,
        accuracy_budget=1.0 if "budget" in flags else None,
        recovery=RecoveryConfig(epochs=1) if "recovery" in flags else None,
        has_train_data="train" in flags,
        early_exit=graphopt.EarlyExitConfig() if "exits" in flags else None,
    )
    assert [p.name for p in make_plan(resolve_target(target), options).passes()] == RECORDED[label]
