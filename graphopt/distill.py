"""``graphopt.distill``: train a user-supplied (smaller) student from a teacher.

Neither model given is touched: the teacher is copied and frozen, the student is copied and the trained copy
is returned, with what happened.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from graphopt.data.labelled import LabelledTensors, read_labelled
from graphopt.errors import ConfigError, InvalidInputError
from graphopt.frontend.inputs import check_model, private_eval_copy
from graphopt.recovery.config import NEW_STUDENT, RecoveryConfig
from graphopt.recovery.engine import RecoveryResult, fit
from graphopt.reporting.numerics import flatten_outputs


@dataclass
class DistillResult:
    student: nn.Module
    recovery: RecoveryResult


def distill(
    teacher: nn.Module,
    student: nn.Module,
    train_data: Iterable[Any],
    config: RecoveryConfig | None = None,
    *,
    val_data: Iterable[Any] | None = None,
) -> DistillResult:
    """Train a copy of ``student`` on ``train_data`` (``(inputs, labels)`` batches, or input tensors alone:
    then the student learns the teacher's outputs only) with knowledge distillation from ``teacher``;
    :class:`RecoveryConfig` sets the loss, schedule, validation and the ``train_fn`` hook. Without one,
    :data:`~graphopt.recovery.config.NEW_STUDENT` (30 epochs, one-cycle, peak lr 0.01): settings for a
    student trained from scratch."""
    check_model(teacher)
    check_model(student)
    if config is not None and not isinstance(config, RecoveryConfig):
        raise ConfigError(
            f"config must be a graphopt.RecoveryConfig, got {type(config).__name__}: "
            "e.g. RecoveryConfig(epochs=1)"
        )
    frozen_teacher = private_eval_copy(teacher)
    trained = private_eval_copy(student)
    data = read_labelled(train_data, "train_data", None, inputs_only=True)
    _check_pair(frozen_teacher, trained, data)
    result = fit(trained, frozen_teacher, data, config or NEW_STUDENT, val_data=val_data, desc="distill")
    return DistillResult(trained, result)


def _check_pair(teacher: nn.Module, student: nn.Module, data: LabelledTensors) -> None:
    """Both models must run on the data's inputs and give logits of one width, before any training."""
    sample = tuple(x[:2] for x in data.inputs)
    shapes = ", ".join(str(tuple(x.shape)) for x in sample)
    widths = {}
    for name, model in (("teacher", teacher), ("student", student)):
        try:
            with torch.no_grad():
                out = model(*sample)
        except Exception as exc:  # whatever the user's model raises on inputs it does not take
            raise InvalidInputError(
                f"the {name} fails on train_data's inputs (shapes {shapes}): {type(exc).__name__}: "
                f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''}. Teacher and student must "
                "take the same inputs"
            ) from exc
        leaves = flatten_outputs(out)
        widths[name] = tuple(leaves[0].shape[1:]) if leaves else None
    if widths["teacher"] != widths["student"]:
        raise InvalidInputError(
            f"teacher outputs {widths['teacher']} per sample but the student {widths['student']}: "
            "distillation matches their logits, so both must predict the same classes"
        )
