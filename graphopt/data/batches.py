"""One batch's inputs, normalised: what every kind of data (calibration, train, validation, eval) is read
into before anything runs on it."""

from __future__ import annotations

from typing import Any

import torch

from graphopt.errors import InvalidInputError
from graphopt.frontend.inputs import check_tensor_kind

#: One labelled batch: its inputs (a tuple of tensors once read) and its integer labels.
Batch = tuple[Any, torch.Tensor]


def as_input_tuple(inputs: Any) -> tuple[torch.Tensor, ...]:
    """Normalise one batch's inputs to a tuple of tensors."""
    if isinstance(inputs, torch.Tensor):
        inputs = (inputs,)
    if isinstance(inputs, (tuple, list)) and all(isinstance(x, torch.Tensor) for x in inputs):
        for i, x in enumerate(inputs):  # meta, sparse or quantized tensors would fail deep inside a pass
            check_tensor_kind(f"a data batch's input {i}", x)
        return tuple(inputs)
    raise InvalidInputError(
        f"a data batch's inputs must be a tensor or a tuple of tensors, got {type(inputs).__name__}"
    )
