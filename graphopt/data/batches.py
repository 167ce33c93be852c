"""One batch's inputs, normalised: what every kind of data (calibration, train, validation, eval) is read
into before anything runs on it."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
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


#: The most batches graphopt reads from one data set: each is read into memory once, and an endless
#: generator would otherwise never return.
MAX_BATCHES = 10_000


def bounded_batches(data: Any, what: str, form: str) -> Iterator[Any]:
    """The items of ``data``, refusing a non-iterable (or a lone tensor or string) and more than
    :data:`MAX_BATCHES` items; ``form`` is the expected form, for messages."""
    if isinstance(data, (torch.Tensor, str, bytes)) or not isinstance(data, Iterable):
        raise InvalidInputError(f"{what} must be {form}; got {type(data).__name__}")
    for count, item in enumerate(data):
        if count == MAX_BATCHES:
            raise InvalidInputError(
                f"{what} yielded more than MAX_BATCHES = {MAX_BATCHES} batches; graphopt reads every batch "
                "into memory (an endless generator never ends): give a finite iterable, e.g. "
                "itertools.islice(batches, 100), or larger batches"
            )
        yield item
