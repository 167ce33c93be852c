"""Lowering to TorchScript (trace + freeze) and running the result with ``torch.jit.load``.

TorchScript is deprecated upstream, so everything ``torch.jit`` touches stays in this module and runs
inside :func:`~graphopt.backends.quiet.quiet_export`. int8 models run PyTorch's quantized kernels
(:mod:`graphopt.backends.torch_int8`), not the float simulation of the IR. Tracing records one path through
Python control flow; shape-dependent branches are fine at the traced shape, value-dependent ones are baked
in, which is why the exported artifact is compared with the model before it is handed back.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
import torch.fx as fx
from torch.utils._pytree import tree_flatten

from graphopt.artifacts.destination import write_bytes
from graphopt.backends.quiet import quiet_export
from graphopt.backends.timing import LatencyStats, measure, torch_threads
from graphopt.backends.torch_int8 import Engine, lower_to_quantized_kernels, quantized_engine
from graphopt.errors import ExportError, first_line
from graphopt.ir.extensions import EarlyExitNetwork, ScriptableEarlyExit
from graphopt.quant import is_quantized

#: The extra file of a TorchScript artifact naming its quantized engine.
ENGINE_FILE = "graphopt_quantized_engine"


def export_torchscript(
    model: torch.nn.Module,
    example_inputs: tuple[torch.Tensor, ...],
    path: str | Path,
    *,
    engine: Engine = "x86",
) -> Path:
    """Trace, freeze and save ``model`` to ``path``. An int8 GraphModule is first lowered onto PyTorch's
    quantized kernels for ``engine`` (``x86`` or ``qnnpack``), recorded in the file for the runner.

    The archive is built in memory and written by Python: torch's C++ zip writer aborts the process
    (SIGABRT) when the disk fills under it, where a Python write raises an error graphopt can explain."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    extra: dict[str, str] = {}
    exits = any(isinstance(m, EarlyExitNetwork) for m in model.modules())
    if exits and is_quantized(model):
        raise ExportError(
            "TorchScript export of an int8 model with early exits is not available: export it to ONNX "
            "(.onnx), or use an fp32 target for TorchScript"
        )
    if isinstance(model, fx.GraphModule) and is_quantized(model):
        model, extra = lower_to_quantized_kernels(model, engine), {ENGINE_FILE: engine}
    archive = io.BytesIO()
    try:
        with quiet_export(), torch.no_grad(), quantized_engine(engine):
            frozen = torch.jit.freeze(_script_or_trace(model.eval(), example_inputs))
            torch.jit.save(frozen, archive, _extra_files=extra)
    except Exception as exc:  # torch.jit raises many types; all mean the same to the user
        raise ExportError(f"TorchScript export failed ({type(exc).__name__}: {first_line(exc)})") from exc
    return write_bytes(path, archive.getvalue(), "TorchScript artifact")


def _script_or_trace(
    model: torch.nn.Module, example_inputs: tuple[torch.Tensor, ...]
) -> torch.jit.ScriptModule:
    """Trace, except a network with early exits: its branch depends on values, so it is scripted."""
    networks = [m for m in model.modules() if isinstance(m, EarlyExitNetwork)]
    if networks:
        return torch.jit.script(ScriptableEarlyExit(networks[0]).eval())
    # strict=False: a dict output (a Hugging Face ModelOutput) is traced as a dict, whose keys are fixed.
    return torch.jit.trace(model, example_inputs, check_trace=False, strict=False)


class TorchScriptRunner:
    """Loads a TorchScript file and runs or times it with a fixed number of intra-op threads.

    A TorchScript file is a program (its code runs when called), so this runner is for artifacts graphopt
    wrote itself; a model from elsewhere comes in as a ``.pt2`` through :func:`graphopt.load`.
    """

    def __init__(self, path: str | Path, *, threads: int = 1):
        self.path = Path(path)
        self.threads = threads
        extra = {ENGINE_FILE: ""}
        try:
            with quiet_export():
                torch.jit.load(str(path), _extra_files=extra)  # reads the engine the int8 weights were for
                #: The quantized engine of an int8 artifact ("x86", "qnnpack"), None for fp32.
                engine = extra[ENGINE_FILE]
                self.engine = (engine.decode() if isinstance(engine, bytes) else engine) or None
                with quantized_engine(self.engine or torch.backends.quantized.engine):
                    self.module = torch.jit.load(str(path)).eval()
        except Exception as exc:  # torch.jit.load raises RuntimeError, ValueError...; all mean the same here
            raise ExportError(
                f"{self.path} is not a loadable TorchScript program ({type(exc).__name__}: "
                f"{first_line(exc)}); give a complete .pt file that graphopt exported"
            ) from exc

    def run(self, *inputs: torch.Tensor | np.ndarray) -> list[np.ndarray]:
        tensors = [torch.as_tensor(x) for x in inputs]
        with quiet_export(), torch.no_grad(), torch_threads(self.threads):
            out = self.module(*tensors)
        leaves, _ = tree_flatten(out)  # tuples, and dicts (ModelOutput) in key order
        return [t.numpy() for t in leaves]

    def time(self, *inputs: torch.Tensor | np.ndarray, warmup: int = 10, repeat: int = 100) -> LatencyStats:
        tensors = [torch.as_tensor(x) for x in inputs]

        def call() -> object:
            return self.module(*tensors)

        with quiet_export(), torch.no_grad(), torch_threads(self.threads):
            return measure(call, warmup=warmup, repeat=repeat)
