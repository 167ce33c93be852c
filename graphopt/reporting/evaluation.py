"""Accuracy on labelled data, for any callable that maps inputs to logits (a module or an artifact runner).

``data`` is an iterable of ``(inputs, labels)`` batches; ``inputs`` is a tensor or a tuple of tensors.
Accuracy is the fraction of samples whose arg-max over the last output dimension equals the label.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import torch

from graphopt.errors import InvalidInputError
from graphopt.frontend.inputs import check_tensor_kind
from graphopt.reporting.numerics import first_output

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


def materialize_labelled(data: Iterable[Any] | None, what: str) -> list[Batch] | None:
    """Read a labelled iterable once into a list of ``(inputs, labels)`` so it can be reused per stage."""
    if data is None:
        return None
    batches = []
    for i, item in enumerate(data):
        if not (isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[1], torch.Tensor)):
            raise InvalidInputError(
                f"{what} must yield (inputs, labels) pairs; item {i} is {type(item).__name__}"
            )
        as_input_tuple(item[0])
        batches.append((item[0], item[1]))
    if not batches:
        raise InvalidInputError(f"{what} is empty")
    return batches


def accuracy(predict: Callable[..., Any], data: Sequence[Batch]) -> float:
    """Top-1 accuracy of ``predict(*inputs)`` over labelled batches."""
    correct = total = 0
    with torch.no_grad():
        for inputs, labels in data:
            logits = first_output(predict(*as_input_tuple(inputs)))
            pred = np.asarray(logits.detach() if isinstance(logits, torch.Tensor) else logits).argmax(-1)
            correct += int((pred == labels.numpy()).sum())
            total += int(labels.numel())
    return correct / max(total, 1)
