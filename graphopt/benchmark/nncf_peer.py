"""NNCF's post-training quantization (Intel's Neural Network Compression Framework), run the way its users run
it for ONNX Runtime: the unoptimized model exported to ONNX, ``nncf.quantize`` on that ``onnx.ModelProto``
with the same calibration samples graphopt calibrates on, and the QDQ file it returns run in ORT.

Two presets:

- ``default``: ``nncf.quantize(model, nncf.Dataset(samples), subset_size=len(samples))`` and nothing else.
  NNCF 3.4's defaults: preset ``PERFORMANCE`` (symmetric int8 weights, per channel, and symmetric int8
  activations, unsigned after a ReLU; ``MIXED`` would make activations asymmetric), min-max statistics,
  ``FastBiasCorrection`` (each layer's bias shifted by the mean error its quantized weights add on the
  calibration samples), target device ``ANY``;
- ``bias_correction``: the same with ``fast_bias_correction=False``: NNCF's full ``BiasCorrection``, which
  measures each layer's output error with the layers before it already quantized (slower).

Why the ONNX model and not the torch one: NNCF's torch backend runs its fake-quantizers through a C++
extension it compiles on first use with ``torch.utils.cpp_extension`` (8 minutes here on two loaded cores,
past its own 60 s limit, so the peer failed); its torch.fx backend is marked experimental by NNCF and its
ONNX export kept the convolution weights in fp32 (only activations got Q/DQ pairs), so ORT would not run
int8 convolutions. The ONNX backend needs neither and stores weights as int8 initializers behind
DequantizeLinear. Its placement targets OpenVINO, though, and where ORT's QDQ fusion does not take it the op
runs in fp32 on dequantized inputs: on the random-weight ``mobilenet_fashion`` 11 of its 19 convs became
QLinearConv in ORT 1.32; the stem and the five 1x1 expand convs with their ReLU6 stayed fp32 FusedConv, the
two projection convs feeding a residual Add fp32 Conv, and the Adds and the classifier's Gemm fp32
(graphopt's x86-int8 file of the same model fuses all 19 convs, both Adds and the Gemm). The row is timed as
it is: that is what an NNCF user deploying to ORT gets.

NNCF sends usage telemetry (Google Analytics, through ``openvino-telemetry``) unless told not to; the switch
its own CI uses is the ``NNCF_CI`` environment variable, read once when ``nncf`` is imported (and only by
its telemetry): :func:`import_nncf` sets it for that import only, so a benchmark never reports its user.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import ModuleType
from typing import Literal

import onnx
import torch
from torch import nn

from graphopt.backends import export_onnx
from graphopt.errors import ConfigError

NncfPreset = Literal["default", "bias_correction"]
#: What each preset ran, said in its row's note.
NNCF_PRESETS: dict[NncfPreset, str] = {
    "default": "nncf.quantize defaults on the ONNX model: preset PERFORMANCE (symmetric s8 per-channel "
    "weights, symmetric 8-bit activations), min-max, fast bias correction; graphopt's calibration",
    "bias_correction": "nncf.quantize on the ONNX model, preset PERFORMANCE, full BiasCorrection "
    "(fast_bias_correction=False); graphopt's calibration",
}
#: The environment variable NNCF reads at import to turn its telemetry off (nncf.definitions).
_NO_TELEMETRY = "NNCF_CI"


def import_nncf() -> ModuleType:
    """``nncf``, imported with its telemetry off when this is the first import (an earlier import by the
    caller keeps the caller's choice). ``ImportError`` when it is not installed."""
    if "nncf" in sys.modules:
        import nncf

        return nncf
    before = os.environ.get(_NO_TELEMETRY)
    os.environ[_NO_TELEMETRY] = "1"
    try:
        import nncf
    finally:
        if before is None:
            del os.environ[_NO_TELEMETRY]
        else:
            os.environ[_NO_TELEMETRY] = before
    return nncf


@contextlib.contextmanager
def _quiet_nncf() -> Iterator[None]:
    """NNCF logs its steps at INFO and draws progress bars on stdout; neither is the benchmark's output."""
    logger = logging.getLogger("nncf")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        logger.setLevel(level)


def nncf_quantize(
    model: nn.Module,
    example_inputs: tuple[torch.Tensor, ...],
    calibration: Sequence[tuple[torch.Tensor, ...]],
    path: str | Path,
    preset: NncfPreset = "default",
) -> Path:
    """Quantize ``model`` with NNCF's PTQ at ``preset`` on ``calibration`` (every sample used); write the QDQ
    ONNX file to ``path``. Raises what NNCF raises (the caller records a peer's failure)."""
    if preset not in NNCF_PRESETS:
        raise ConfigError(f"preset must be one of {', '.join(NNCF_PRESETS)}, got {preset!r}")
    if not calibration:
        raise ConfigError("NNCF's PTQ needs at least one calibration sample")
    nncf = import_nncf()
    path = Path(path).absolute()
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = onnx.load(str(export_onnx(model.eval(), example_inputs, Path(tmp) / "fp32.onnx")))
    stored = {init.name for init in fp32.graph.initializer}  # old IRs list initializers as inputs too
    names = [i.name for i in fp32.graph.input if i.name not in stored]
    feeds = [
        {name: x.detach().numpy() for name, x in zip(names, sample, strict=True)} for sample in calibration
    ]
    with _quiet_nncf():
        quantized = nncf.quantize(
            fp32, nncf.Dataset(feeds), subset_size=len(feeds), fast_bias_correction=preset == "default"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(quantized, str(path))
    return path
