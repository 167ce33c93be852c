"""Backends: lowering a GraphModule to a deployable artifact, and runners that load and time artifacts.

Installed as ``graphopt.backends``. Each backend is a :class:`Backend` with an exporter and a runner class;
:func:`backend_for` picks one by name or file suffix.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from graphopt.backends.onnx_backend import OnnxRunner, check_onnx_dtypes, export_onnx
from graphopt.backends.timing import LatencyStats, measure, pin_to_one_core
from graphopt.backends.torchscript_backend import TorchScriptRunner, export_torchscript
from graphopt.errors import ConfigError, UnknownNameError


@dataclass(frozen=True)
class Backend:
    """``lower(model, example_inputs, path, opset=, engine=, dynamic=)`` writes the artifact (each backend
    reads the settings it has); ``check(model)`` refuses, before anything is written, a model the backend
    cannot run; ``runner(path, threads=)`` loads it to run and time."""

    name: str
    suffix: str
    runtime: str
    lower: Callable[..., Path]
    runner: Callable[..., Any]
    check: Callable[[nn.Module], None] = lambda model: None


def _lower_onnx(model: nn.Module, inputs: Any, path: Path, *, opset: int, engine: str, dynamic: Any) -> Path:
    return export_onnx(model, inputs, path, opset=opset, dynamic=dynamic)


def _lower_torchscript(
    model: nn.Module, inputs: Any, path: Path, *, opset: int, engine: str, dynamic: Any
) -> Path:
    return export_torchscript(model, inputs, path, engine=engine)


BACKENDS: dict[str, Backend] = {
    "onnx": Backend("onnx", ".onnx", "onnxruntime", _lower_onnx, OnnxRunner, check_onnx_dtypes),
    "torchscript": Backend("torchscript", ".pt", "torch.jit", _lower_torchscript, TorchScriptRunner),
}


def backend_for(path: str | Path, backend: str | None = None) -> Backend:
    """The backend named ``backend``, or the one whose suffix ``path`` has."""
    if backend is not None:
        if backend not in BACKENDS:
            raise UnknownNameError("backend", backend, BACKENDS)
        return BACKENDS[backend]
    suffix = Path(path).suffix
    for candidate in BACKENDS.values():
        if candidate.suffix == suffix:
            return candidate
    known = ", ".join(f"{b.suffix} ({b.name})" for b in BACKENDS.values())
    raise ConfigError(f"cannot tell the backend from suffix {suffix!r} of {path}; use {known} or backend=")


__all__ = [
    "BACKENDS",
    "Backend",
    "LatencyStats",
    "OnnxRunner",
    "TorchScriptRunner",
    "backend_for",
    "export_onnx",
    "export_torchscript",
    "measure",
    "pin_to_one_core",
]
