"""The tools graphopt is compared with, run the way their users run them.

ONNX Runtime's ``quantize_static`` is what most people use for int8 on ORT today. Two presets:

- ``default``: what a user gets from ``quantize_static(model_in, model_out, reader)`` with no options in
  onnxruntime 1.32: QDQ format, s8 activations, s8 per-tensor weights, min-max calibration.
- ``best``: the settings FINDINGS.md measured fastest and most accurate: u8 activations, s8 per-channel
  weights, and ``reduce_range`` exactly where this CPU needs it (x86 without VNNI;
  :mod:`graphopt.reporting.cpu`), so the peer is tuned for the CPU it runs on, as graphopt's own default
  target is.

Both start from the unoptimized model exported to ONNX and ``quant_pre_process`` (the documented first
step: shape inference and ORT's own fusions, such as BatchNorm into Conv).
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import onnxruntime as ort
import torch
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process
from torch import nn

from graphopt.backends import export_onnx
from graphopt.backends.quiet import quiet_ort
from graphopt.data.dims import DynamicDims
from graphopt.errors import ConfigError
from graphopt.reporting.cpu import host_int8_choice

OrtPreset = Literal["default", "best"]


class _Reader(CalibrationDataReader):
    def __init__(self, names: list[str], batches: Sequence[tuple[torch.Tensor, ...]]):
        self._feeds: Iterator[dict[str, np.ndarray]] = iter(
            {name: x.detach().numpy() for name, x in zip(names, batch, strict=True)} for batch in batches
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)


def ort_quantize_static(
    model: nn.Module,
    example_inputs: tuple[torch.Tensor, ...],
    calibration: Sequence[tuple[torch.Tensor, ...]],
    path: str | Path,
    preset: OrtPreset = "best",
    reduce_range: bool | None = None,
    dynamic: DynamicDims | None = None,
) -> Path:
    """Quantize ``model`` with ORT's ``quantize_static`` at ``preset``; write the QDQ file to ``path``.
    ``reduce_range`` (``best`` only) defaults to what this CPU needs; ``dynamic`` names the dimensions
    besides the batch that vary (a sequence length)."""
    if preset not in ("default", "best"):
        raise ConfigError(f"preset must be 'default' or 'best', got {preset!r}")
    path = Path(path).absolute()  # ORT's tools run in a scratch folder (quiet_ort)
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = export_onnx(model.eval(), example_inputs, Path(tmp) / "fp32.onnx", dynamic=dynamic)
        prepared = Path(tmp) / "prepared.onnx"
        with quiet_ort():
            try:
                quant_pre_process(str(fp32), str(prepared))
            except Exception:  # ORT raises a bare Exception; a user then skips the step
                # ORT's symbolic shape inference gives up on some symbolic sizes (a transformer's
                # Min(512, seq)); its documented way out is to skip that step and keep ONNX's own.
                quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
        names = [i.name for i in ort.InferenceSession(str(prepared)).get_inputs()]
        options = {} if preset == "default" else {
            "activation_type": QuantType.QUInt8,
            "weight_type": QuantType.QInt8,
            "per_channel": True,
            "reduce_range": host_int8_choice().reduce_range if reduce_range is None else reduce_range,
        }  # fmt: skip
        with quiet_ort():
            quantize_static(
                str(prepared), str(path), _Reader(names, calibration), quant_format=QuantFormat.QDQ, **options
            )
    return path
