"""Calibration data: read once, checked against the example inputs, no NaN or inf."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from graphopt.errors import InvalidInputError
from graphopt.inputs import check_tensor_kind
from graphopt.recovery.batchnorm import calibration_inputs


def read_calibration_inputs(
    data: Iterable[Any], example_inputs: tuple[torch.Tensor, ...]
) -> list[tuple[torch.Tensor, ...]]:
    if isinstance(data, torch.Tensor):
        data = [data]
    batches = list(calibration_inputs(data, example_inputs=example_inputs))
    if not batches:
        raise InvalidInputError("calibration_data is empty; give at least one batch of inputs")
    expected = [tuple(x.shape[1:]) for x in example_inputs]
    for i, batch in enumerate(batches):
        for x in batch:  # meta, sparse or quantized tensors would fail deep inside calibration
            check_tensor_kind(f"calibration_data item {i}", x)
        shapes = [tuple(x.shape[1:]) for x in batch]
        if shapes != expected:
            raise InvalidInputError(
                f"calibration_data item {i} has per-sample shapes {shapes}; example_inputs has {expected}"
            )
        if not all(torch.isfinite(x).all() for x in batch if x.is_floating_point()):
            raise InvalidInputError(f"calibration_data item {i} contains NaN or inf")
    return batches
