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

from graphopt.backends.ethos_u_backend import EthosURunner, check_ethos_u, describe_ethos_u, export_ethos_u
from graphopt.backends.executorch_backend import (
    ExecuTorchRunner,
    describe_pte,
    export_executorch,
    require_executorch,
)
from graphopt.backends.litert_backend import check_litert, describe_tflite, export_litert
from graphopt.backends.litert_runner import LiteRTRunner
from graphopt.backends.onnx_backend import OnnxRunner, check_onnx_dtypes, export_onnx, exporter_of
from graphopt.backends.pte_weights import qc4w_weights
from graphopt.backends.timing import LatencyStats, measure, pin_to_one_core
from graphopt.backends.torchscript_backend import TorchScriptRunner, export_torchscript
from graphopt.backends.xnnpack_int4 import int8_kept_note
from graphopt.errors import ConfigError, UnknownNameError
from graphopt.quant.storage import packed_int4_weights
from graphopt.reporting.notes import Note
from graphopt.targets import BackendSettings


@dataclass(frozen=True)
class Backend:
    """``lower(model, example_inputs, path, opset=, engine=, dynamic=, settings=)`` writes the artifact
    (each backend reads what it needs of ``settings``, the target's :class:`BackendSettings`: LiteRT its
    ``integer_io``, Ethos-U its ``ethos_u``); ``check(model)`` refuses, before anything is written, a model
    the backend cannot run; ``runner(path, threads=)`` loads it to run and time; ``describe(path)`` says how
    the file runs (which exporter wrote it, what was fused or delegated), for the report row;
    ``packed_weights(path)`` counts the layers whose weights the file stores in fewer than 8 bits, read from
    the file (the export note on weights below 8 bits says what it finds); ``layer_note(model)`` is the
    backend's own note on how it stores this model's layers, if it has one to make."""

    name: str
    suffix: str
    runtime: str
    lower: Callable[..., Path]
    runner: Callable[..., Any]
    check: Callable[[nn.Module], None] = lambda model: None
    describe: Callable[[Path], str] = lambda path: "torch.jit"
    packed_weights: Callable[[Path], int] = lambda path: 0
    layer_note: Callable[[nn.Module], Note | None] = lambda model: None


#: What a lowering reads when its caller passes no settings (the calls from before ``settings=``).
DEFAULT_SETTINGS = BackendSettings()


def _lower_onnx(
    model: nn.Module, inputs: Any, path: Path, *, opset: int, engine: str, dynamic: Any,
    settings: BackendSettings = DEFAULT_SETTINGS,
) -> Path:  # fmt: skip
    return export_onnx(model, inputs, path, opset=opset, dynamic=dynamic)


def _lower_torchscript(
    model: nn.Module, inputs: Any, path: Path, *, opset: int, engine: str, dynamic: Any,
    settings: BackendSettings = DEFAULT_SETTINGS,
) -> Path:  # fmt: skip
    return export_torchscript(model, inputs, path, engine=engine)


def _static_shapes_only(dynamic: Any, what: str) -> None:
    """A :class:`ConfigError` when dynamic shapes are asked of a backend whose files keep the example's."""
    if dynamic is not None and any(dynamic.dims):
        raise ConfigError(
            f"{what} the example input's shapes; drop dynamic_shapes or export to ONNX (.onnx), whose "
            "artifacts keep them"
        )


def _lower_executorch(
    model: nn.Module, inputs: Any, path: Path, *, opset: int, engine: str, dynamic: Any,
    settings: BackendSettings = DEFAULT_SETTINGS,
) -> Path:  # fmt: skip
    _static_shapes_only(dynamic, "the executorch backend writes programs with")
    return export_executorch(model, inputs, path)


def _lower_litert(
    model: nn.Module, inputs: Any, path: Path, *, opset: int, engine: str, dynamic: Any,
    settings: BackendSettings = DEFAULT_SETTINGS,
) -> Path:  # fmt: skip
    _static_shapes_only(dynamic, "the litert backend writes .tflite files with")
    return export_litert(model, inputs, path, integer_io=settings.integer_io)


def _lower_ethos_u(
    model: nn.Module, inputs: Any, path: Path, *, opset: int, engine: str, dynamic: Any,
    settings: BackendSettings = DEFAULT_SETTINGS,
) -> Path:  # fmt: skip
    """Vela's compile of the int8 .tflite for ``settings.ethos_u`` (the target's NPU and system)."""
    _static_shapes_only(dynamic, "Ethos-U NPUs run")
    export_ethos_u(model, inputs, path, settings.ethos_u)
    return path


BACKENDS: dict[str, Backend] = {
    "onnx": Backend(
        "onnx",
        ".onnx",
        "onnxruntime",
        _lower_onnx,
        OnnxRunner,
        check_onnx_dtypes,
        describe=exporter_of,
        packed_weights=packed_int4_weights,
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
        packed_weights=qc4w_weights,
        layer_note=int8_kept_note,
    ),
    "litert": Backend(
        "litert", ".tflite", "litert", _lower_litert, LiteRTRunner, check_litert, describe=describe_tflite
    ),
    # After "litert": a bare .tflite path means LiteRT, unless the target's own backend is this one. Which
    # NPU, system and memory mode: the target's BackendSettings.ethos_u (the row's description names them).
    "ethos-u": Backend(
        "ethos-u",
        ".tflite",
        "Vela estimate (Ethos-U NPU)",
        _lower_ethos_u,
        EthosURunner,
        check_ethos_u,
        describe=describe_ethos_u,
    ),
}


def backend_for(path: str | Path, backend: str | None = None, preferred: str | None = None) -> Backend:
    """The backend named ``backend``, or the one whose suffix ``path`` has: ``preferred`` (the target's own
    backend) when its suffix is that one, since several backends write ``.tflite`` (LiteRT, Ethos-U)."""
    if backend is not None:
        if backend not in BACKENDS:
            raise UnknownNameError("backend", backend, BACKENDS)
        return BACKENDS[backend]
    suffix = Path(path).suffix
    if preferred in BACKENDS and BACKENDS[preferred].suffix == suffix:
        return BACKENDS[preferred]
    for candidate in BACKENDS.values():
        if candidate.suffix == suffix:
            return candidate
    known = ", ".join(f"{b.suffix} ({b.name})" for b in BACKENDS.values())
    raise ConfigError(f"cannot tell the backend from suffix {suffix!r} of {path}; use {known} or backend=")


__all__ = [
    "BACKENDS",
    "Backend",
    "EthosURunner",
    "ExecuTorchRunner",
    "LatencyStats",
    "LiteRTRunner",
    "OnnxRunner",
    "TorchScriptRunner",
    "backend_for",
    "export_executorch",
    "export_litert",
    "export_onnx",
    "export_torchscript",
    "measure",
    "pin_to_one_core",
]
