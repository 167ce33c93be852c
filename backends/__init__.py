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

from graphopt.backends.executorch_backend import (
    ExecuTorchRunner,
    describe_pte,
    export_executorch,
    require_executorch,
)
from graphopt.backends.onnx_backend import OnnxRunner, check_onnx_dtypes, export_onnx, exporter_of
from graphopt.backends.timing import LatencyStats, measure, pin_to_one_core
from graphopt.backends.torchscript_backend import TorchScriptRunner, export_torchscript
from graphopt.errors import ConfigError, UnknownNameError


@dataclass(frozen=True)
class Backend:
    """``lower(model, example_inputs, path, opset=, engine=, dynamic=)`` writes the artifact (each backend
    reads the settings it has); ``check(model)`` refuses, before anything is written, a model the backend
    cannot run; ``runner(path, threads=)`` loads it to run and time; ``describe(path)`` says how the file
    runs (which exporter wrote it, what was fused or delegated), for the report row."""

    name: str
    suffix: str
    runtime: str
    lower: Callable[..., Path]
    runner: Callable[..., Any]
    check: Callable[[nn.Module], None] = lambda model: None
    describe: Callable[[Path], str] = lambda path: "torch.jit"


def _lower_onnx(model: nn.Module, inputs: Any, path: Path, *, opset: int, engine: str, dynamic: Any) -> Path:
    return export_onnx(model, inputs, path, opset=opset, dynamic=dynamic)


def _lower_torchscript(
    model: nn.Module, inputs: Any, path: Path, *, opset: int, engine: str, dynamic: Any
) -> Path:
    return export_torchscript(model, inputs, path, engine=engine)


def _lower_executorch(
    model: nn.Module, inputs: Any, path: Path, *, opset: int, engine: str, dynamic: Any
) -> Path:
    if dynamic is not None and any(dynamic.dims):
        raise ConfigError(
            "the executorch backend writes programs with the example input's shapes; drop dynamic_shapes or "
            "export to ONNX (.onnx), whose artifacts keep them"
        )
    return export_executorch(model, inputs, path)


BACKENDS: dict[str, Backend] = {
    "onnx": Backend(
        "onnx", ".onnx", "onnxruntime", _lower_onnx, OnnxRunner, check_onnx_dtypes, describe=exporter_of
    ),
    "torchscript": Backend("torchscript", ".pt", "torch.jit", _lower_torchscript, TorchScriptRunner),
    "executorch": Backend(
        "executorch",
        ".pte",
        "executorch",
        _lower_executorch,
        ExecuTorchRunner,
        lambda model: require_executorch(),
        describe=describe_pte,
    ),
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
    "ExecuTorchRunner",
    "LatencyStats",
    "OnnxRunner",
    "TorchScriptRunner",
    "backend_for",
    "export_executorch",
    "export_onnx",
    "export_torchscript",
    "measure",
    "pin_to_one_core",
]
