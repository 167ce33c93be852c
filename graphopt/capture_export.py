"""Capture through ``torch.export`` and lift to the module-level IR (:mod:`graphopt.lift`).

Used where symbolic tracing fails or would leave opaque leaves. The batch dimension of every input is
dynamic (a batch-1 example is repeated to 2 for tracing, as torch.export specialises size 1), and so are the
dimensions the caller names in :class:`DynamicDims` (a sequence length): torch.export sees them as symbols,
so the lifted graph reads them with ``x.size(d)`` and runs at any size. A model that fixes a dimension
(``x.view(1, -1)``) is exported with that dimension static instead (``Dim.AUTO`` specialises it), never
refused for it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
import torch.fx as fx
from torch import nn
from torch.export import Dim

from graphopt.backends.quiet import quiet_export
from graphopt.errors import CaptureError, ConfigError, first_line
from graphopt.lift import lift


@dataclass(frozen=True)
class DynamicDims:
    """Dimensions of the inputs that vary between calls, besides the batch (dim 0, always dynamic).

    ``dims[i]`` maps a dimension of input ``i`` to a name; inputs sharing a name share the size, e.g. a
    sequence length: ``DynamicDims.of({"input_ids": {1: "seq"}, "attention_mask": {1: "seq"}}, names)``.
    """

    dims: tuple[Mapping[int, str], ...] = field(default_factory=tuple)

    @staticmethod
    def of(spec: object, input_names: Sequence[str], count: int) -> DynamicDims:
        """From a mapping of input name (or index) to ``{dim: name}``, or a sequence of those per input."""
        if spec is None:
            return DynamicDims(tuple({} for _ in range(count)))
        if isinstance(spec, DynamicDims):
            return spec
        if isinstance(spec, Mapping):
            per_input = [{} for _ in range(count)]
            for key, dims in spec.items():
                index = key if isinstance(key, int) else _index_of(key, input_names)
                if not 0 <= index < count:
                    raise ConfigError(f"dynamic_shapes names input {key!r}; the model takes {count} inputs")
                per_input[index] = dims
            spec = per_input
        if not isinstance(spec, Sequence) or len(spec) != count:
            raise ConfigError(
                "dynamic_shapes must map input names to {dim: name}, e.g. {'input_ids': {1: 'seq'}}"
            )
        for dims in spec:
            if not isinstance(dims, Mapping) or not all(
                isinstance(d, int) and d > 0 and isinstance(n, str) for d, n in dims.items()
            ):
                raise ConfigError(
                    f"dynamic_shapes entries must map a dimension > 0 to a name (dim 0 is always the "
                    f"batch), got {dims!r}"
                )
        return DynamicDims(tuple(dict(d) for d in spec))

    def named(self) -> set[str]:
        return {name for dims in self.dims for name in dims.values()}


def _index_of(name: object, input_names: Sequence[str]) -> int:
    if name not in input_names:
        raise ConfigError(
            f"dynamic_shapes names input {name!r}; the forward's inputs are {list(input_names)}"
        )
    return list(input_names).index(name)


def export_program(
    model: nn.Module, example_inputs: tuple[torch.Tensor, ...], dynamic: DynamicDims
) -> torch.export.ExportedProgram:
    """``torch.export`` with dynamic batch and named dims (automatic where the model allows them)."""
    widened = tuple(torch.cat([x, x]) if x.dim() > 0 and x.shape[0] == 1 else x for x in example_inputs)
    symbols: dict[str, object] = {}
    shapes = []
    for x, dims in zip(widened, dynamic.dims or [{}] * len(widened), strict=True):
        if x.dim() == 0:
            shapes.append(None)
            continue
        entry = {0: Dim.AUTO}
        for axis, name in dims.items():
            entry[axis] = symbols.setdefault(name, Dim(name))
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
