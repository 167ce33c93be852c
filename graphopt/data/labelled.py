"""Labelled data (train, validation, eval): read once, checked, held as tensors, split reproducibly.

``train_data`` and ``validation_data`` are iterables of ``(inputs, labels)`` batches, ``inputs`` a tensor
or a tuple of tensors, ``labels`` integer class indices. They are concatenated into
:class:`LabelledTensors` (recovery data for edge models fits in memory; a larger data set belongs in a
``train_fn`` with the user's own loader) and re-batched by whoever trains on them. ``eval_data`` stays in
its batches (each is measured as given, so its batches may differ along a declared dynamic dim).

``train_data`` may instead be inputs only (each item the model's inputs: a tensor, or the tuple a
multi-input model takes, such as ``(input_ids, attention_mask)``): every sample then has the label
:data:`UNLABELLED`, and recovery distills from the original model alone (:mod:`graphopt.recovery.losses`).
A set is labelled throughout or not at all.

Shapes: each batch's per-sample shapes must be the example inputs', a dim ``dynamic_shapes`` declares
compared by its name (:func:`~graphopt.data.dims.per_sample_shapes`); train and validation batches, being
concatenated, share one size along such a dim (which may differ from the example's).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from graphopt.data.batches import Batch, as_input_tuple, bounded_batches
from graphopt.data.dims import (
    DynamicDims,
    check_batch_tensors,
    check_shared_dims,
    is_input_tuple,
    per_sample_shapes,
    shown,
)
from graphopt.errors import InvalidInputError

EXPECTED_FORM = (
    "an iterable of (inputs, labels) batches: inputs a tensor or tuple of tensors, labels int64 class ids"
)
#: The label of a sample given without one (``train_data`` as inputs only).
UNLABELLED = -1


@dataclass(frozen=True)
class LabelledTensors:
    inputs: tuple[torch.Tensor, ...]
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def has_labels(self) -> bool:
        """False for inputs given without labels (:data:`UNLABELLED`): only a teacher can train on them."""
        return not bool((self.labels == UNLABELLED).any())

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
    data: Iterable[Any],
    what: str,
    example_inputs: tuple[torch.Tensor, ...] | None,
    dynamic: DynamicDims | None = None,
    *,
    inputs_only: bool = False,
) -> LabelledTensors:
    """Concatenate ``data`` into tensors, checking its form against ``example_inputs`` (the dims
    ``dynamic`` declares may differ from the example's, but not between batches: they are concatenated).
    ``inputs_only``: items that are the model's inputs alone are taken, labelled :data:`UNLABELLED`."""
    dims = dynamic or DynamicDims()
    inputs: list[tuple[torch.Tensor, ...]] = []
    labels: list[torch.Tensor] = []
    for i, item in enumerate(bounded_batches(data, what, EXPECTED_FORM)):
        batch_inputs, batch_labels = _read_item(item, example_inputs, dims, what, i, inputs_only)
        if labels and bool((labels[0] == UNLABELLED).any()) != bool((batch_labels == UNLABELLED).any()):
            raise InvalidInputError(
                f"{what} mixes items with labels and items without (item {i}); give labels for every batch, "
                "or none: inputs alone train by distillation from the original model"
            )
        _check_like_example(batch_inputs, example_inputs, dims, what, i)
        if inputs:
            _check_like_first(batch_inputs, inputs[0], dims, what, i)
        inputs.append(batch_inputs)
        labels.append(batch_labels.long())
    if not labels:
        raise InvalidInputError(f"{what} is empty; it must be {EXPECTED_FORM}")
    return LabelledTensors(tuple(torch.cat(parts) for parts in zip(*inputs, strict=True)), torch.cat(labels))


def _read_item(
    item: Any,
    example: tuple[torch.Tensor, ...] | None,
    dims: DynamicDims,
    what: str,
    i: int,
    inputs_only: bool,
) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
    """Item ``i`` as ``(inputs, labels)``: a labelled pair, or (``inputs_only``) the model's inputs alone,
    labelled :data:`UNLABELLED`."""
    if inputs_only and _is_inputs_only(item, example, dims):
        inputs = as_input_tuple(item)
        check_batch_tensors(inputs, example, f"{what} item {i}")
        return inputs, torch.full((len(inputs[0]),), UNLABELLED)
    return _labelled_batch(item, example, what, i)


def _is_inputs_only(item: Any, example: tuple[torch.Tensor, ...] | None, dynamic: DynamicDims) -> bool:
    """An item that is the model's inputs with no labels: a tensor for a model of one input, the tuple a
    multi-input model takes (shaped like ``example``)."""
    if isinstance(item, torch.Tensor):
        return example is None or len(example) == 1
    return is_input_tuple(item, example, dynamic)


def _labelled_batch(
    item: Any, example: tuple[torch.Tensor, ...] | None, what: str, i: int
) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
    """One ``(inputs, labels)`` item: inputs with a batch of samples, finite, of the example's dtype
    (:func:`~graphopt.data.dims.check_batch_tensors`), and one int label per sample in a 1-D tensor."""
    if not (isinstance(item, (tuple, list)) and len(item) == 2):
        raise InvalidInputError(f"{what} must be {EXPECTED_FORM}; item {i} is {type(item).__name__}")
    batch_inputs, batch_labels = as_input_tuple(item[0]), item[1]
    check_batch_tensors(batch_inputs, example, f"{what} item {i}")
    if not isinstance(batch_labels, torch.Tensor) or batch_labels.dtype not in (torch.int64, torch.int32):
        got = batch_labels.dtype if isinstance(batch_labels, torch.Tensor) else type(batch_labels).__name__
        raise InvalidInputError(
            f"{what} labels must be integer class indices: the labels of item {i} are not int tensors "
            f"({got}); give int64 class ids, e.g. y.long()"
        )
    sizes = [len(x) for x in batch_inputs]
    if batch_labels.dim() != 1 or any(size != len(batch_labels) for size in sizes):
        raise InvalidInputError(
            f"{what}: item {i} has {_count(batch_labels)} labels for inputs of batch {sizes}; give one "
            "label per sample, in a 1-D tensor of class ids (y.reshape(-1) for an (N, 1) one)"
        )
    return batch_inputs, batch_labels


def _count(labels: torch.Tensor) -> str:
    """The labels' count for a message, their shape where they are not 1-D (a 0-d tensor has no len)."""
    return str(len(labels)) if labels.dim() == 1 else f"shape-{tuple(labels.shape)}"


def _check_like_example(
    batch: tuple[torch.Tensor, ...],
    example: tuple[torch.Tensor, ...] | None,
    dynamic: DynamicDims,
    what: str,
    i: int,
) -> None:
    if example is None:
        return
    shapes, expected = per_sample_shapes(batch, dynamic), per_sample_shapes(example, dynamic)
    if len(batch) != len(example) or shapes != expected:
        declared = " (dims declared in dynamic_shapes may differ)" if dynamic.named() else ""
        raise InvalidInputError(
            f"{what}: the inputs of item {i} have per-sample shapes {shown(shapes)}, "
            f"but example_inputs has {shown(expected)}{declared}"
        )
    check_shared_dims(batch, dynamic, f"{what} item {i}")


def _check_like_first(
    batch: tuple[torch.Tensor, ...], first: tuple[torch.Tensor, ...], dynamic: DynamicDims, what: str, i: int
) -> None:
    """Batches concatenate into one tensor per input: a dynamic dim must have one size across them."""
    sizes, first_sizes = [tuple(x.shape[1:]) for x in batch], [tuple(x.shape[1:]) for x in first]
    if sizes != first_sizes:
        raise InvalidInputError(
            f"{what}: item {i} has per-sample shapes {shown(sizes)} but item 0 has {shown(first_sizes)}; "
            f"a dim dynamic_shapes declares ({', '.join(sorted(dynamic.named()))}) may differ from "
            f"example_inputs but not between the batches of {what}, which training concatenates: pad them "
            "to one length"
        )


def read_eval_batches(
    data: Iterable[Any] | None,
    what: str,
    dynamic: DynamicDims | None = None,
    example_inputs: tuple[torch.Tensor, ...] | None = None,
    *,
    inputs_only: bool = False,
) -> list[Batch] | None:
    """A labelled iterable read once into a list of ``(inputs, labels)``, inputs as a tuple of tensors, so
    it can be measured after every stage. Each batch is checked as :func:`read_labelled` checks one (per-
    sample shapes and dtype of ``example_inputs``, finite, one int label per sample in a 1-D tensor: an
    ``(N, 1)`` label tensor would broadcast against the predictions into a wrong accuracy) but batches may
    differ from each other along a declared dynamic dim: each is measured as given. ``inputs_only``: an
    item that is the model's inputs alone is taken, labelled :data:`UNLABELLED` (what a fidelity measure
    needs; no accuracy is computed from it)."""
    if data is None:
        return None
    dims = dynamic or DynamicDims()
    batches: list[Batch] = []
    for i, item in enumerate(bounded_batches(data, what, EXPECTED_FORM)):
        inputs, labels = _read_item(item, example_inputs, dims, what, i, inputs_only)
        _check_like_example(inputs, example_inputs, dims, what, i)
        check_shared_dims(inputs, dims, f"{what} item {i}")
        batches.append((inputs, labels))
    if not batches:
        raise InvalidInputError(f"{what} is empty")
    if len({has_labels(b) for b in batches}) > 1:
        raise InvalidInputError(
            f"{what} mixes batches with labels and batches without; give labels for every batch, or none"
        )
    return batches


def has_labels(batch: Batch) -> bool:
    """Whether a read batch carries labels (inputs given alone are labelled :data:`UNLABELLED`)."""
    return not bool((batch[1] == UNLABELLED).any())


def labelled_batches(batches: list[Batch] | None) -> bool:
    """Whether there are read batches and every one carries labels (what accuracy and exits need)."""
    return batches is not None and all(map(has_labels, batches))


def check_label_range(labels: torch.Tensor, num_classes: int, what: str) -> None:
    """Labels must index the model's classes (inputs given without labels have none to check)."""
    if bool((labels == UNLABELLED).all()):
        return
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= num_classes:
        raise InvalidInputError(
            f"{what} has labels in [{low}, {high}] but the model outputs {num_classes} classes (labels 0.."
            f"{num_classes - 1})"
        )


def split_validation(
    data: LabelledTensors, held_out: float, seed: int, *, min_samples: int = 0, in_order: bool = False
) -> tuple[LabelledTensors, LabelledTensors | None]:
    """``data`` as ``(kept, held_out)``: a seeded random share ``held_out`` of the samples is held out::

        order = randperm(n, seed)     k = round(held_out * n)     held = order[:k]     kept = order[k:]

    The one split of labelled data: recovery holds out a validation share of ``train_data``; the search
    keeps a tuning share of ``validation_data`` and scores on the rest. Below ``min_samples`` samples both
    shares would be too coarse to decide with, so all of ``data`` is both: ``(data, data)``. A share of 0,
    or one that rounds to no sample or to all of them: no split, ``(data, None)``. ``in_order`` keeps each
    share in the data's order (else the permutation's, which a seeded shuffle then starts from)."""
    n = len(data)
    if n < min_samples:
        return data, data
    k = round(n * held_out)
    if held_out == 0 or k == 0 or k >= n:
        return data, None
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    held, kept = order[:k], order[k:]
    if in_order:
        held, kept = held.sort().values, kept.sort().values
    return data.subset(kept), data.subset(held)
