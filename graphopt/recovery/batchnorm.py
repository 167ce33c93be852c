"""BatchNorm re-estimation: recompute running statistics on unlabelled data, no gradients.

After a model is edited (channels pruned, weights quantized) the running mean/var of its BatchNorm layers
no longer describe the activations. Re-estimation resets them and runs the calibration data through the
model in eval mode. A hook before every BatchNorm adds its input to per-channel float64 sums over every
sample and position seen so far, ``n``, ``S1 = sum x``, ``S2 = sum x^2``, and sets

    running_mean = S1 / n,    running_var = (S2 - S1^2 / n) / (n - 1)    (0 while n = 1)

before the layer runs, so each BatchNorm normalizes with the statistics of all data so far and the layers
after it see activations as they will be. Unlike train-mode BatchNorm this works at batch 1 with a 1x1 map
(DeepLabV3's image-pooling branch), where PyTorch refuses "Expected more than 1 value per channel", and the
result is the pooled statistics of the whole set, not an average of per-batch ones. Weights do not change;
it costs one forward pass per batch.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from graphopt.data.batches import as_input_tuple
from graphopt.data.dims import DynamicDims, is_input_tuple
from graphopt.errors import InvalidInputError


def calibration_inputs(
    data: Iterable[Any],
    what: str = "calibration_data",
    example_inputs: tuple[torch.Tensor, ...] | None = None,
    dynamic: DynamicDims | None = None,
) -> Iterable[tuple[torch.Tensor, ...]]:
    """Input tuples from an iterable of tensors, input tuples, or ``(inputs, labels)`` pairs.

    A pair ``(a, b)`` with an integer ``b`` is read as ``(inputs, labels)``, unless the model takes two
    inputs shaped like ``a`` and ``b`` (``example_inputs``, sizes along the ``dynamic`` dims free): then it
    is the inputs of a two-input model, such as ``(input_ids, attention_mask)`` at another length.
    """
    for item in data:
        if is_input_tuple(item, example_inputs, dynamic or DynamicDims()):
            pass
        elif isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[0], (tuple, list)):
            item = item[0]  # ((x, ...), labels)
        elif (
            isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[1], torch.Tensor)
            and not item[1].is_floating_point()
        ):  # fmt: skip
            item = item[0]  # (x, labels)
        tensors = (item,) if isinstance(item, torch.Tensor) else item
        if not (isinstance(tensors, (tuple, list)) and all(isinstance(x, torch.Tensor) for x in tensors)):
            raise InvalidInputError(
                f"{what} must yield input tensors, tuples of tensors, or (inputs, labels) pairs; got "
                f"{type(item).__name__}"
            )
        yield as_input_tuple(tensors)  # refuses meta, sparse and quantized tensors by name


def reestimate_batchnorm(model: nn.Module, data: Iterable[Any], max_batches: int = 100) -> int:
    """Recompute the running statistics of every BatchNorm in ``model``; return the batches used."""
    norms = [
        m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
    ]
    if not norms:
        return 0
    was_training = model.training
    model.eval()
    for m in norms:
        m.reset_running_stats()
    accumulators = [_ChannelMoments() for _ in norms]
    handles = [m.register_forward_pre_hook(acc.update) for m, acc in zip(norms, accumulators, strict=True)]
    used = 0
    try:
        with torch.no_grad():
            for inputs in calibration_inputs(data):
                if used >= max_batches:
                    break
                model(*inputs)
                used += 1
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    if used == 0:
        raise InvalidInputError("calibration_data is empty: BatchNorm re-estimation needs at least one batch")
    return used


class _ChannelMoments:
    """Per-channel float64 sums of a BatchNorm's inputs; writes the pooled statistics into the layer."""

    def __init__(self) -> None:
        self.count = 0
        self.total: torch.Tensor | None = None
        self.squares: torch.Tensor | None = None

    def update(self, norm: nn.Module, args: tuple[Any, ...]) -> None:
        x = args[0].detach().double()
        dims = [d for d in range(x.dim()) if d != 1]  # every axis but channels: batch and positions
        total, squares = x.sum(dims), (x * x).sum(dims)
        self.total = total if self.total is None else self.total + total
        self.squares = squares if self.squares is None else self.squares + squares
        self.count += x.numel() // x.shape[1]
        mean = self.total / self.count
        spread = (self.squares - self.total * mean).clamp_min(0)
        variance = spread / (self.count - 1) if self.count > 1 else torch.zeros_like(mean)
        norm.running_mean.copy_(mean)
        norm.running_var.copy_(variance)
