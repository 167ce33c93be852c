"""Unstructured (weight-level) sparsity: which weights to zero, on what schedule, and what it buys.

Magnitude criterion: the weights with the smallest ``|w|`` go. ``global`` ranks every eligible weight of
the model together (layers with many redundant weights give up more); ``local`` removes the same fraction
from each layer. Weights already zero count as removed, so a later, higher target only adds to them.

Gradual schedule (Zhu & Gupta, "To prune, or not to prune", 2017): over ``n`` steps the target rises as
``s_k = s * (1 - (1 - k / n)^3)``, steep first while many weights are redundant, flat at the end, with
fine-tuning after each step. ``n = 1`` is one-shot pruning.

What it buys, said plainly: dense kernels (ONNX Runtime, PyTorch) multiply zeros at full cost, so latency
does not change. What changes is the artifact compressed (zeros compress, :func:`zipped_bytes`) and the
MACs a sparse kernel would skip (``MACs * fraction of zero weights``, per layer).
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import torch

Scope = Literal["global", "local"]


def schedule(sparsity: float, steps: int) -> list[float]:
    """The target sparsity after each of ``steps`` steps (cubic ramp to ``sparsity``)."""
    return [sparsity * (1 - (1 - k / steps) ** 3) for k in range(1, steps + 1)]


def magnitude_masks(weights: Sequence[torch.Tensor], sparsity: float, scope: Scope) -> list[torch.Tensor]:
    """Keep-masks (1 = keep) zeroing a ``sparsity`` fraction of the weights with the smallest magnitude."""
    if scope == "local":
        return [_mask_below(w.detach().abs(), _kth(w.detach().abs().flatten(), sparsity)) for w in weights]
    everything = torch.cat([w.detach().abs().flatten() for w in weights])
    threshold = _kth(everything, sparsity)
    return [_mask_below(w.detach().abs(), threshold) for w in weights]


def _kth(magnitudes: torch.Tensor, sparsity: float) -> float | None:
    """The magnitude at or below which a ``sparsity`` fraction lies (None: remove nothing)."""
    count = int(sparsity * magnitudes.numel())
    if count == 0:
        return None
    return float(torch.kthvalue(magnitudes.float(), count).values)


def _mask_below(magnitudes: torch.Tensor, threshold: float | None) -> torch.Tensor:
    """Keep what is above ``threshold`` (None: keep every non-zero weight)."""
    return (magnitudes > (0.0 if threshold is None else threshold)).to(magnitudes.dtype)


def zero_fraction(weight: torch.Tensor) -> float:
    return float((weight == 0).sum()) / max(weight.numel(), 1)


def zipped_bytes(path: str | Path) -> int:
    """Size of the file compressed with zlib (DEFLATE, level 6): what zeros save in storage and download."""
    return len(zlib.compress(Path(path).read_bytes(), 6))
