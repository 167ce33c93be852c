"""Things a benchmark times: a report row plus a way to run it, on ONNX Runtime, TorchScript or eager PyTorch.

Every candidate runs the same inputs; :meth:`Candidate.bind` prepares them once (numpy feeds for ORT, a
channels-last copy for the channels-last peer) so the timed call is the runtime's call and nothing else.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from graphopt.backends import OnnxRunner, TorchScriptRunner
from graphopt.ir.graph import deep_copy

from .schema import BenchRow


class EagerRunner:
    """An nn.Module run eagerly under ``torch.no_grad``, optionally in channels-last memory format."""

    def __init__(self, model: nn.Module, *, channels_last: bool = False):
        self.channels_last = channels_last
        self.model = deep_copy(model).eval()
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)

    def prepare(self, inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        if not self.channels_last:
            return inputs
        return tuple(x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x for x in inputs)

    def run(self, *inputs: torch.Tensor) -> Any:
        with torch.no_grad():
            return self.model(*self.prepare(tuple(torch.as_tensor(x) for x in inputs)))

    def bind(self, inputs: tuple[torch.Tensor, ...]) -> Callable[[], object]:
        prepared = self.prepare(inputs)

        def call() -> object:
            with torch.no_grad():
                return self.model(*prepared)

        return call


Runner = OnnxRunner | TorchScriptRunner | EagerRunner


@dataclass
class Candidate:
    row: BenchRow
    runner: Runner
    exits: bool = False  # the model has early exits: scored and timed one held-out sample at a time
    #: The row's accuracy was measured while ``optimize`` ran, by this candidate's own runtime on the bench's
    #: held-out data (a stage by the stage reporter, in eager PyTorch; the artifact by its export): the
    #: accuracy pass leaves it as it is instead of scoring 10,000 images again.
    accuracy_measured: bool = False

    @property
    def timed(self) -> bool:
        """Whether this candidate's latency is measured (stages that run like the one before are not)."""
        return self.row.runtime != "-"

    def run(self, *inputs: torch.Tensor) -> Any:
        return self.runner.run(*inputs)

    def bind(self, inputs: tuple[torch.Tensor, ...]) -> Callable[[], object]:
        """A no-argument call of this candidate on ``inputs``, with the inputs converted once."""
        runner = self.runner
        if hasattr(runner, "bind"):  # EagerRunner, ExecuTorchRunner
            return runner.bind(inputs)
        if isinstance(runner, OnnxRunner):
            feeds = {n: x.detach().numpy() for n, x in zip(runner.input_names, inputs, strict=True)}
            session = runner.session
            return lambda: session.run(None, feeds)
        tensors = [torch.as_tensor(x) for x in inputs]
        module = runner.module

        def call() -> object:
            with torch.no_grad():
                return module(*tensors)

        return call


def as_tensors(outputs: Any) -> list[torch.Tensor]:
    """Outputs of any runner as a flat list of tensors."""
    if isinstance(outputs, torch.Tensor):
        return [outputs]
    if isinstance(outputs, np.ndarray):
        return [torch.from_numpy(outputs)]
    return [t for o in outputs for t in as_tensors(o)]
