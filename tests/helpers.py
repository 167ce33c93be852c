"""Small models, a runner and a clipping int8 target shared by the tests."""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path

import onnx
import onnxruntime as ort
import torch
import torch.fx as fx
from torch import nn

import graphopt
from graphopt.frontend.capture import capture
from graphopt.passes.insert_fake_quant import InsertFakeQuantOptions
from graphopt.pipeline.pass_base import Pass, PassContext
from graphopt.pipeline.pass_manager import PassManager, PassRecord
from graphopt.pipeline.services import InProcessTraining, RuntimeTiming, Timed
from graphopt.quant import QuantScheme
from graphopt.quant.observers import ObserverConfig
from graphopt.recovery.config import RecoveryConfig
from graphopt.targets import X86_INT8, PassSpec
from graphopt.zoo import randomize_batchnorm


def captured(model: nn.Module) -> fx.GraphModule:
    """Capture ``model`` in eval mode, with trained-looking BN statistics."""
    randomize_batchnorm(model)
    return capture(model.eval()).gm


def run_pass(pass_: Pass, gm: fx.GraphModule, *inputs: torch.Tensor) -> PassRecord:
    """Run one pass through a PassManager (lint, recompile, numeric check of exact passes)."""
    (record,) = PassManager([pass_]).run(gm, PassContext(example_inputs=inputs))
    return record


def outputs(module: nn.Module, *inputs: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return module(*inputs)


def count_modules(gm: fx.GraphModule, kind: type) -> int:
    return sum(
        1 for n in gm.graph.nodes if n.op == "call_module" and isinstance(gm.get_submodule(n.target), kind)
    )


def ort_histogram(path: Path, tmp_path: Path) -> Counter[str]:
    """Op counts of the graph ONNX Runtime actually runs (after all its optimizations) for ``path``."""
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / f"{path.stem}.ort-optimized.onnx")
    options.log_severity_level = 3  # the "hardware-specific optimizations" warning is expected
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return Counter(n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node)


def digits_optimize_data(digits, calibration_samples: int = 256) -> dict[str, object]:
    """The data arguments of ``graphopt.optimize`` for the digits split: example input, calibration
    batches of 32, labelled training batches of 64 and the test batches for evaluation."""
    from graphopt.data.digits import batches

    return {
        "example_inputs": (digits.test_x[:1],),
        "calibration_data": [digits.train_x[i : i + 32] for i in range(0, calibration_samples, 32)],
        "train_data": batches(digits.train_x, digits.train_y, 64),
        "eval_data": digits.test_batches(),
    }


def clipping_int8_target() -> graphopt.Target:
    """x86-int8 with a percentile-90 observer: it clips activations, so post-training int8 loses accuracy."""
    options = InsertFakeQuantOptions(
        scheme=QuantScheme(activations="uint8", reduce_range=True),
        observer=ObserverConfig(method="percentile", percentile=90.0),
    )
    passes = tuple(PassSpec(p.name, options) if p.name == "insert_fake_quant" else p for p in X86_INT8.passes)
    return dataclasses.replace(X86_INT8, name="x86-int8-clipped", passes=passes)


def per_tensor_int8_target() -> graphopt.Target:
    """x86-int8 with one weight scale per tensor (what many NPUs take): a layer with one huge channel
    leaves its other channels a few integer levels."""
    options = InsertFakeQuantOptions(scheme=QuantScheme(per_channel=False))
    passes = tuple(PassSpec(p.name, options) if p.name == "insert_fake_quant" else p for p in X86_INT8.passes)
    return dataclasses.replace(X86_INT8, name="x86-int8-per-tensor", passes=passes)


def fragile_digits_model(digits_model: nn.Module) -> nn.Module:
    """A copy of the digits CNN with one dead channel in features.7 whose folded weights are 300x the
    others: the ReLU after it outputs 0 for every input, so the model computes as before, but with
    per-tensor weight scales that channel leaves every other channel of features.7 a few integer levels."""
    import copy

    model = copy.deepcopy(digits_model).eval()
    with torch.no_grad():
        bn = model.features[8]
        bn.weight[0] *= 300.0
        bn.bias[0] = -1e4
    return model


class FakeTiming(RuntimeTiming):
    """A timing service that answers from ``ms`` (a model's name -> milliseconds, or a function of the name
    and the model) instead of lowering and timing, and records what it was asked to time. Whether a target
    can be timed here is still the real answer (a foreign CPU family cannot)."""

    def __init__(self, ms: Mapping[str, float] | Callable[[str, nn.Module], float]):
        self.ms = ms
        self.asked: list[dict[str, nn.Module]] = []

    def time(self, target, models, example_inputs) -> Timed:
        self.asked.append(dict(models))
        answer = self.ms if callable(self.ms) else (lambda name, model: self.ms[name])
        return Timed("onnxruntime", {name: answer(name, model) for name, model in models.items()})


class RecordingTraining(InProcessTraining):
    """The in-process training service, recording ``what(config)`` for each training pass by its name
    (``desc``: "recover", "qat", ...): what a test asserts instead of monkeypatching the engines."""

    def __init__(self, what: Callable[[RecoveryConfig], object]):
        self.what, self.seen = what, {}

    def fit(self, student, teacher, train, config, *, validation=None, desc="recover"):
        self.seen[desc] = self.what(config)
        return super().fit(student, teacher, train, config, validation=validation, desc=desc)


class MarkerPayload:
    """Unpickling this creates ``marker``, the stand-in for arbitrary code in the load-security tests:
    the file existing afterwards means code from the archive ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))
