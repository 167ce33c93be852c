"""Capture an ``nn.Module`` into a torch.fx ``GraphModule`` at module level.

Symbolic tracing keeps standard layers (``nn.Conv2d``, ``nn.BatchNorm2d``, ...) as ``call_module`` nodes so
that passes edit modules. Some user code cannot be traced symbolically: Python control flow on a traced
value (``if x.sum() > 0``, ``if x.shape[-1] % 4``), iteration over a tensor, and so on. Instead of giving
up, capture finds the innermost submodule whose ``forward`` raised during tracing, re-traces with that
submodule as an opaque leaf (one ``call_module`` node that passes do not look inside), and repeats. The
leaves are reported, so the user knows which parts were not optimized.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from graphopt.errors import CaptureError

#: How many submodules capture may turn into leaves before it gives up.
MAX_LEAVES = 32


@dataclass
class Capture:
    """The result of capture: the graph and the submodules that had to stay opaque, with the reason."""

    gm: fx.GraphModule
    leaves: dict[str, str] = field(default_factory=dict)


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


def capture(model: nn.Module) -> Capture:
    """Trace ``model`` (already a private copy, in eval mode) into a GraphModule.

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
        return Capture(fx.GraphModule(tracer.root, graph, class_name=name).eval(), leaves)


def example_outputs(gm: torch.nn.Module, example_inputs: tuple[torch.Tensor, ...]) -> Any:
    """Run a module on example inputs without autograd."""
    with torch.no_grad():
        return gm(*example_inputs)
