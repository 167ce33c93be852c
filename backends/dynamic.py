"""Dynamic batch dimension for exporters built on torch.export.

Artifacts are timed at batch 1 but deployed on any batch size, so graphopt asks torch.export for a dynamic
dimension 0 on every input, and for the dimensions the caller names in :class:`DynamicDims` (a sequence
length). torch.export specialises dimensions of size 1, so a batch-1 example is first
repeated to batch 2 for tracing. Graphs that fix the batch (``x.view(1, -1)``) cannot have a dynamic batch;
callers then fall back to static shapes with the original example.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch

from graphopt.errors import ConfigError


def widen_batch(example_inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """Batch-1 inputs repeated to batch 2: torch.export specialises a dimension of size 1."""
    return tuple(torch.cat([x, x]) if x.dim() > 0 and x.shape[0] == 1 else x for x in example_inputs)


def dynamic_batch_example(
    example_inputs: tuple[torch.Tensor, ...],
) -> tuple[tuple[torch.Tensor, ...], tuple[dict[int, object] | None, ...]]:
    """Example inputs with batch >= 2 and the matching ``dynamic_shapes`` for torch.export."""
    batch = torch.export.Dim("batch", min=1, max=4096)
    widened = widen_batch(example_inputs)
    return widened, tuple({0: batch} if x.dim() > 0 else None for x in example_inputs)


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
