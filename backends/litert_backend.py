"""Lowering to LiteRT (``.tflite``, TensorFlow Lite's successor) with ``litert_torch``, fp32 and int8.

LiteRT runs on Android, Raspberry Pi-class Linux and (as TFLite Micro) on microcontrollers; its int8
``.tflite`` is also what Arm's Vela compiles for Ethos-U NPUs (:mod:`graphopt.backends.vela`).

- fp32: ``litert_torch.convert(model, example_inputs)``. The file keeps PyTorch's NCHW inputs (one
  ``TRANSPOSE`` to LiteRT's NHWC at the input), so it is called exactly like the model.
- int8 reuses graphopt's own calibration (QAT, accuracy budget and power-of-two scales included) instead of
  recalibrating: the IR is rewritten into the form the converter keeps fully integer
  (:mod:`graphopt.backends.litert_form`), and converted with a PT2E ``QuantConfig``, which only switches the
  converter to its STATIC mode (quantize / dequantize pairs folded into int8 tensors; nothing is
  recalibrated). The file must be fully integer: int8 weights in every conv and linear, no float tensor and no
  ``QUANTIZE`` / ``DEQUANTIZE`` between input and output; anything else is an :class:`ExportError` naming the
  ops. Its weights, biases and scales are graphopt's.
- I/O: the int8 file takes and returns int8 tensors (their scale and zero point are in the interpreter's
  ``get_input_details()``); by default float32 I/O is added back as one ``QUANTIZE`` at each input and one
  ``DEQUANTIZE`` at each output (:func:`graphopt.backends.tflite_file.with_float_io`), so the file is
  called like the model. ``integer_io=True`` (a target's ``BackendSettings.integer_io``) keeps int8 I/O
  (what a microcontroller wants: its sensor data is already integer);
  :class:`~graphopt.backends.litert_runner.LiteRTRunner` quantizes float inputs itself for either.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from graphopt.artifacts.destination import write_bytes, write_failure
from graphopt.backends.litert_form import litert_form
from graphopt.backends.quiet import quiet_export, quiet_native
from graphopt.backends.tflite_file import TfliteSummary, summarize, with_float_io
from graphopt.early_exit.measure import has_exits
from graphopt.errors import ConfigError, ExportError, first_line
from graphopt.ir.extensions import DynamicInt8Linear, QuantizedLayer
from graphopt.quant import is_quantized

INSTALL = "pip install 'graphopt[litert]'  (litert-torch and ethos-u-vela beside torch 2.13.0)"
#: The modules the backend needs: the converter and the interpreter.
REQUIRED = ("litert_torch", "ai_edge_litert")
#: Float layer types that have an int8 form in graphopt; left float in an int8 model, the converter would
#: quantize them itself.
FLOAT_LAYERS = (nn.Conv1d, nn.Conv2d, nn.ConvTranspose2d, nn.Linear)
#: Ops that are the file's own integer I/O boundary once float I/O is added; inside the graph they would
#: mean a float island.
BOUNDARY_OPS = ("QUANTIZE", "DEQUANTIZE")


def require_litert() -> None:
    """A :class:`ConfigError` naming the extra when litert-torch or its interpreter is not installed."""
    missing = [name for name in REQUIRED if importlib.util.find_spec(name) is None]
    if missing:
        raise ConfigError(f"the litert backend needs {', '.join(missing)}: {INSTALL}")


def check_litert(model: nn.Module) -> None:
    """Refuse, before anything is written, what the backend cannot lower."""
    require_litert()
    if has_exits(model):
        raise ExportError(
            "early-exit models are not lowered to LiteRT yet (one .tflite per stage is future work): export "
            "them to ONNX (.onnx) or ExecuTorch (.pte)"
        )
    dynamic = [name for name, m in model.named_modules() if isinstance(m, DynamicInt8Linear)]
    if dynamic:
        raise ExportError(
            f"dynamic int8 layers ({', '.join(dynamic[:3])}) have no fully integer LiteRT form: export them "
            "to ONNX (.onnx), or use a static int8 target (litert-int8) for .tflite"
        )
    kept = float_layers(model) if is_quantized(model) else []
    if kept:
        raise ExportError(
            f"layers kept in fp32 in an int8 model ({', '.join(kept[:3])}) have no place in a fully integer "
            ".tflite: LiteRT's converter would quantize them with scales of its own. Quantize every conv and "
            "linear, or export to ONNX (.onnx), which keeps mixed precision"
        )


def float_layers(model: nn.Module) -> list[str]:
    """The plain float convs and linears of ``model``, outside graphopt's int8 layers (which keep their
    float original inside)."""
    int8 = [name for name, m in model.named_modules() if isinstance(m, QuantizedLayer)]
    return [
        name
        for name, m in model.named_modules()
        if isinstance(m, FLOAT_LAYERS) and not any(name.startswith(f"{q}.") for q in int8)
    ]


@contextlib.contextmanager
def quiet_litert() -> Iterator[None]:
    """litert_torch draws progress bars unless ``LITERT_TORCH_SHOW_PROGRESS`` says no, its converter and
    interpreter log from C++ (absl, oneDNN notices) to file descriptor 2, and absl's Python logger warns:
    none of it is actionable; failures still raise. The variable comes back as it was."""
    saved = os.environ.get("LITERT_TORCH_SHOW_PROGRESS")
    absl = logging.getLogger("absl")
    level = absl.level
    os.environ["LITERT_TORCH_SHOW_PROGRESS"] = "n"
    absl.setLevel(logging.ERROR)
    try:
        with quiet_export(), quiet_native():
            yield
    finally:
        absl.setLevel(level)
        if saved is None:
            os.environ.pop("LITERT_TORCH_SHOW_PROGRESS", None)
        else:
            os.environ["LITERT_TORCH_SHOW_PROGRESS"] = saved


def export_litert(
    model: nn.Module,
    example_inputs: tuple[Tensor, ...],
    path: str | Path,
    *,
    integer_io: bool = False,
) -> Path:
    """Lower ``model`` to a ``.tflite`` at ``path`` (module docstring); nothing is written on failure.
    ``integer_io``: an int8 file keeps int8 inputs and outputs (their scale and zero point in the file)
    instead of float32 ones; an fp32 file has float I/O either way."""
    check_litert(model)
    path = Path(path)
    quantized = is_quantized(model)
    form = litert_form(model) if quantized else copy.deepcopy(model).eval()
    data = _convert(form, example_inputs, quantized, path)
    if quantized:
        require_fully_integer(summarize(data))
        if not integer_io:
            data = with_float_io(data)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_bytes(path, data, "LiteRT model")


def _convert(model: nn.Module, example_inputs: tuple[Tensor, ...], quantized: bool, path: Path) -> bytes:
    """The converted flatbuffer; int8 forms through the converter's STATIC mode. A full disk where the
    converter writes its scratch files is the disk's fault, and the error says so."""
    try:
        with quiet_litert(), torch.no_grad():
            import litert_torch

            config = static_quant_config() if quantized else None
            converted = litert_torch.convert(model, tuple(example_inputs), quant_config=config)
            return bytes(converted.model_content())
    except Exception as exc:  # torch.export, the MLIR converter and flatbuffers raise many types
        failure = write_failure(exc, path, "LiteRT model")
        raise failure or ExportError(
            f"LiteRT conversion failed ({type(exc).__name__}: {first_line(exc)}); export to ONNX (.onnx) "
            "or ExecuTorch (.pte) instead"
        ) from exc


def static_quant_config() -> Any:
    """litert_torch's PT2E ``QuantConfig``: per-channel symmetric weights, int8 activations. Given a graph
    that already holds graphopt's quantize / dequantize pairs it calibrates nothing; it selects the STATIC
    conversion that folds them into int8 tensors."""
    from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config
    from litert_torch.quantize.quant_config import QuantConfig

    quantizer = PT2EQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    return QuantConfig(pt2e_quantizer=quantizer)


def require_fully_integer(summary: TfliteSummary) -> None:
    """An :class:`ExportError` naming the ops that would compute in float in an int8 file."""
    floats = sorted(set(summary.float_ops) | {op for op in summary.ops if op in BOUNDARY_OPS})
    weights = sorted({t for t in summary.weight_types if t != "INT8"})
    if floats or weights:
        what = ", ".join(floats) + (f"; conv / linear weights in {', '.join(weights)}" if weights else "")
        raise ExportError(
            f"the int8 .tflite is not fully integer: {what} compute in float. A layer graphopt left in "
            "fp32 (accuracy budget) or an op outside TFLite's int8 kernels does this; quantize every layer, "
            "or export to ONNX (.onnx), which keeps mixed precision"
        )


def describe_tflite(path: Path) -> str:
    """How a ``.tflite`` runs: integer or float, its I/O types and its operators (read, not run)."""
    summary = summarize(Path(path).read_bytes(), path)
    integer = not summary.float_ops or set(summary.float_ops) <= set(BOUNDARY_OPS)
    io = "/".join(sorted(set(summary.input_types) | set(summary.output_types))).lower()
    kind = "fully int8" if integer else "float"
    return f"litert_torch ({kind}, {io} I/O; ops: {summary.histogram()})"


def pt2e_litert(
    model: nn.Module, example_inputs: tuple[Tensor, ...], calibration: list[tuple[Tensor, ...]], path: Path
) -> Path:
    """LiteRT's own int8 flow, the peer graphopt's ``.tflite`` is measured against: ``torch.export`` ->
    torchao ``prepare_pt2e`` with litert_torch's ``PT2EQuantizer`` (per-channel symmetric) -> calibration
    -> ``convert_pt2e(fold_quantize=False)`` -> ``litert_torch.convert`` in STATIC mode (int8 I/O). The
    calibration inputs have the example inputs' shapes (the graph is captured with them)."""
    require_litert()
    try:
        with quiet_litert(), torch.no_grad():
            import litert_torch
            from torchao.quantization.pt2e import move_exported_model_to_eval
            from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

            config = static_quant_config()
            captured = torch.export.export(copy.deepcopy(model).eval(), tuple(example_inputs)).module()
            prepared = prepare_pt2e(captured, config.pt2e_quantizer)  # type: ignore[arg-type]
            for inputs in calibration:
                prepared(*inputs)
            converted = move_exported_model_to_eval(convert_pt2e(prepared, fold_quantize=False))  # else
            # the converter warns "converted in training mode" on the root logger
            data = litert_torch.convert(converted, tuple(example_inputs), quant_config=config).model_content()
    except Exception as exc:  # torch.export, torchao and the MLIR converter raise many types
        raise ExportError(
            f"LiteRT's PT2E int8 flow failed ({type(exc).__name__}: {first_line(exc)}); calibration inputs "
            "must have the example inputs' shapes"
        ) from exc
    return write_bytes(path, bytes(data), "LiteRT model")
