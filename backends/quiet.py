"""Keep upstream exporter chatter (deprecation warnings, tracer warnings, registry log lines) from the user.

TorchScript is deprecated upstream and every ``torch.jit`` call warns; the dynamo ONNX exporter logs which
torchvision ops it skips; ExecuTorch's and LiteRT's native libraries print from C++. None of that is
actionable for a graphopt user, so backends run inside :func:`quiet_export` (and :func:`quiet_native`).
Real failures still raise.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
import warnings
from collections.abc import Iterator

import torch

#: torchao: imported by transformers' model loading when installed, it logs every CUDA kernel it cannot
#: load on a CPU build ("Failed to load ..._C_cutlass_90a.abi3.so"), and torch's pytree warns about its enums.
_NOISY_ROOTS = ("torch", "onnxscript", "torchao")


def _noisy_loggers() -> list[logging.Logger]:
    """The roots, and every descendant with a level of its own (torch sets some: ``torch._dynamo``);
    the rest inherit. Failures that matter surface as exceptions, not log lines: torch.export logs
    "Error while creating guard" and fake-tensor tracebacks from attempts it then recovers from."""
    named = [
        logger
        for name, logger in logging.root.manager.loggerDict.items()
        if isinstance(logger, logging.Logger) and name.split(".")[0] in _NOISY_ROOTS and logger.level
    ]
    return [logging.getLogger(name) for name in _NOISY_ROOTS] + named


@contextlib.contextmanager
def quiet_export() -> Iterator[None]:
    loggers = _noisy_loggers()
    levels = [lg.level for lg in loggers]
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        for lg in loggers:
            lg.setLevel(logging.CRITICAL)
        try:
            yield
        finally:
            for lg, level in zip(loggers, levels, strict=True):
                lg.setLevel(level)


@contextlib.contextmanager
def quiet_ort() -> Iterator[None]:
    """ONNX Runtime's quantization and transformer-optimizer tools log advice at WARNING on the root logger
    and print progress: quiet them as :func:`quiet_export` quiets the exporters. They also write scratch
    files (``sym_shape_infer_temp.onnx``, ``<uuid>.data``, 90 MB for MiniLM) into the current directory and
    leave them there when a step fails: they run inside a scratch folder, removed afterwards (so paths
    given to them must be absolute)."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with (
            tempfile.TemporaryDirectory(prefix="graphopt-ort-") as scratch,
            quiet_export(),
            contextlib.chdir(scratch),
        ):
            yield
    finally:
        root.setLevel(level)


@contextlib.contextmanager
def quiet_native() -> Iterator[None]:
    """Native libraries that print from C++ (ExecuTorch's CPU probing in ``cpuinfo_utils.cpp``, torchao's
    list of CUDA kernels it cannot load, LiteRT's converter and interpreter through absl and oneDNN) and
    runtimes that warn their API is experimental: send file descriptors 1 and 2 to /dev/null and drop
    warnings for a while. Failures still raise."""
    saved = [os.dup(1), os.dup(2)]
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 1)
        os.dup2(null, 2)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, null):
            os.close(fd)
