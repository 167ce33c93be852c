"""The data a search reads: read once, split into a tuning and a scoring share, and fingerprinted.

Decisions a candidate makes from labelled data (early-exit thresholds, which layers fall back to fp32)
are taken on the *tuning* share of ``validation_data``; the candidate is scored on the *scoring* share,
which none of its decisions saw, so the accuracy the search reports is what new data will see. A small
validation set (under :data:`MIN_SAMPLES_TO_SPLIT` samples) is not split: halves of 180 digits images
would move in steps of 0.56 pp, coarser than the goals; then the scores of tuned candidates are
optimistic, and the report says so. Test data (``eval_data``) is only reported.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from graphopt.data import labelled
from graphopt.data.batches import Batch
from graphopt.data.dims import DynamicDims
from graphopt.data.labelled import labelled_batches, read_eval_batches, read_labelled
from graphopt.errors import InvalidInputError
from graphopt.pipeline.driver import OptimizeCall
from graphopt.search.goals import Goals

#: Below this many validation samples both shares would be too coarse to decide or to score with (an
#: exit budget of 0.3 pp is less than one sample of 180): tuning and scoring then share all of them.
MIN_SAMPLES_TO_SPLIT = 2000
SPLIT_BATCH = 256


def split_tune_score(
    data: list[Batch] | None, tune_share: float
) -> tuple[list[Batch] | None, list[Batch] | None]:
    """``data`` as (tuning, scoring) batches: a fixed random ``tune_share`` of the samples and the rest,
    each in the data's order (:func:`graphopt.data.labelled.split_validation`, seed 0); with fewer than
    :data:`MIN_SAMPLES_TO_SPLIT` samples, all of them for both (the batches as given)."""
    if data is None:
        return None, None
    if sum(len(labels) for _, labels in data) < MIN_SAMPLES_TO_SPLIT:
        return data, data  # as given: batches of several lengths along a dynamic dim stay as they are
    samples = read_labelled(data, "validation_data", None)
    score, tune = labelled.split_validation(
        samples, tune_share, 0, min_samples=MIN_SAMPLES_TO_SPLIT, in_order=True
    )
    if tune is score:
        return data, data
    if tune is None:
        raise InvalidInputError(
            f"validation_data has {len(samples)} samples: too few to keep {tune_share:.0%} for tuning and "
            "the rest for scoring; give more labelled samples"
        )
    return list(tune.batches(SPLIT_BATCH)), list(score.batches(SPLIT_BATCH))


def materialized(
    call: OptimizeCall, goals: Goals, inputs: tuple[torch.Tensor, ...], dims: DynamicDims
) -> OptimizeCall:
    """Data read once: each candidate iterates it again (a generator would be empty the second time); the
    labelled sets as checked batches (:func:`graphopt.data.labelled.read_eval_batches`). Validation data
    may be the model's inputs alone (the cosine goal needs no labels), unless an accuracy goal reads it;
    ``inputs`` and ``dims``: the call's example inputs and dynamic dims, checked."""

    def once(data: Iterable[Any] | None) -> Any:
        return data if data is None or isinstance(data, (list, tuple)) else list(data)

    validation = read_eval_batches(call.validation_data, "validation_data", dims, inputs, inputs_only=True)
    if goals.needs_accuracy and validation is not None and not labelled_batches(validation):
        raise InvalidInputError(
            "an accuracy goal is scored on labelled validation_data: batches of (inputs, labels); inputs "
            "alone can score a cosine goal (Goals(min_cosine=...)), not an accuracy drop"
        )
    return dataclasses.replace(
        call,
        calibration_data=once(call.calibration_data),
        train_data=once(call.train_data),
        validation_data=validation,
        eval_data=read_eval_batches(call.eval_data, "eval_data"),
    )


def check_search_data(call: OptimizeCall, goals: Goals) -> None:
    if goals.needs_accuracy and call.validation_data is None:
        raise InvalidInputError(
            "an accuracy goal is scored on validation_data=...: labelled batches (inputs, labels) the model "
            "was not trained on; eval_data (test data) is only reported, never used to choose"
        )
    if goals.min_cosine is not None and call.validation_data is None:
        raise InvalidInputError(
            "a cosine goal is scored on validation_data=...: batches of the model's inputs (labels "
            "optional) it was not trained on; each candidate's outputs on them are compared with the "
            "original's"
        )


def scope_of(call: OptimizeCall, spec: object) -> str:
    """What a cached stage depends on besides its passes: the model's weights, the data, the target."""
    digest = hashlib.sha256()
    for name, tensor in _private_state(call.model):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    for what in ("calibration_data", "train_data", "validation_data"):
        digest.update(f"{what}:{data_digest(getattr(call, what))}".encode())
    digest.update(repr(spec).encode())
    return digest.hexdigest()[:16]


def _private_state(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    return sorted(model.state_dict().items())


def data_digest(data: Any) -> str:
    if data is None:
        return "none"
    digest = hashlib.sha256()
    for item in data:
        for tensor in _tensors(item):
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def _tensors(item: Any) -> list[torch.Tensor]:
    if isinstance(item, torch.Tensor):
        return [item]
    if isinstance(item, (list, tuple)):
        return [t for x in item for t in _tensors(x)]
    return []
