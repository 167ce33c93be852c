"""Capture an ``nn.Module`` into a torch.fx ``GraphModule`` at module level.

Symbolic tracing keeps standard layers (``nn.Conv2d``, ``nn.BatchNorm2d``, ...) as ``call_module`` nodes so
that passes edit modules. Some user code cannot be traced symbolically: Python control flow on a traced
value (``if x.sum() > 0``, ``if x.shape[-1] % 4``), iteration over a tensor, and so on. Instead of giving
up, capture finds the innermost submodule whose ``forward`` raised during tracing, re-traces with that
submodule as an opaque leaf (one ``call_module`` node that passes do not look inside), and repeats.

Where tracing fails at the top or leaves opaque leaves, and example inputs are given, capture goes through
``torch.export`` instead and lifts its ATen graph back to modules (:mod:`graphopt.frontend.capture_export`):
input checks that raise, Hugging Face transformers and detectors come out as whole graphs of ``nn`` layers.
Leaves remain only where torch.export fails too; the leaves, and which capture ran and why, are reported.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from graphopt.errors import CaptureError
from graphopt.frontend.capture_export import DynamicDims, capture_with_export, check_dynamic_dims
from graphopt.frontend.functional_convs import bake_computed_conv_weights
from graphopt.frontend.functional_norms import lift_functional_batch_norms
from graphopt.reporting.notes import Note

#: How many submodules capture may turn into leaves before it gives up.
MAX_LEAVES = 32

#: Keys of ``Capture.why`` (graphopt.reporting.notes): why torch.export ran, or why it could not help.
#: Facts: ``leaves``, the submodules fx left opaque (empty when fx failed at the top); ``error`` for the last.
FX_FORWARD_UNTRACEABLE = "capture:fx_forward_untraceable"
FX_LEFT_LEAVES = "capture:fx_left_leaves"
EXPORT_FAILED_TOO = "capture:export_failed_too"


@dataclass
class Capture:
    """The result of capture: the graph and the submodules that had to stay opaque, with the reason."""

    gm: fx.GraphModule
    leaves: dict[str, str] = field(default_factory=dict)
    #: "torch.fx" or "torch.export", and why torch.export was needed (or why it could not help): a keyed
    #: note (key one of the ``FX_*`` / ``EXPORT_*`` above), empty when fx captured the model whole.
    method: str = "torch.fx"
    why: str = ""


class _LeafFallbackTracer(fx.Tracer):
    """A tracer that treats extra qualified names as leaves and remembers where tracing failed."""

    def __init__(self, extra_leaves: set[str]):
        super().__init__()
        self.extra_leaves = extra_leaves
        self._stack: list[str] = []
        self.failed_in: str | None = None

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return module_qualified_name in self.extra_leaves or super().is_leaf_module(m, module_qualified_name)

    def call_module(
        self, m: nn.Module, forward: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        name = self.path_of_module(m)
        self._stack.append(name)
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception:
            # The first frame to see the exception is the innermost module being traced: remember it only.
            if self.failed_in is None:
                self.failed_in = name
            raise
        finally:
            self._stack.pop()


def capture(
    model: nn.Module,
    example_inputs: tuple[torch.Tensor, ...] | None = None,
    dynamic: DynamicDims | None = None,
) -> Capture:
    """Capture ``model`` (already a private copy, in eval mode) into a module-level GraphModule.

    torch.fx first; torch.export (lifted) when fx leaves opaque leaves or fails at the top and
    ``example_inputs`` are given. Raises :class:`CaptureError` when neither captures the model, and
    :class:`ConfigError` when the model's code fixes a dim ``dynamic`` declares dynamic (checked with
    torch.export on either path: :mod:`graphopt.frontend.capture_export`).
    """
    try:
        traced: Capture | None = trace_with_leaves(model)
        fx_failure = ""
    except CaptureError as exc:
        if example_inputs is None:
            raise
        traced, fx_failure = None, str(exc)
    if traced is not None and (not traced.leaves or example_inputs is None):
        if example_inputs is not None and dynamic is not None:
            check_dynamic_dims(model, example_inputs, dynamic)  # the fx graph would fail at other sizes
        return traced
    leaves = tuple(traced.leaves) if traced is not None else ()
    if traced is not None:
        why = Note(
            FX_LEFT_LEAVES, f"torch.fx left {len(leaves)} opaque leaves ({', '.join(leaves)})", leaves=leaves
        )
    else:
        why = Note(FX_FORWARD_UNTRACEABLE, "torch.fx cannot trace the model's own forward", leaves=())
    try:
        gm = capture_with_export(model, example_inputs, dynamic or DynamicDims())
    except CaptureError as exc:
        if traced is None:
            raise CaptureError(f"{fx_failure} {exc}") from exc  # both reasons: fx's and torch.export's
        text = f"torch.export could not capture it either: {exc}"
        traced.why = Note(EXPORT_FAILED_TOO, text, leaves=leaves, error=str(exc))
        return traced
    return Capture(gm, {}, method="torch.export", why=why)


def trace_with_leaves(model: nn.Module) -> Capture:
    """Symbolic tracing, turning the innermost failing submodule into an opaque leaf until it succeeds.

    Raises :class:`CaptureError` when the model's own ``forward`` (not a submodule) cannot be traced, or
    when more than :data:`MAX_LEAVES` submodules would have to become leaves.
    """
    leaves: dict[str, str] = {}
    while True:
        tracer = _LeafFallbackTracer(set(leaves))
        try:
            graph = tracer.trace(model)
        except Exception as exc:  # tracing user code can raise anything; we re-raise what we cannot fix
            culprit = tracer.failed_in
            if not culprit or culprit in leaves:
                raise CaptureError(
                    f"torch.fx cannot trace the forward of {type(model).__name__} itself "
                    f"({type(exc).__name__}: {exc}). Move the untraceable code (data-dependent control "
                    "flow, iteration over tensors) into a submodule, which capture can keep opaque, or "
                    "replace it with torch.where / torch.cond."
                ) from exc
            if len(leaves) >= MAX_LEAVES:
                raise CaptureError(
                    f"gave up after making {len(leaves)} submodules opaque; the last failure was in "
                    f"{culprit!r}: {exc}"
                ) from exc
            leaves[culprit] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            continue
        name = type(model).__name__
        gm = fx.GraphModule(tracer.root, graph, class_name=name).eval()
        lift_functional_batch_norms(gm, model)  # BatchNorm subclasses calling F.batch_norm (timm)
        bake_computed_conv_weights(gm, model)  # weight-standardized convs (timm's NFNets, BiT)
        return Capture(gm, leaves)


def example_outputs(gm: torch.nn.Module, example_inputs: tuple[torch.Tensor, ...]) -> Any:
    """Run a module on example inputs without autograd."""
    with torch.no_grad():
        return gm(*example_inputs)
