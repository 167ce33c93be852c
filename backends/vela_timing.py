"""Vela's estimate as the run's timing service, for Ethos-U targets where no NPU can be timed.

:class:`VelaTiming` implements :class:`graphopt.pipeline.services.TimingService`: each model is lowered as
an Ethos-U target ships it (a fully int8 ``.tflite`` with int8 I/O through the LiteRT backend, then Vela for
the configured accelerator) and costed by Vela's cycle estimate. Nothing runs: the numbers are ESTIMATES,
and :class:`Timed` says so in its runtime.

An NPU runs int8 only, and Vela's estimate leaves out the operators it puts on the CPU (they cost 0 cycles
in it). A model that does not run entirely on the NPU (any fp32 model, or an int8 one with a CPU fallback)
is therefore costed ``math.inf``: the latency guard, ``probe_int8`` and exit costing never prefer it to a
graph that runs on the NPU, instead of preferring it for the work it hides.
"""

from __future__ import annotations

import importlib.util
import math
import tempfile
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from graphopt.backends.litert_backend import REQUIRED, export_litert
from graphopt.backends.vela import EthosUConfig, VelaEstimate, compile_for_ethos_u
from graphopt.pipeline.services import Timed
from graphopt.quant import is_quantized
from graphopt.targets import Target


class VelaTiming:
    """A :class:`~graphopt.pipeline.services.TimingService` answering with Vela's estimate for ``config``
    (module docstring). ``estimates`` keeps the last call's full estimates by model name (cycles, memory,
    NPU / CPU operators) for a report."""

    def __init__(self, config: EthosUConfig | None = None):
        self.config = config or EthosUConfig()
        self.estimates: dict[str, VelaEstimate | None] = {}

    def unavailable(self, target: Target) -> str | None:
        missing = [name for name in (*REQUIRED, "ethosu") if importlib.util.find_spec(name) is None]
        if missing:
            return f"Vela's estimate needs {', '.join(missing)}: pip install 'graphopt[litert]'"
        return None

    def time(
        self, target: Target, models: Mapping[str, nn.Module], example_inputs: tuple[torch.Tensor, ...]
    ) -> Timed:
        self.estimates = {name: self.estimate(model, example_inputs) for name, model in models.items()}
        ms = {name: estimate_ms(e) for name, e in self.estimates.items()}
        return Timed(f"Vela estimate for {self.config.accelerator}", ms)

    def estimate(self, model: nn.Module, example_inputs: tuple[torch.Tensor, ...]) -> VelaEstimate | None:
        """Vela's compile of ``model`` as the target ships it; None for an fp32 model (no NPU runs it)."""
        if not is_quantized(model):
            return None
        with tempfile.TemporaryDirectory(prefix="graphopt-vela-") as scratch:
            path = export_litert(model, example_inputs, Path(scratch) / "m.tflite", integer_io=True)
            # In process: bytes the LiteRT converter has just written and export_litert has checked.
            return compile_for_ethos_u(path.read_bytes(), self.config, isolate=False)


def estimate_ms(estimate: VelaEstimate | None) -> float:
    """The estimated milliseconds per inference; ``inf`` unless every operator runs on the NPU."""
    if estimate is None or not estimate.all_on_npu:
        return math.inf
    return estimate.inference_ms
