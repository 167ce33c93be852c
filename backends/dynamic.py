"""Dynamic batch dimension for exporters built on torch.export.

Artifacts are timed at batch 1 but deployed on any batch size, so graphopt asks torch.export for a dynamic
dimension 0 on every input. Graphs that fix the batch (``x.view(1, -1)``) cannot have one; callers then
fall back to static shapes.
"""

from __future__ import annotations

import torch


def dynamic_batch(example_inputs: tuple[torch.Tensor, ...]) -> tuple[dict[int, object] | None, ...]:
    batch = torch.export.Dim("batch", min=1, max=4096)
    return tuple({0: batch} if x.dim() > 0 else None for x in example_inputs)
