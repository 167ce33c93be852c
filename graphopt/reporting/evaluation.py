"""Accuracy on labelled data, for any callable that maps inputs to logits (a module or an artifact runner).

``data`` is an iterable of ``(inputs, labels)`` batches; ``inputs`` is a tensor or a tuple of tensors
(read and checked once per call by :mod:`graphopt.data.run_data`). Accuracy is the fraction of samples
whose arg-max over the last output dimension equals the label.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from graphopt.data.batches import Batch, as_input_tuple
from graphopt.reporting.numerics import first_output

__all__ = ["accuracy"]


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
