"""Calibration data: read once, checked against the example inputs, no NaN or inf."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch

from graphopt.errors import InvalidInputError
from graphopt.inputs import check_tensor_kind
from graphopt.recovery.batchnorm import calibration_inputs


class CalibrationBatches(list):
    """Calibration batches already read and checked (:func:`read_calibration_inputs`): a pass reading them
    again gets them as they are, so data is checked once, where the call's declared dynamic dims are known."""


def read_calibration_inputs(
    data: Iterable[Any],
    example_inputs: tuple[torch.Tensor, ...],
    dynamic: Sequence[Mapping[int, str]] = (),
) -> CalibrationBatches:
    """``data`` as a list of input tuples, each checked against ``example_inputs``: the same per-sample
    shape except along the dims ``dynamic`` declares for that input (``dynamic[i]``: ``{dim: name}``, e.g.
    a sequence length), finite, dense tensors."""
    if isinstance(data, CalibrationBatches):
        return data
    if isinstance(data, torch.Tensor):
        data = [data]
    batches = CalibrationBatches(calibration_inputs(data, example_inputs=example_inputs))
    if not batches:
        raise InvalidInputError("calibration_data is empty; give at least one batch of inputs")
    expected = _per_sample_shapes(example_inputs, dynamic)
    for i, batch in enumerate(batches):
        for x in batch:  # meta, sparse or quantized tensors would fail deep inside calibration
            check_tensor_kind(f"calibration_data item {i}", x)
        shapes = _per_sample_shapes(batch, dynamic)
        if shapes != expected:
            declared = " (dims declared in dynamic_shapes may differ)" if any(dynamic) else ""
            raise InvalidInputError(
                f"calibration_data item {i} has per-sample shapes {_shown(shapes)}; example_inputs has "
                f"{_shown(expected)}{declared}"
            )
        if not all(torch.isfinite(x).all() for x in batch if x.is_floating_point()):
            raise InvalidInputError(f"calibration_data item {i} contains NaN or inf")
    return batches


def _per_sample_shapes(
    batch: Sequence[torch.Tensor], dynamic: Sequence[Mapping[int, str]]
) -> list[tuple[int | str, ...]]:
    """Each input's shape without the batch, a declared dynamic dim shown by its name instead of its size."""
    shapes = []
    for i, x in enumerate(batch):
        dims = dynamic[i] if i < len(dynamic) else {}
        shapes.append(tuple(dims.get(d, size) for d, size in enumerate(x.shape) if d > 0))
    return shapes


def _shown(shapes: list[tuple[int | str, ...]]) -> str:
    return str([tuple(shape) for shape in shapes]).replace("'", "")
