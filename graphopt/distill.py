"""``graphopt.distill``: train a user-supplied (smaller) student from a teacher.

Neither model given is touched: the teacher is copied and frozen, the student is copied and the trained copy
is returned, with what happened.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from torch import nn

from graphopt.inputs import check_model, private_eval_copy
from graphopt.recovery.config import RecoveryConfig
from graphopt.recovery.engine import RecoveryResult, fit


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
    """Train a copy of ``student`` on ``train_data`` (``(inputs, labels)`` batches) with knowledge
    distillation from ``teacher``; :class:`RecoveryConfig` sets the loss, schedule, validation and the
    ``train_fn`` hook."""
    check_model(teacher)
    check_model(student)
    frozen_teacher = private_eval_copy(teacher)
    trained = private_eval_copy(student)
    result = fit(
        trained, frozen_teacher, train_data, config or RecoveryConfig(), val_data=val_data, desc="distill"
    )
    return DistillResult(trained, result)
