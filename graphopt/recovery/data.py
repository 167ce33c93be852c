"""Training data for recovery: read once, checked, split into train/validation, batched reproducibly.

``train_data`` is an iterable of ``(inputs, labels)`` batches, ``inputs`` a tensor or a tuple of tensors,
``labels`` integer class indices. It is concatenated into tensors (recovery data for edge models fits in
memory; a larger data set belongs in a ``train_fn`` with the user's own loader) and re-batched with the
configured batch size, shuffled by a seeded generator so that a run is deterministic.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from graphopt.errors import InvalidInputError
from graphopt.reporting.evaluation import as_input_tuple

EXPECTED_FORM = (
    "an iterable of (inputs, labels) batches: inputs a tensor or tuple of tensors, labels int64 class ids"
)


@dataclass(frozen=True)
class LabelledTensors:
    inputs: tuple[torch.Tensor, ...]
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: torch.Tensor) -> LabelledTensors:
        return LabelledTensors(tuple(x[index] for x in self.inputs), self.labels[index])

    def batches(
        self, batch_size: int, generator: torch.Generator | None = None, *, rank: int = 0, world_size: int = 1
    ) -> Iterator[tuple[tuple[torch.Tensor, ...], torch.Tensor]]:
        """Batches in a seeded random order (or in order without a generator); ``rank`` of ``world_size``
        takes every ``world_size``-th sample, as a DistributedSampler would."""
        shards = self.indexed_batches(batch_size, generator, rank=rank, world_size=world_size)
        for _, inputs, labels in shards:
            yield inputs, labels

    def indexed_batches(
        self, batch_size: int, generator: torch.Generator | None = None, *, rank: int = 0, world_size: int = 1
    ) -> Iterator[tuple[torch.Tensor, tuple[torch.Tensor, ...], torch.Tensor]]:
        """:meth:`batches`, each with the indices of its samples in this data."""
        order = (
            torch.randperm(len(self), generator=generator)
            if generator is not None
            else torch.arange(len(self))
        )
        # Every rank must take the same number of steps (DDP hangs otherwise): drop the ragged tail.
        order = order[: len(order) - len(order) % world_size][rank::world_size]
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            yield idx, tuple(x[idx] for x in self.inputs), self.labels[idx]


def read_labelled(
    data: Iterable[Any], what: str, example_inputs: tuple[torch.Tensor, ...] | None
) -> LabelledTensors:
    """Concatenate ``data`` into tensors, checking its form against ``example_inputs``."""
    if isinstance(data, (torch.Tensor, str, bytes)) or not isinstance(data, Iterable):
        raise InvalidInputError(f"{what} must be {EXPECTED_FORM}; got {type(data).__name__}")
    inputs: list[tuple[torch.Tensor, ...]] = []
    labels: list[torch.Tensor] = []
    for i, item in enumerate(data):
        if not (isinstance(item, (tuple, list)) and len(item) == 2):
            raise InvalidInputError(f"{what} must be {EXPECTED_FORM}; item {i} is {type(item).__name__}")
        batch_inputs, batch_labels = as_input_tuple(item[0]), item[1]
        if not isinstance(batch_labels, torch.Tensor) or batch_labels.dtype not in (torch.int64, torch.int32):
            raise InvalidInputError(
                f"{what} must be {EXPECTED_FORM}; the labels of item {i} are not int tensors"
            )
        if batch_labels.dim() != 1 or any(len(x) != len(batch_labels) for x in batch_inputs):
            sizes = [len(x) for x in batch_inputs]
            raise InvalidInputError(
                f"{what}: item {i} has {len(batch_labels)} labels for inputs of batch {sizes}; "
                "give one label per sample"
            )
        _check_like_example(batch_inputs, example_inputs, what, i)
        inputs.append(batch_inputs)
        labels.append(batch_labels.long())
    if not labels:
        raise InvalidInputError(f"{what} is empty; it must be {EXPECTED_FORM}")
    return LabelledTensors(tuple(torch.cat(parts) for parts in zip(*inputs, strict=True)), torch.cat(labels))


def _check_like_example(
    batch: tuple[torch.Tensor, ...], example: tuple[torch.Tensor, ...] | None, what: str, i: int
) -> None:
    if example is None:
        return
    shapes = [tuple(x.shape[1:]) for x in batch]
    expected = [tuple(x.shape[1:]) for x in example]
    if len(batch) != len(example) or shapes != expected:
        raise InvalidInputError(
            f"{what}: the inputs of item {i} have per-sample shapes {shapes}, "
            f"but example_inputs has {expected}"
        )


def check_label_range(labels: torch.Tensor, num_classes: int, what: str) -> None:
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= num_classes:
        raise InvalidInputError(
            f"{what} has labels in [{low}, {high}] but the model outputs {num_classes} classes (labels 0.."
            f"{num_classes - 1})"
        )


def split_validation(
    data: LabelledTensors, fraction: float, seed: int
) -> tuple[LabelledTensors, LabelledTensors | None]:
    """Hold out ``fraction`` of the samples (seeded) for validation."""
    n_val = round(len(data) * fraction)
    if fraction == 0 or n_val == 0 or n_val >= len(data):
        return data, None
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))
    return data.subset(order[n_val:]), data.subset(order[:n_val])
