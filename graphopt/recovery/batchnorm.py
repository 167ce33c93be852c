"""BatchNorm re-estimation: recompute running statistics on unlabelled data, no gradients.

After a model is edited (channels pruned, weights quantized) the running mean/var of its BatchNorm layers
no longer describe the activations. Re-estimation resets them and runs the calibration data through the
model with only the BatchNorm layers in training mode and ``momentum=None``, which makes PyTorch keep a
cumulative average: ``mean = (1/n) sum_i mean_i`` over the ``n`` batches, the same for the variance.
Weights do not change; it costs one forward pass per batch.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from graphopt.errors import InvalidInputError
from graphopt.evaluation import as_input_tuple


def calibration_inputs(
    data: Iterable[Any], what: str = "calibration_data"
) -> Iterable[tuple[torch.Tensor, ...]]:
    """Input tuples from an iterable of tensors, input tuples, or ``(inputs, labels)`` pairs."""
    for item in data:
        if isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[0], (tuple, list)):
            item = item[0]  # ((x, ...), labels)
        elif (
            isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[1], torch.Tensor)
            and not item[1].is_floating_point()
        ):  # fmt: skip
            item = item[0]  # (x, labels)
        try:
            yield as_input_tuple(item)
        except InvalidInputError:
            raise InvalidInputError(
                f"{what} must yield input tensors, tuples of tensors, or (inputs, labels) pairs; got "
                f"{type(item).__name__}"
            ) from None


def reestimate_batchnorm(model: nn.Module, data: Iterable[Any], max_batches: int = 100) -> int:
    """Recompute the running statistics of every BatchNorm in ``model``; return the batches used."""
    norms = [
        m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
    ]
    if not norms:
        return 0
    was_training = model.training
    saved_momenta = [m.momentum for m in norms]
    model.eval()
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches
        m.train()
    used = 0
    try:
        with torch.no_grad():
            for inputs in calibration_inputs(data):
                if used >= max_batches:
                    break
                model(*inputs)
                used += 1
    finally:
        for m, momentum in zip(norms, saved_momenta, strict=True):
            m.momentum = momentum
        model.train(was_training)
    if used == 0:
        raise InvalidInputError("calibration_data is empty: BatchNorm re-estimation needs at least one batch")
    return used
