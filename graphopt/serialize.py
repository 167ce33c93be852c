"""Save and load an optimized model without unpickling arbitrary code.

The GraphModule is exported with ``torch.export`` and written as a ``.pt2`` archive: the graph as serialized
ATen ops, the weights as tensors, and a small JSON header. Loading rebuilds a module from that description
(``torch.export.load(...).module()``); no user class is imported or unpickled, so a pruned model whose
shapes changed round-trips as it is. The batch dimension is exported as dynamic when the graph allows it.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from graphopt.backends.dynamic import dynamic_batch_example
from graphopt.backends.quiet import quiet_export
from graphopt.errors import SerializationError

FORMAT = "graphopt.pt2"
FORMAT_VERSION = 1
_HEADER = "graphopt.json"


def save(model: nn.Module, example_inputs: tuple[torch.Tensor, ...], path: str | Path, **header: str) -> Path:
    """Write ``model`` to ``path`` (``.pt2``)."""
    path = Path(path)
    if path.suffix != ".pt2":
        raise SerializationError(f"graphopt saves to a .pt2 file, got {path.name!r}")
    try:
        with quiet_export():
            program = _export(model, example_inputs)
            meta = {"format": FORMAT, "version": FORMAT_VERSION, **header}
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.export.save(program, str(path), extra_files={_HEADER: json.dumps(meta)})
    except Exception as exc:  # torch.export raises many types; all mean the same to the user
        raise SerializationError(
            f"could not save the model with torch.export ({type(exc).__name__}: {str(exc).splitlines()[0]}); "
            "data-dependent Python control flow must be expressed with torch.cond to be saved"
        ) from exc
    return path


def load(path: str | Path) -> nn.Module:
    """Load a model written by :func:`save` (or ``OptimizeResult.save``)."""
    path = Path(path)
    if not path.is_file():
        raise SerializationError(f"no such file: {path}")
    extra = {_HEADER: ""}
    try:
        with quiet_export():
            program = torch.export.load(str(path), extra_files=extra)
    except Exception as exc:  # a corrupt or foreign archive
        raise SerializationError(
            f"{path} is not a graphopt .pt2 archive ({type(exc).__name__}: {exc})"
        ) from exc
    try:
        meta = json.loads(extra[_HEADER] or "{}")
    except json.JSONDecodeError:
        meta = {}
    if meta.get("format") != FORMAT:
        raise SerializationError(f"{path} was not written by graphopt.save (no {_HEADER} header)")
    if meta.get("version", 0) > FORMAT_VERSION:
        raise SerializationError(
            f"{path} has format version {meta['version']}; this graphopt reads <= {FORMAT_VERSION}"
        )
    return program.module()


def _export(model: nn.Module, example_inputs: tuple[torch.Tensor, ...]) -> torch.export.ExportedProgram:
    widened, dynamic = dynamic_batch_example(example_inputs)
    try:
        return torch.export.export(model, widened, dynamic_shapes=dynamic, strict=False)
    except Exception:  # a graph that fixes the batch size (e.g. x.view(1, -1)) exports with static shapes
        return torch.export.export(model, example_inputs, strict=False)
