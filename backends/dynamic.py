"""Dynamic batch dimension for exporters built on torch.export.

Artifacts are timed at batch 1 but deployed on any batch size, so graphopt asks torch.export for a dynamic
dimension 0 on every input, and for the dimensions the caller names in :class:`DynamicDims` (a sequence
length; declared in :mod:`graphopt.data.dims`, where every kind of data is checked against it).
torch.export specialises dimensions of size 1, so a batch-1 example is first repeated to batch 2 for
tracing. Graphs that fix the batch (``x.view(1, -1)``) cannot have a dynamic batch;
callers then fall back to static shapes with the original example.
"""

from __future__ import annotations

import torch

from graphopt.data.dims import DynamicDims
from graphopt.frontend.batch_dims import dynamic_batch_example


def dynamic_example(
    example_inputs: tuple[torch.Tensor, ...], dynamic: DynamicDims | None
) -> tuple[tuple[torch.Tensor, ...], tuple[dict[int, object] | None, ...]]:
    """:func:`dynamic_batch_example` plus the named dimensions (one ``Dim`` per name, shared by inputs)."""
    widened, shapes = dynamic_batch_example(example_inputs)
    if dynamic is None or not dynamic.named():
        return widened, shapes
    symbols = {name: torch.export.Dim(name) for name in sorted(dynamic.named())}
    merged = tuple(
        None if shape is None else {**shape, **{axis: symbols[name] for axis, name in dims.items()}}
        for shape, dims in zip(shapes, dynamic.dims, strict=True)
    )
    return widened, merged


def named_dims_example(
    example_inputs: tuple[torch.Tensor, ...], dynamic: DynamicDims
) -> tuple[tuple[torch.Tensor, ...], tuple[dict[int, object] | None, ...]]:
    """The example as given, with only the named dimensions dynamic: for a graph that fixes the batch
    (``x.view(1, -1, d)``) but not the sequence length."""
    symbols = {name: torch.export.Dim(name) for name in sorted(dynamic.named())}
    shapes = tuple(
        {axis: symbols[name] for axis, name in dims.items()} if x.dim() > 0 else None
        for x, dims in zip(example_inputs, dynamic.dims, strict=True)
    )
    return example_inputs, shapes
