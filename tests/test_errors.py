"""Bad input gets a GraphoptError subclass that names the cause and what to do."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import graphopt
from graphopt import (
    CaptureError,
    ConfigError,
    ExportError,
    GraphoptError,
    InvalidInputError,
    InvalidModelError,
    SerializationError,
    UnknownNameError,
)
from graphopt.zoo import ValueControlFlowNet, get_model


@pytest.fixture
def model_and_input():
    return get_model("resnet_basic").build()


def test_not_a_module():
    with pytest.raises(InvalidModelError, match=r"must be a torch\.nn\.Module, got function"):
        graphopt.optimize(lambda x: x, example_inputs=(torch.randn(1),))


def test_scripted_module_is_refused(model_and_input):
    model, inputs = model_and_input
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit is deprecated upstream and says so
        scripted = torch.jit.trace(model, inputs)
    with pytest.raises(InvalidModelError, match="TorchScript module"):
        graphopt.optimize(scripted, example_inputs=inputs)


def test_example_inputs_missing(model_and_input):
    model, _ = model_and_input
    with pytest.raises(InvalidInputError, match=r"example_inputs is required.*torch\.randn"):
        graphopt.optimize(model)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ([torch.randn(1, 3, 32, 32)], "must be a tuple of tensors, got list"),
        ((), "empty tuple"),
        ((torch.randn(1, 3, 32, 32).numpy(),), r"example_inputs\[0\] must be a torch\.Tensor, got ndarray"),
    ],
)
def test_example_inputs_of_wrong_type(model_and_input, bad, message):
    model, _ = model_and_input
    with pytest.raises(InvalidInputError, match=message):
        graphopt.optimize(model, example_inputs=bad)


def test_example_inputs_of_wrong_shape(model_and_input):
    model, _ = model_and_input
    with pytest.raises(InvalidInputError, match=r"fails on example_inputs of shape \(1, 5, 32, 32\)"):
        graphopt.optimize(model, example_inputs=(torch.randn(1, 5, 32, 32),))


def test_single_tensor_is_accepted(model_and_input):
    model, inputs = model_and_input
    assert graphopt.optimize(model, example_inputs=inputs[0]).example_inputs[0].shape == inputs[0].shape


def test_unknown_target_lists_known(model_and_input):
    model, inputs = model_and_input
    with pytest.raises(UnknownNameError, match=r"unknown target 'arm-int4'; known targets: ") as raised:
        graphopt.optimize(model, target="arm-int4", example_inputs=inputs)
    listed = str(raised.value).split("known targets: ", 1)[1].rstrip(".").split(", ")
    assert listed == sorted(graphopt.TARGETS)  # every preset, in order


def test_unknown_pass_lists_known(model_and_input):
    model, inputs = model_and_input
    with pytest.raises(UnknownNameError, match=r"unknown pass 'fold_bn'; known passes: .*fold_batchnorm"):
        graphopt.optimize(model, example_inputs=inputs, passes=["fold_bn"])


def test_passes_must_be_a_sequence(model_and_input):
    model, inputs = model_and_input
    with pytest.raises(ConfigError, match="sequence of pass names"):
        graphopt.optimize(model, example_inputs=inputs, passes="fold_batchnorm")


def test_unavailable_capabilities_say_so(model_and_input):
    model, inputs = model_and_input
    with pytest.raises(ConfigError, match=r"must be None or a graphopt\.EarlyExitConfig"):
        graphopt.optimize(model, example_inputs=inputs, early_exit=object())


class RootControlFlow(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        if x.sum() > 0:  # in the root forward: no submodule to make opaque
            return self.fc(x)
        return x


def test_capture_failure_in_root_forward():
    with pytest.raises(
        CaptureError, match=r"cannot trace the forward of RootControlFlow itself.*torch\.cond"
    ):
        graphopt.optimize(RootControlFlow(), example_inputs=(torch.randn(1, 4),))


def test_value_dependent_control_flow_cannot_be_exported(tmp_path):
    model = ValueControlFlowNet().eval()
    res = graphopt.optimize(model, example_inputs=(torch.randn(1, 3, 8, 8),))
    assert list(res.report.leaves) == ["gate"]
    with pytest.raises(ExportError, match=r"ONNX export failed.*torch\.cond"):
        res.export(tmp_path / "m.onnx")
    with pytest.raises(SerializationError, match=r"torch\.cond"):
        res.save(tmp_path / "m.pt2")
    # tracing bakes one branch into TorchScript: caught by probing inputs that take the other branch
    with pytest.raises(ExportError, match=r"torchscript artifact disagrees.*torch\.cond"):
        res.export(tmp_path / "m.pt")


def test_unknown_artifact_suffix(model_and_input, tmp_path):
    model, inputs = model_and_input
    res = graphopt.optimize(model, example_inputs=inputs)
    with pytest.raises(ConfigError, match=r"cannot tell the backend from suffix '\.bin'.*\.onnx \(onnx\)"):
        res.export(tmp_path / "m.bin")
    with pytest.raises(UnknownNameError, match="unknown backend 'tflite'"):
        res.export(tmp_path / "m.bin", backend="tflite")


def test_eval_data_must_be_labelled(model_and_input):
    model, inputs = model_and_input
    expected = r"eval_data must be an iterable of \(inputs, labels\) batches.*item 0 is Tensor"
    with pytest.raises(InvalidInputError, match=expected):
        graphopt.optimize(model, example_inputs=inputs, eval_data=[inputs[0]])


def test_every_error_is_a_graphopt_error():
    for cls in (
        CaptureError,
        ConfigError,
        ExportError,
        InvalidInputError,
        InvalidModelError,
        SerializationError,
    ):
        assert issubclass(cls, GraphoptError)
    assert issubclass(InvalidModelError, TypeError) and issubclass(ConfigError, ValueError)
