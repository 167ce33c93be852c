"""The graphopt error hierarchy.

Every failure a user can cause surfaces as a :class:`GraphoptError` subclass whose message names the cause
and what to do about it. Subclasses also derive from the builtin exception a Python user would expect
(``TypeError`` for a wrong argument type, ``ValueError`` for a bad value) so generic handlers keep working.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def first_line(exc: BaseException) -> str:
    """The first line of an exception from a library, without terminal colour codes: what goes into a
    graphopt message (torch.onnx colours its errors; a log file or a JSON report should not get escapes)."""
    text = _ANSI_ESCAPE.sub("", str(exc)).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class GraphoptError(Exception):
    """Base class of every error graphopt raises on purpose."""


class ConfigError(GraphoptError, ValueError):
    """An option, target or pass configuration is invalid."""


class UnknownNameError(ConfigError):
    """A target, pass, backend or model name is not registered."""

    def __init__(self, kind: str, name: object, known: Iterable[str]):
        self.kind, self.name, self.known = kind, name, sorted(known)
        plural = f"{kind}es" if kind.endswith("s") else f"{kind}s"
        super().__init__(f"unknown {kind} {name!r}; known {plural}: {', '.join(self.known)}")


class InvalidModelError(GraphoptError, TypeError):
    """The object given as a model is not a ``torch.nn.Module``."""


class InvalidInputError(GraphoptError, ValueError):
    """``example_inputs`` (or other data) is missing, of the wrong type, or does not fit the model."""


class CaptureError(GraphoptError, RuntimeError):
    """The model could not be captured into a torch.fx graph, even with opaque leaf modules."""


class PassError(GraphoptError, RuntimeError):
    """A pass failed, violated its contract, or (for an exact pass) changed the model's outputs."""

    def __init__(self, pass_name: str, already_run: Iterable[str], cause: str):
        self.pass_name, self.already_run = pass_name, list(already_run)
        ran = ", ".join(self.already_run) or "none"
        super().__init__(f"pass {pass_name!r} failed: {cause} (passes already run: {ran})")


class ExportError(GraphoptError, RuntimeError):
    """Lowering to a backend artifact failed or produced an artifact that disagrees with the model."""


class SerializationError(GraphoptError, RuntimeError):
    """Saving or loading an optimized model failed."""


class WriteError(GraphoptError, OSError):
    """A report, plot, IR dump or cache file could not be written (no space, a read-only folder, ...); the
    message names the file, the cause and what to do, and nothing partial was left in its place."""


class TrainingDivergedError(GraphoptError, RuntimeError):
    """Recovery training produced a non-finite loss; the model was restored to its state before training."""

    def __init__(self, cause: str):
        super().__init__(
            f"{cause}: training stopped and the model was restored to its state before the stage. "
            "Lower the learning rate (RecoveryConfig(optimizer=OptimizerConfig(lr=...))) or check the data."
        )


class RuntimeSetupError(GraphoptError, RuntimeError):
    """A foreign runtime for ``graphopt verify`` (emulated aarch64, older onnxruntime) could not be set up."""
