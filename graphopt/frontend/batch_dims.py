"""A dynamic batch dimension for torch.export: what capture and the exporters ask it for.

Artifacts are timed at batch 1 but deployed on any batch size, so capture and export ask torch.export for
a dynamic dimension 0 on every input. torch.export specialises dimensions of size 1, so a batch-1 example
is first repeated to batch 2 for tracing.
"""

from __future__ import annotations

import torch


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
