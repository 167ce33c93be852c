"""The recovery loss: label cross-entropy, logit distillation and optional feature hints.

Logit distillation (Hinton et al., 2015), student logits ``s``, teacher logits ``t``, temperature ``tau``:

    L = alpha * CE(s, y) + (1 - alpha) * tau^2 * KL(softmax(t / tau) || softmax(s / tau))

The teacher's softened distribution is the target, as in the paper and every implementation of it; the
``tau^2`` factor keeps the gradient scale of the soft term independent of ``tau``.

Without labels (``train_data`` given as inputs only) the student regresses the teacher's outputs, whatever
they are (class logits, a sentence embedding), by their relative squared error:

    L = sum (s - t)^2 / sum t^2

(scale-free, so unit-norm embeddings and large logits train at one learning rate; 0 when the student
matches, 1 when it outputs zeros).

Feature hints (FitNets, Romero et al., 2015) add ``sum_k w_k * MSE(A_k(f_s^k), f_t^k)`` between the outputs
of matched student / teacher submodules, where ``A_k`` is an identity when the shapes match and a trainable
1x1 convolution (or linear map on the last dimension) when only the channel counts differ.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from graphopt.errors import ConfigError
from graphopt.recovery.config import DistillConfig, FeatureHint


def distillation_loss(
    student: Tensor, teacher: Tensor | None, labels: Tensor, config: DistillConfig
) -> Tensor:
    """``alpha * CE + (1 - alpha) * tau^2 * KL(p_t || p_s)``; labels only when ``alpha == 1``."""
    loss = F.cross_entropy(student, labels)
    if config.alpha == 1 or teacher is None:
        return loss
    tau = config.tau
    soft = F.kl_div(F.log_softmax(student / tau, -1), F.log_softmax(teacher / tau, -1), log_target=True,
                    reduction="batchmean")  # fmt: skip
    return config.alpha * loss + (1 - config.alpha) * tau * tau * soft


class _FeatureTap:
    """Keeps the latest output of one submodule (a forward hook)."""

    def __init__(self, module: nn.Module):
        self.value: Tensor | None = None
        self.handle = module.register_forward_hook(self._store)

    def _store(self, module: nn.Module, inputs: Any, output: Any) -> None:
        self.value = output[0] if isinstance(output, (tuple, list)) else output


def _adapter(student_shape: torch.Size, teacher_shape: torch.Size, hint: FeatureHint) -> nn.Module:
    if student_shape == teacher_shape:
        return nn.Identity()
    if len(student_shape) != len(teacher_shape) or len(student_shape) < 2:
        raise ConfigError(f"hint {hint.student} -> {hint.teacher}: shapes {tuple(student_shape)} and "
                          f"{tuple(teacher_shape)} cannot be matched")  # fmt: skip
    if len(student_shape) >= 3 and student_shape[2:] == teacher_shape[2:] and len(student_shape) in (3, 4):
        conv = nn.Conv2d if len(student_shape) == 4 else nn.Conv1d
        return conv(student_shape[1], teacher_shape[1], kernel_size=1)
    if student_shape[:-1] == teacher_shape[:-1]:
        return nn.Linear(student_shape[-1], teacher_shape[-1])
    raise ConfigError(f"hint {hint.student} -> {hint.teacher}: only channel counts may differ, got "
                      f"{tuple(student_shape)} vs {tuple(teacher_shape)}")  # fmt: skip


def _submodule(model: nn.Module, name: str, role: str) -> nn.Module:
    try:
        return model.get_submodule(name)
    except AttributeError:
        names = [n for n, _ in model.named_modules() if n][:12]
        raise ConfigError(f"hint names {role} submodule {name!r}, which does not exist; some that do: "
                          f"{', '.join(names)}") from None  # fmt: skip


def output_matching_loss(student: Tensor, teacher: Tensor) -> Tensor:
    """``sum (s - t)^2 / sum t^2``: the loss without labels (module docstring)."""
    return (student - teacher).pow(2).sum() / teacher.pow(2).sum().clamp_min(1e-12)


class RecoveryLoss(nn.Module):
    """Distillation loss bound to one student/teacher pair; owns the hint adapters (its parameters)."""

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module | None,
        config: DistillConfig,
        hints: tuple[FeatureHint, ...],
        sample: tuple[Tensor, ...],
        *,
        labelled: bool = True,
    ):
        super().__init__()
        self.config, self.hints, self.labelled = config, hints, labelled
        self.uses_teacher = teacher is not None and (config.alpha < 1 or bool(hints) or not labelled)
        if hints and teacher is None:
            raise ConfigError("feature hints need a teacher")
        if not labelled and teacher is None:
            raise ConfigError(
                "train_data has no labels, so training needs a teacher to learn from: distillation from the "
                "original model (graphopt.optimize's recovery does that), or give (inputs, labels) batches"
            )
        self._taps = [
            (
                _FeatureTap(_submodule(student, h.student, "student")),
                _FeatureTap(_submodule(teacher, h.teacher, "teacher")),
            )
            for h in hints
        ]
        self.adapters = nn.ModuleList()
        if hints:
            with torch.no_grad():
                student(*sample)
                teacher(*sample)
            for hint, (s_tap, t_tap) in zip(hints, self._taps, strict=True):
                self.adapters.append(_adapter(s_tap.value.shape, t_tap.value.shape, hint))

    def forward(self, student_logits: Tensor, teacher_logits: Tensor | None, labels: Tensor) -> Tensor:
        if self.labelled:
            loss = distillation_loss(student_logits, teacher_logits, labels, self.config)
        else:
            assert teacher_logits is not None  # uses_teacher: the engine ran the teacher
            loss = output_matching_loss(student_logits, teacher_logits)
        for hint, adapter, (s_tap, t_tap) in zip(self.hints, self.adapters, self._taps, strict=True):
            loss = loss + hint.weight * F.mse_loss(adapter(s_tap.value), t_tap.value.detach())
        return loss

    def detach_hooks(self) -> None:
        for s_tap, t_tap in self._taps:
            s_tap.handle.remove()
            t_tap.handle.remove()

    def trainable(self) -> Iterator[nn.Parameter]:
        return self.adapters.parameters()
