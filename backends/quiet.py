"""Keep upstream exporter chatter (deprecation warnings, tracer warnings, registry log lines) from the user.

TorchScript is deprecated upstream and every ``torch.jit`` call warns; the dynamo ONNX exporter logs which
torchvision ops it skips. None of that is actionable for a graphopt user, so backends run inside
:func:`quiet_export`. Real failures still raise.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Iterator

import torch

_NOISY_ROOTS = ("torch", "onnxscript")


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
