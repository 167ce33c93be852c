"""Capture through ``torch.export`` and lift to the module-level IR (:mod:`graphopt.lift`).

Used where symbolic tracing fails or would leave opaque leaves. The batch dimension of every input is
dynamic (a batch-1 example is repeated to 2 for tracing, as torch.export specialises size 1), and so are the
dimensions the caller names in :class:`DynamicDims` (a sequence length): torch.export sees them as symbols,
so the lifted graph reads them with ``x.size(d)`` and runs at any size. A model that fixes a dimension
(``x.view(1, -1)``) is exported with that dimension static instead (``Dim.AUTO`` specialises it), never
refused for it.
"""

from __future__ import annotations

import os
import traceback
from pathlib import Path

import torch
import torch.fx as fx
from torch import nn
from torch.export import Dim

from graphopt.backends.dynamic import DynamicDims, widen_batch
from graphopt.backends.quiet import quiet_export
from graphopt.errors import CaptureError, first_line
from graphopt.lift import lift


def export_program(
    model: nn.Module, example_inputs: tuple[torch.Tensor, ...], dynamic: DynamicDims
) -> torch.export.ExportedProgram:
    """``torch.export`` with the batch dynamic where the model allows (``Dim.AUTO``) and the named dims
    dynamic (``Dim.DYNAMIC``: export infers their ranges, such as a maximum sequence length, and that
    inputs sharing a name share the size; it refuses only a model that fixes one)."""
    widened = widen_batch(example_inputs)
    shapes = []
    for x, dims in zip(widened, dynamic.dims or [{}] * len(widened), strict=True):
        entry = {0: Dim.AUTO, **dict.fromkeys(dims, Dim.DYNAMIC)} if x.dim() > 0 else None
        shapes.append(entry)
    try:
        with quiet_export():
            return torch.export.export(model, widened, dynamic_shapes=tuple(shapes), strict=False)
    except Exception as exc:  # torch.export raises many types: the message is what the user needs
        where = user_frame(exc)
        raise CaptureError(
            f"torch.export cannot capture {type(model).__name__} either ({type(exc).__name__}: "
            f"{first_line(exc)}){f' at {where}' if where else ''}. Data-dependent Python control flow must "
            f"become torch.cond or torch.where, or move out of the model: {_network_hint(model)}"
        ) from exc


def user_frame(exc: BaseException) -> str | None:
    """``file:line: code`` of the innermost frame of the caller's own code in ``exc``'s traceback (not
    torch's, not graphopt's, not the standard library's): the line that could not be captured."""
    import graphopt.backends
    import graphopt.passes

    packages = (torch, graphopt.backends, graphopt.passes)
    ours = (Path(__file__).parent, Path(os.__file__).parent, *(Path(p.__file__).parent for p in packages))
    frames: list[traceback.FrameSummary] = []
    chain: BaseException | None = exc
    visited: set[int] = set()
    while chain is not None and id(chain) not in visited:  # torch re-raises: the user's frames are inside
        visited.add(id(chain))
        frames = traceback.extract_tb(chain.__traceback__) + frames
        chain = chain.__cause__ or chain.__context__
    mine = [
        f for f in frames
        if not f.filename.startswith("<") and not any(Path(f.filename).is_relative_to(root) for root in ours)
    ]  # fmt: skip
    if not mine:
        return None
    frame = mine[-1]
    return f"{Path(frame.filename).name}:{frame.lineno}: {(frame.line or '').strip()}"


def _network_hint(model: nn.Module) -> str:
    """Which submodules to optimize instead: a detector's post-processing (box decoding, NMS) is Python
    over values, while its backbone and heads capture."""
    children = [name for name, child in model.named_children() if any(True for _ in child.parameters())]
    if not children:
        return "optimize the part of the model that computes tensors and run the rest outside"
    return (
        f"optimize the network part ({', '.join(children)}) as one module that returns its raw outputs, "
        "and run the post-processing (decoding, NMS) on those outputs outside it"
    )


def capture_with_export(
    model: nn.Module, example_inputs: tuple[torch.Tensor, ...], dynamic: DynamicDims
) -> fx.GraphModule:
    """The lifted module-level graph of ``model``; :class:`CaptureError` when torch.export fails."""
    return lift(export_program(model, example_inputs, dynamic))
