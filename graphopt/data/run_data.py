"""Every dataset of one call, read and checked once into one typed form: :class:`RunData`.

    example_inputs ─┐
    dynamic_shapes ─┤
    calibration_data ──read_calibration_inputs──▶ CalibrationBatches  (input tuples)
    train_data ────────read_labelled────────────▶ LabelledTensors     (concatenated; may be inputs only)
    validation_data ───read_labelled────────────▶ LabelledTensors
    eval_data ─────────read_eval_batches────────▶ list of (input tuple, labels)

The driver builds it before any pass runs (bad data fails first, with the expected form named); passes,
the recovery engine and the report take it as it is and never read, normalise or check it again. Each
iterable the caller gave is iterated exactly once, so a generator works.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch

from graphopt.data.batches import Batch
from graphopt.data.calibration import CalibrationBatches, read_calibration_inputs
from graphopt.data.dims import DynamicDims
from graphopt.data.labelled import LabelledTensors, check_label_range, read_eval_batches, read_labelled

#: The names of the data a pass may read, as the caller gave them to ``optimize``.
DATA_NAMES = ("calibration_data", "train_data", "validation_data", "eval_data")


@dataclass(frozen=True)
class RunData:
    """The call's data, read and checked: what passes receive (through ``PassContext``)."""

    example_inputs: tuple[torch.Tensor, ...]
    dynamic: DynamicDims = field(default_factory=DynamicDims)
    calibration: CalibrationBatches | None = None
    train: LabelledTensors | None = None
    validation: LabelledTensors | None = None
    #: Held-out labelled batches: the report measures accuracy on them after every pass.
    eval: list[Batch] | None = None

    def given(self) -> list[str]:
        """The names of the data the caller gave (:data:`DATA_NAMES`)."""
        values = (self.calibration, self.train, self.validation, self.eval)
        return [name for name, value in zip(DATA_NAMES, values, strict=True) if value is not None]


def read_run_data(
    example_inputs: tuple[torch.Tensor, ...],
    dynamic: DynamicDims | None = None,
    *,
    calibration_data: Iterable[Any] | None = None,
    train_data: Iterable[Any] | None = None,
    validation_data: Iterable[Any] | None = None,
    eval_data: Iterable[Any] | None = None,
    num_classes: int | None = None,
) -> RunData:
    """The call's data read and checked once: shapes against ``example_inputs`` (``dynamic``'s dims may
    differ), labels within ``num_classes`` (the width of the model's logits; None: not checked). Data
    already read (a :class:`LabelledTensors`, :class:`CalibrationBatches`) is taken as it is."""
    dims = dynamic or DynamicDims()
    calibration = (
        calibration_data
        if calibration_data is None or isinstance(calibration_data, CalibrationBatches)
        else read_calibration_inputs(calibration_data, example_inputs, dims)
    )
    data = RunData(
        example_inputs=example_inputs,
        dynamic=dims,
        calibration=calibration,
        train=_labelled(train_data, "train_data", example_inputs, dims),
        validation=_labelled(validation_data, "validation_data", example_inputs, dims),
        eval=read_eval_batches(eval_data, "eval_data", dims, example_inputs),
    )
    if num_classes is not None:
        _check_labels(data, num_classes)
    return data


def _labelled(
    data: Iterable[Any] | None, what: str, example_inputs: tuple[torch.Tensor, ...], dynamic: DynamicDims
) -> LabelledTensors | None:
    if data is None or isinstance(data, LabelledTensors):
        return data
    # train_data may be inputs alone (recovery then distills from the original); the others decide or
    # measure by their labels
    return read_labelled(data, what, example_inputs, dynamic, inputs_only=what == "train_data")


def _check_labels(data: RunData, num_classes: int) -> None:
    """Labels must index the model's classes: out-of-range labels would read as 0 % accuracy, or fail deep
    inside the loss, rather than as an error."""
    for what, labelled in (("train_data", data.train), ("validation_data", data.validation)):
        if labelled is not None:
            check_label_range(labelled.labels, num_classes, what)
    if data.eval is not None:
        labels = torch.cat([torch.as_tensor(y).reshape(-1) for _, y in data.eval])
        check_label_range(labels, num_classes, "eval_data")
