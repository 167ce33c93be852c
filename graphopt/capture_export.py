"""Capture through ``torch.export`` and lift to the module-level IR (:mod:`graphopt.lift`).

Used where symbolic tracing fails or would leave opaque leaves. The batch dimension of every input is
dynamic (a batch-1 example is repeated to 2 for tracing, as torch.export specialises size 1), and so are the
dimensions the caller names in :class:`DynamicDims` (a sequence length): torch.export sees them as symbols,
so the lifted graph reads them with ``x.size(d)`` and runs at any size. A model that fixes a dimension
(``x.view(1, -1)``) is exported with that dimension static instead (``Dim.AUTO`` specialises it), never
refused for it.
"""

from __future__ import annotations

import torch
import torch.fx as fx
from torch import nn
from torch.export import Dim

from graphopt.backends.dynamic import DynamicDims
from graphopt.backends.quiet import quiet_export
from graphopt.errors import CaptureError, first_line
from graphopt.lift import lift


def export_program(
    model: nn.Module, example_inputs: tuple[torch.Tensor, ...], dynamic: DynamicDims
) -> torch.export.ExportedProgram:
    """``torch.export`` with the batch dynamic where the model allows (``Dim.AUTO``) and the named dims
    dynamic (``Dim.DYNAMIC``: export infers their ranges, such as a maximum sequence length, and that
    inputs sharing a name share the size; it refuses only a model that fixes one)."""
    widened = tuple(torch.cat([x, x]) if x.dim() > 0 and x.shape[0] == 1 else x for x in example_inputs)
    shapes = []
    for x, dims in zip(widened, dynamic.dims or [{}] * len(widened), strict=True):
        entry = {0: Dim.AUTO, **dict.fromkeys(dims, Dim.DYNAMIC)} if x.dim() > 0 else None
        shapes.append(entry)
    try:
        with quiet_export():
            return torch.export.export(model, widened, dynamic_shapes=tuple(shapes), strict=False)
    except Exception as exc:  # torch.export raises many types: the message is what the user needs
        raise CaptureError(
            f"torch.export cannot capture {type(model).__name__} either ({type(exc).__name__}: "
            f"{first_line(exc)}). Data-dependent Python control flow must become torch.cond or torch.where, "
            "or move out of the model (pass the submodule that computes the network instead)"
        ) from exc


def capture_with_export(
    model: nn.Module, example_inputs: tuple[torch.Tensor, ...], dynamic: DynamicDims
) -> fx.GraphModule:
    """The lifted module-level graph of ``model``; :class:`CaptureError` when torch.export fails."""
    program = export_program(model, example_inputs, dynamic)
    gm = lift(program)
    gm.meta["capture"] = "torch.export"
    return gm
