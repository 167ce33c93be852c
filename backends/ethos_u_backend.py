"""Ethos-U NPU artifacts: graphopt's fully int8 ``.tflite`` compiled by Vela, costed by Vela's estimate.

The artifact is Vela's output ``.tflite`` (the NPU's command stream in an ``ethos-u`` custom operator), what
TFLite Micro on the Cortex-M loads. It is built in two steps:

1. the LiteRT backend writes the fully int8 file with int8 I/O (:func:`export_litert`; float I/O would
   leave its ``QUANTIZE`` / ``DEQUANTIZE`` on the CPU);
2. Vela compiles it for the configured accelerator (:mod:`graphopt.backends.vela`); every conv and linear
   must land on the NPU (:func:`require_on_npu`), other operators Vela leaves on the CPU are named, with
   Vela's reason, in the file's description and so in the report row.

No NPU runs here, so :class:`EthosURunner` runs the int8 graph Vela compiled, in LiteRT's interpreter (the
same TFLite int8 arithmetic; the NPU's rounding of requantization may differ by a step), and its
:meth:`~EthosURunner.time` answers with Vela's estimate, not a measurement. The int8 graph is found by the
Vela output's content hash in this process's record of what it compiled (:data:`COMPILED`): a Vela file
from elsewhere cannot be run here, and the runner says so.

An fp32 model has no NPU form: :func:`check_ethos_u` refuses it for export; the latency guard's fp32 twin
is costed ``inf`` without lowering (:meth:`EthosURunner.cost_without_lowering`), what compiling it as it is
(every operator on the CPU) would give (:func:`estimate_ms`).
"""

from __future__ import annotations

import hashlib
import math
import tempfile
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch import Tensor, nn

from graphopt.artifacts.destination import write_bytes
from graphopt.backends.litert_backend import check_litert, export_litert
from graphopt.backends.litert_runner import LiteRTRunner, check_tflite_header
from graphopt.backends.tflite_file import summarize
from graphopt.backends.timing import LatencyStats
from graphopt.backends.vela import (
    EthosUConfig,
    VelaEstimate,
    compile_for_ethos_u,
    estimate_ms,
    require_on_npu,
    require_vela,
)
from graphopt.errors import ExportError
from graphopt.quant import is_quantized


@dataclass(frozen=True)
class Compiled:
    """One Vela compile: the int8 graph it took and its estimate."""

    source: bytes
    estimate: VelaEstimate


#: The Vela outputs this process wrote, by SHA-256 of their bytes (the last few only: each holds two
#: copies of a model's weights).
COMPILED: OrderedDict[str, Compiled] = OrderedDict()
KEEP_COMPILED = 16


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def check_ethos_u(model: nn.Module) -> None:
    """Refuse, before anything is written, what no Ethos-U NPU runs."""
    require_vela()
    check_litert(model)
    if not is_quantized(model):
        raise ExportError(
            "an Ethos-U NPU runs int8 only, and this model is fp32: optimize it for an ethos-u*-int8 target "
            "with calibration_data, or export it to .tflite for a CPU (backend='litert')"
        )


def export_ethos_u(
    model: nn.Module, example_inputs: tuple[Tensor, ...], path: str | Path, config: EthosUConfig
) -> VelaEstimate:
    """Write Vela's compile of ``model`` for ``config`` to ``path`` (module docstring); its estimate."""
    path = Path(path)
    with tempfile.TemporaryDirectory(prefix="graphopt-vela-") as scratch:
        source = export_litert(model, example_inputs, Path(scratch) / "m.tflite", integer_io=True)
        data = source.read_bytes()
    # In process: bytes the LiteRT converter has just written and export_litert has checked.
    return compile_tflite(data, path, config, conv_on_cpu_ok=not is_quantized(model), isolate=False)


def compile_tflite(
    data: bytes,
    path: str | Path,
    config: EthosUConfig,
    *,
    conv_on_cpu_ok: bool = False,
    isolate: bool = True,
) -> VelaEstimate:
    """Vela's compile of the int8 ``.tflite`` ``data`` for ``config``, written to ``path`` and recorded so
    that :class:`EthosURunner` can run and cost it; a conv or linear left on the CPU is an
    :class:`ExportError` unless ``conv_on_cpu_ok`` (a peer's file, whose CPU operators its row names).
    ``isolate``: Vela runs in a child process (:func:`compile_for_ethos_u`) unless graphopt wrote ``data``.
    """
    path = Path(path)
    estimate = compile_for_ethos_u(data, config, isolate=isolate)
    if not conv_on_cpu_ok:
        require_on_npu(estimate)
    COMPILED[_digest(estimate.model)] = Compiled(data, estimate)
    while len(COMPILED) > KEEP_COMPILED:
        COMPILED.popitem(last=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes(path, estimate.model, "Vela-compiled model")
    return estimate


def _compiled(path: Path) -> Compiled:
    check_tflite_header(path)
    found = COMPILED.get(_digest(path.read_bytes()))
    if found is None:
        raise ExportError(
            f"{path} is not a Vela output this process compiled: a Vela-compiled .tflite runs only on an "
            "Ethos-U NPU. Run or cost the int8 .tflite Vela took instead (LiteRTRunner, compile_for_ethos_u)"
        )
    return found


def describe_ethos_u(path: Path) -> str:
    """Vela's summary of the compile (estimate, NPU / CPU operators, memory) and the file's operators."""
    compiled = _compiled(Path(path))
    return f"{compiled.estimate.summary()}; file ops: {summarize(Path(path).read_bytes(), path).histogram()}"


class EthosURunner:
    """Runs the int8 graph a Vela output was compiled from (in LiteRT) and costs it by Vela's estimate.

    ``npu_share_only``: a graph with operators on the CPU is costed by Vela's own number, the NPU's work
    alone (CPU operators at 0 cycles), instead of ``inf``; for a peer (LiteRT's own int8 flow compiled by
    Vela), whose row names the CPU operators beside the number."""

    def __init__(self, path: str | Path, *, threads: int = 1, npu_share_only: bool = False):
        self.path = Path(path)
        self.npu_share_only = npu_share_only
        compiled = _compiled(self.path)
        self.estimate = compiled.estimate
        #: The int8 source lives as long as the runner: the interpreter maps the file it loads.
        self._scratch = tempfile.TemporaryDirectory(prefix="graphopt-vela-")
        try:
            source = Path(self._scratch.name) / "source.tflite"
            source.write_bytes(compiled.source)
            self._litert = LiteRTRunner(source, threads=threads)
        except BaseException:  # the folder goes now, not whenever the half-built runner is collected
            self._scratch.cleanup()
            raise

    @staticmethod
    def cost_without_lowering(model: nn.Module) -> float | None:
        """``inf`` for a model with no int8 layers (the latency guard's fp32 twin), None otherwise: Vela
        would put its every operator on the CPU and :func:`estimate_ms` would answer ``inf`` anyway, after a
        LiteRT conversion and a compile (seconds) that change nothing."""
        return None if is_quantized(model) else math.inf

    def run(self, *inputs: Tensor | np.ndarray) -> list[np.ndarray]:
        return self._litert.run(*inputs)

    run_batched = run

    def bind(self, inputs: tuple[Tensor, ...]) -> Callable[[], object]:
        return self._litert.bind(inputs)

    def estimated_ms(self) -> float:
        """Vela's estimated milliseconds per inference (``inf`` unless every operator is on the NPU, or
        ``npu_share_only``)."""
        return self.estimate.inference_ms if self.npu_share_only else estimate_ms(self.estimate)

    def time(self, *inputs: Tensor | np.ndarray, warmup: int = 10, repeat: int = 100) -> LatencyStats:
        """Vela's estimate as latency statistics (one value: an estimate has no spread)."""
        ms = self.estimated_ms()
        return LatencyStats(median_ms=ms, p10_ms=ms, p90_ms=ms, min_ms=ms, runs=1)
