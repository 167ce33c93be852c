"""Calibration data: read once, checked against the example inputs, no NaN or inf."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch

from graphopt.errors import InvalidInputError
from graphopt.frontend.inputs import check_tensor_kind
from graphopt.recovery.batchnorm import calibration_inputs


class CalibrationBatches(list):
    """Calibration batches already read and checked (:func:`read_calibration_inputs`) against ``checked``:
    the example inputs' per-sample shapes with the declared dynamic dims named. A pass reading them again
    against the same gets them as they are, so data is checked once, where the call's dynamic dims are
    known; against anything else (or built by hand, unchecked) they are checked again."""

    checked: tuple[tuple[int | str, ...], ...] | None = None


def read_calibration_inputs(
    data: Iterable[Any],
    example_inputs: tuple[torch.Tensor, ...],
    dynamic: Sequence[Mapping[int, str]] = (),
) -> CalibrationBatches:
    """``data`` as a list of input tuples, each checked against ``example_inputs``: the same per-sample
    shape except along the dims ``dynamic`` declares for that input (``dynamic[i]``: ``{dim: name}``, e.g.
    a sequence length), finite, dense tensors."""
    expected = _per_sample_shapes(example_inputs, dynamic)
    if isinstance(data, CalibrationBatches) and _covers(data.checked, expected):
        return data
    if isinstance(data, torch.Tensor):
        data = [data]
    batches = CalibrationBatches(calibration_inputs(data, example_inputs=example_inputs))
    if not batches:
        raise InvalidInputError("calibration_data is empty; give at least one batch of inputs")
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
        _check_shared_dims(batch, dynamic, i)
        if not all(torch.isfinite(x).all() for x in batch if x.is_floating_point()):
            raise InvalidInputError(f"calibration_data item {i} contains NaN or inf")
    batches.checked = tuple(expected)
    return batches


def _covers(checked: tuple[tuple[int | str, ...], ...] | None, expected: list[tuple[int | str, ...]]) -> bool:
    """Whether batches checked against ``checked`` fit ``expected`` too: the same sizes, except where the
    check named a dynamic dim (a pass re-reading the driver's batches knows no dynamic dims)."""
    if checked is None or len(checked) != len(expected):
        return False
    return all(
        len(c) == len(e) and all(isinstance(a, str) or a == b for a, b in zip(c, e, strict=True))
        for c, e in zip(checked, expected, strict=True)
    )


def _check_shared_dims(batch: Sequence[torch.Tensor], dynamic: Sequence[Mapping[int, str]], i: int) -> None:
    """Inputs sharing a dim's name share its size in every batch (``input_ids`` and ``attention_mask`` of
    one length), as in the example inputs."""
    sizes: dict[str, set[int]] = {}
    for x, dims in zip(batch, dynamic, strict=False):
        for d, name in dims.items():
            if d < x.dim():
                sizes.setdefault(name, set()).add(int(x.shape[d]))
    for name, seen in sizes.items():
        if len(seen) > 1:
            raise InvalidInputError(
                f"calibration_data item {i} has sizes {sorted(seen)} along the dim dynamic_shapes names "
                f"{name!r}: the inputs that share it must have one size in each batch"
            )


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
