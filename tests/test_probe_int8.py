"""``probe_int8``: after pruning, int8 and QAT run only where int8 is faster; otherwise their epochs go to
recovery, every skipped pass says why, and the fp32 graph ships."""

from __future__ import annotations

import dataclasses
import platform

import onnx
import pytest
import torch

import graphopt
from graphopt.passes.probe_int8 import INT8_FASTER, INT8_NOT_FASTER
from graphopt.pipeline.driver import OptimizeCall, run_call
from graphopt.pipeline.pass_base import PassContext
from graphopt.pipeline.stage_cache import RunParts
from graphopt.quant import is_quantized
from graphopt.recovery import RecoveryConfig
from graphopt.reporting.report import Report
from graphopt.zoo import get_model
from tests.helpers import FakeTiming, RecordingTraining

QAT_AND_INT8 = ("space_to_depth", "insert_fake_quant", "calibrate", "qat")


def _optimize(monkeypatch, timing: dict[str, float] | None, target: str | graphopt.Target = "x86-int8"):
    """resnet_basic pruned 0.5 with one epoch of recovery and one of QAT; ``timing`` is what a fake timing
    service answers for the probe (None: measured in the runtime). Returns the result, the epochs each
    training pass was given, and what the probe timed (model name -> quantized)."""
    training = RecordingTraining(lambda config: config.epochs)
    fake = FakeTiming(timing) if timing is not None else None
    model, inputs = get_model("resnet_basic").build()
    data = [(torch.randn(16, *inputs[0].shape[1:]), torch.randint(0, 10, (16,)))]
    res = run_call(OptimizeCall(
        model, target, inputs, calibration_data=[data[0][0]], train_data=data, prune=0.5,
        recovery=RecoveryConfig(epochs=1, quiet=True, val_fraction=0.0), timing=fake, training=training,
    ))  # fmt: skip
    trained = training.seen
    timed = {name: is_quantized(m) for asked in (fake.asked if fake else []) for name, m in asked.items()}
    return res, trained, timed


def test_int8_slower_skips_int8_and_qat_and_recovery_trains_their_epochs(monkeypatch, tmp_path):
    res, trained, timed = _optimize(monkeypatch, {"int8": 0.5, "fp32": 0.3})
    assert timed == {"fp32": False, "int8": True}  # the candidates: cleaned-up fp32, quantized int8
    assert trained == {"recover": 2}  # its own epoch and QAT's
    for stage in QAT_AND_INT8:
        row = res.report.stage(stage)
        assert row.modified is False and row.stats == {"skipped:int8_not_faster": 1}
    probe = res.report.stage("probe_int8")
    assert (probe.stats["probe_int8_ms"], probe.stats["probe_fp32_ms"], probe.stats["int8_faster"]) == (
        0.5, 0.3, 0
    )  # fmt: skip
    facts = res.report.note(INT8_NOT_FASTER).facts
    assert (facts["int8_ms"], facts["fp32_ms"], facts["runtime"]) == (0.5, 0.3, "onnxruntime")
    moved = (facts["train_pass"], facts["moved_epochs"], set(facts["declined"]))
    assert moved == ("recover", 1, set(QAT_AND_INT8))
    assert not is_quantized(res.model) and res.fp32_model is None
    path = res.export(tmp_path / "m.onnx")
    assert not any(i.data_type == onnx.TensorProto.INT8 for i in onnx.load(str(path)).graph.initializer)


def test_a_custom_target_is_probed_in_its_own_runtime(monkeypatch):
    """A replace of a preset under a new name is no preset: the plan hands the probe the Target itself."""
    custom = dataclasses.replace(graphopt.TARGETS["x86-int8"], name="my-x86-int8")
    res, trained, timed = _optimize(monkeypatch, {"int8": 0.2, "fp32": 0.3}, target=custom)
    assert timed == {"fp32": False, "int8": True} and trained == {"recover": 1, "qat": 1}
    assert res.report.stage("probe_int8").stats["int8_faster"] == 1 and is_quantized(res.model)


def test_int8_faster_runs_the_plan_as_written(monkeypatch):
    res, trained, _ = _optimize(monkeypatch, {"int8": 0.2, "fp32": 0.3})
    assert trained == {"recover": 1, "qat": 1}
    assert res.report.stage("qat").modified and is_quantized(res.model)
    assert res.report.stage("probe_int8").stats["int8_faster"] == 1
    assert res.report.note(INT8_FASTER).facts["runtime"] == "onnxruntime"
    assert INT8_NOT_FASTER not in res.report.note_keys()


def test_the_probe_times_both_candidates_in_onnx_runtime(monkeypatch):
    res, trained, _ = _optimize(monkeypatch, None)
    stats = res.report.stage("probe_int8").stats
    assert stats["probe_int8_ms"] > 0 and stats["probe_fp32_ms"] > 0
    faster = stats["probe_int8_ms"] < stats["probe_fp32_ms"]
    assert stats["int8_faster"] == int(faster)
    assert is_quantized(res.model) == faster and ("qat" in trained) == faster
    assert trained["recover"] == (1 if faster else 2)


@pytest.mark.skipif(platform.machine() != "x86_64", reason="checks the probe's skip for a foreign ISA")
def test_an_arm_target_cannot_be_timed_here_so_int8_and_qat_run(monkeypatch):
    res, trained, timed = _optimize(monkeypatch, {"int8": 9.0, "fp32": 1.0}, target="arm-int8")
    assert timed == {} and trained == {"recover": 1, "qat": 1}
    assert res.report.stage("probe_int8").stats == {"skipped:foreign_isa": 1}
    assert is_quantized(res.model)


def test_only_this_machines_cpu_family_and_any_run_here():
    from graphopt.targets import isa_runs_here

    other = "aarch64" if platform.machine() == "x86_64" else "x86_64"
    assert isa_runs_here("any") and isa_runs_here(platform.machine())
    assert not isa_runs_here(other)


def test_a_resumed_run_keeps_what_the_probe_declined():
    model, inputs = get_model("mlp").build()
    gm = torch.fx.symbolic_trace(model)
    context = PassContext(inputs)
    context.declined["qat"] = "int8_not_faster"
    context.epochs_added["recover"] = 3

    class Holder:
        model, trained_after = None, False

    state = RunParts(Report(model="mlp", target="x86-int8"), context, Holder(), []).capture(gm)
    fresh = PassContext(inputs)
    RunParts(Report(model="mlp", target="x86-int8"), fresh, Holder(), []).restore(state)
    assert fresh.declined == {"qat": "int8_not_faster"} and fresh.epochs_added == {"recover": 3}
