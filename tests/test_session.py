"""The run environment: a frozen Session (the Target object, the data, the teacher, the services) and a
mutable RunState, seen by passes through PassContext; fake services injected through the driver."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import pytest
import torch
from torch import nn

import graphopt
from graphopt.data.labelled import LabelledTensors
from graphopt.pipeline.driver import OptimizeCall, run_call
from graphopt.pipeline.pass_base import Pass, PassContext, PassResult
from graphopt.pipeline.services import InProcessTraining, RuntimeTiming
from graphopt.pipeline.session import RunState, Services, Session
from graphopt.recovery import RecoveryConfig
from graphopt.targets import GENERIC_FP32, X86_INT8
from graphopt.zoo import get_model
from tests.helpers import FakeTiming

MY_TARGET = dataclasses.replace(GENERIC_FP32, name="my-generic-fp32")


class SeesTarget(Pass):
    name, description, exact = "sees_target", "Records the run's target.", False
    seen: ClassVar[list] = []

    def call(self, gm):
        type(self).seen.append(self.context.target)
        return PassResult(gm, modified=False)


class RecordingTraining(InProcessTraining):
    """The in-process engines, recording what each training pass asked for (and training nothing)."""

    def __init__(self):
        self.fits: list[tuple[str, int, object, object]] = []
        self.heads = 0

    def fit(self, student, teacher, train, config, *, validation=None, desc="recover"):
        self.fits.append((desc, config.epochs, type(train), validation))
        return super().fit(student, teacher, train, dataclasses.replace(config, epochs=1, max_steps=1),
                           validation=validation, desc=desc)  # fmt: skip


def test_a_pass_reads_the_target_object_of_a_custom_target():
    SeesTarget.seen.clear()
    model = nn.Linear(4, 3).eval()
    run_call(OptimizeCall(model, MY_TARGET, (torch.randn(1, 4),), passes=[SeesTarget()]))
    assert SeesTarget.seen == [MY_TARGET] and SeesTarget.seen[0] is MY_TARGET


def test_a_training_pass_asks_the_training_service_the_driver_was_given():
    training = RecordingTraining()
    model, inputs = get_model("mlp").build()
    data = [(torch.randn(16, *inputs[0].shape[1:]), torch.randint(0, 10, (16,)))]
    validation = [(torch.randn(8, *inputs[0].shape[1:]), torch.randint(0, 10, (8,)))]
    result = run_call(OptimizeCall(
        model, "generic-fp32", inputs, train_data=data, validation_data=validation,
        passes=[graphopt.passes.recover.Recover(RecoveryConfig(epochs=3, quiet=True))], training=training,
    ))  # fmt: skip
    ((desc, epochs, kind, held_out),) = training.fits
    assert (desc, epochs, kind) == ("recover", 3, LabelledTensors)
    assert isinstance(held_out, LabelledTensors) and len(held_out) == 8  # the run's validation data, as read
    assert result.report.stage("recover").modified


def test_a_custom_int8_target_probes_times_and_trains_through_the_services():
    """A ``replace`` of a preset under a new name: the probe times it (no lookup by name) and recovery and
    QAT train through the training service."""
    custom = dataclasses.replace(X86_INT8, name="my-x86-int8")
    timing, training = FakeTiming({"int8": 0.2, "fp32": 0.3}), RecordingTraining()
    model, inputs = get_model("mlp").build()
    data = [(torch.randn(16, *inputs[0].shape[1:]), torch.randint(0, 10, (16,)))]
    result = run_call(OptimizeCall(
        model, custom, inputs, calibration_data=[data[0][0]], train_data=data, prune=0.5,
        recovery=RecoveryConfig(epochs=1, quiet=True, val_fraction=0.0), timing=timing, training=training,
    ))  # fmt: skip
    assert result.report.stage("probe_int8").stats["int8_faster"] == 1
    assert [desc for desc, *_ in training.fits] == ["recover", "qat"]
    assert result.target is custom


def test_the_keyword_context_builds_a_session_of_its_own():
    x = (torch.randn(1, 4),)
    context = PassContext(x, train_data=[(torch.randn(6, 4), torch.tensor([0, 1, 2, 0, 1, 2]))])
    assert isinstance(context.session, Session) and isinstance(context.state, RunState)
    assert context.target is GENERIC_FP32 and isinstance(context.timing, RuntimeTiming)
    assert isinstance(context.train_data, LabelledTensors) and context.data_read == {"train_data"}
    context.notes.append("a note")
    nested = PassContext.of(context.session)  # the same session, a state of its own
    assert nested.train_data is context.train_data and nested.notes == []
    with pytest.raises(dataclasses.FrozenInstanceError):
        context.session.target = MY_TARGET  # type: ignore[misc]
    services = Services(timing=FakeTiming({}))
    assert isinstance(services.training, InProcessTraining)


def test_probe_int8_refuses_a_target_given_by_name():
    from graphopt.passes.probe_int8 import ProbeInt8Options

    with pytest.raises(graphopt.ConfigError, match=r"must be a graphopt\.Target"):
        ProbeInt8Options(target="x86-int8")  # type: ignore[arg-type]
