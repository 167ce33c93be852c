"""Calibration data (inputs only): read once, checked against the example inputs, no NaN or inf."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from graphopt.data.batches import bounded_batches
from graphopt.data.dims import DynamicDims, check_batch_tensors, check_shared_dims, per_sample_shapes, shown
from graphopt.errors import InvalidInputError
from graphopt.frontend.inputs import check_tensor_kind
from graphopt.recovery.batchnorm import calibration_inputs

CALIBRATION_FORM = "an iterable of input batches: tensors, tuples of tensors, or (inputs, labels) pairs"


class CalibrationBatches(list):
    """Calibration batches read and checked (:func:`read_calibration_inputs`): a list of input tuples, each
    with the example inputs' per-sample shapes except along declared dynamic dims. Passes take them as
    they are (they are never read twice)."""


def read_calibration_inputs(
    data: Iterable[Any], example_inputs: tuple[torch.Tensor, ...], dynamic: DynamicDims | None = None
) -> CalibrationBatches:
    """``data`` as a list of input tuples, each checked against ``example_inputs``: the same per-sample
    shape except along the dims ``dynamic`` declares (a sequence length), inputs sharing a dim's name of
    one size, finite, dense tensors of the example's dtype, at most
    :data:`~graphopt.data.batches.MAX_BATCHES` of them."""
    dims = dynamic or DynamicDims()
    expected = per_sample_shapes(example_inputs, dims)
    if isinstance(data, torch.Tensor):
        data = [data]
    items = bounded_batches(data, "calibration_data", CALIBRATION_FORM)
    batches = CalibrationBatches(calibration_inputs(items, example_inputs=example_inputs, dynamic=dims))
    if not batches:
        raise InvalidInputError("calibration_data is empty; give at least one batch of inputs")
    for i, batch in enumerate(batches):
        for x in batch:  # meta, sparse or quantized tensors would fail deep inside calibration
            check_tensor_kind(f"calibration_data item {i}", x)
        check_batch_tensors(batch, example_inputs, f"calibration_data item {i}")
        shapes = per_sample_shapes(batch, dims)
        if shapes != expected:
            declared = " (dims declared in dynamic_shapes may differ)" if dims.named() else ""
            raise InvalidInputError(
                f"calibration_data item {i} has per-sample shapes {shown(shapes)}; example_inputs has "
                f"{shown(expected)}{declared}"
            )
        check_shared_dims(batch, dims, f"calibration_data item {i}")
    return batches
