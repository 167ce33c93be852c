"""Typed configuration of recovery training (fine-tuning with knowledge distillation)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Literal

import torch

from graphopt.errors import ConfigError
from graphopt.pipeline.pass_base import PassOptions

if TYPE_CHECKING:
    from graphopt.recovery.engine import RecoveryJob


@dataclass(frozen=True)
class OptimizerConfig:
    """The optimizer and its peak learning rate (the schedule scales it)."""

    name: Literal["adamw", "sgd"] = "adamw"
    lr: float = 1e-3
    weight_decay: float = 1e-4
    momentum: float = 0.9  # SGD only

    def __post_init__(self) -> None:
        if self.name not in ("adamw", "sgd"):
            raise ConfigError(f"optimizer must be 'adamw' or 'sgd', got {self.name!r}")
        if not self.lr > 0 or self.weight_decay < 0:
            raise ConfigError(
                f"lr must be > 0 and weight_decay >= 0, got lr={self.lr}, wd={self.weight_decay}"
            )


@dataclass(frozen=True)
class DistillConfig:
    """Logit distillation (Hinton et al., 2015): ``alpha * CE(labels) + (1 - alpha) * tau^2 * KL``.

    ``alpha = 1`` trains on labels alone (no teacher forward pass at all). The default puts most weight on
    the soft targets, as Hinton et al. recommend ("a considerably lower weight on the second objective",
    the hard labels); on digits it measured best of alpha 0.1 / 0.3 / 0.5 (bench/distill_digits.py).
    """

    tau: float = 4.0
    alpha: float = 0.1

    def __post_init__(self) -> None:
        if not self.tau > 0:
            raise ConfigError(f"tau must be > 0, got {self.tau}")
        if not 0 <= self.alpha <= 1:
            raise ConfigError(f"alpha must be in [0, 1], got {self.alpha}")


@dataclass(frozen=True)
class FeatureHint:
    """Match the output of student submodule ``student`` to teacher submodule ``teacher`` (FitNets, 2015).

    Names are qualified module names (``features.3``); a graph node of the IR that calls a module has that
    module's name. When channel counts differ (after pruning) a trainable 1x1 adapter maps student channels
    to teacher channels; it is discarded after training.
    """

    student: str
    teacher: str
    weight: float = 1.0

    def __post_init__(self) -> None:
        if self.weight < 0:
            raise ConfigError(f"hint weight must be >= 0, got {self.weight}")


#: Fine-tuning on the labels alone: no teacher forward pass, the ablation that measures distillation's gain.
LABELS_ONLY = DistillConfig(alpha=1.0)

Schedule = Literal["constant", "cosine", "onecycle"]


@dataclass(frozen=True)
class RecoveryConfig(PassOptions):
    """How to fine-tune a student against a teacher.

    - ``epochs`` passes over the training split; ``max_steps`` caps optimizer steps in total.
    - ``val_fraction`` of the training data is held out (seeded) unless validation data is given; each epoch
      ends with validation accuracy, the best weights are kept, and ``patience`` epochs without improvement
      stop training early (``None``: never).
    - ``train_fn`` replaces the built-in loop by the user's own (DDP, Lightning, accelerate): it receives a
      :class:`~graphopt.recovery.engine.RecoveryJob` with the student, the teacher and the loss.
    - ``augment(x, generator)`` transforms each training batch's first input (built-in loop only).
    - ``keep_zero_weights``: weight tensors' entries that are exactly zero when training starts stay zero
      (the masks of unstructured sparsity survive fine-tuning): re-applied after every optimizer step of the
      built-in loop, once after a ``train_fn``.
    - ``device``: ``"cuda"`` trains on the GPU when one is available and on the CPU otherwise.
    - ``channels_last``: train in the channels-last memory format (4-D inputs and conv weights; the model
      goes back to the default format afterwards). oneDNN's convolutions are faster in it on the CPU:
      fashion_resnet training steps (batch 128, 2 AVX2 cores) took 189 ms instead of 246 ms. Off by default
      because a model that ``view``s a channels-last activation fails (checked before training starts).
    - ``qat_lr``: the peak learning rate when this config trains the QAT stage (``None``: ``optimizer.lr``).
      One config trains both stages of ``optimize(prune=..., recovery=...)``, and they want different rates:
      a network that lost half its channels recovers best at a high rate, QAT starts from a calibrated int8
      graph that is already accurate. Measured on fashion_resnet: pruned 0.5, two epochs one-cycle at 0.01
      recovered to 91.56 % (0.57 pp under the original) where cosine from 1e-3 reached 90.90 %; but QAT of
      the unpruned network at 0.01 diverged (validation 27 % after one epoch, 33 % after two; the engine
      kept the calibrated start).
    """

    epochs: int = 10
    max_steps: int | None = None
    batch_size: int = 64
    optimizer: OptimizerConfig = OptimizerConfig()
    schedule: Schedule = "cosine"
    distill: DistillConfig = DistillConfig()
    hints: tuple[FeatureHint, ...] = ()
    val_fraction: float = 0.1
    patience: int | None = 5
    seed: int = 0
    device: str = "cpu"
    quiet: bool = False
    train_fn: Callable[[RecoveryJob], None] | None = None
    augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None
    keep_zero_weights: bool = False
    qat_lr: float | None = None
    channels_last: bool = False

    def __post_init__(self) -> None:
        if self.qat_lr is not None and not self.qat_lr > 0:
            raise ConfigError(f"qat_lr must be > 0 or None, got {self.qat_lr}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ConfigError(f"epochs and batch_size must be >= 1, got {self.epochs}, {self.batch_size}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ConfigError(f"max_steps must be >= 1 or None, got {self.max_steps}")
        if self.schedule not in ("constant", "cosine", "onecycle"):
            raise ConfigError(f"schedule must be 'constant', 'cosine' or 'onecycle', got {self.schedule!r}")
        if not 0 <= self.val_fraction < 1:
            raise ConfigError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.patience is not None and self.patience < 1:
            raise ConfigError(f"patience must be >= 1 or None, got {self.patience}")
        if not isinstance(self.hints, tuple) or not all(isinstance(h, FeatureHint) for h in self.hints):
            raise ConfigError("hints must be a tuple of FeatureHint")
        try:
            torch.device(self.device)
        except RuntimeError as exc:
            raise ConfigError(
                f"device must be a torch device string such as 'cpu' or 'cuda': {exc}"
            ) from None


def for_qat(config: RecoveryConfig) -> RecoveryConfig:
    """``config`` as the QAT stage trains with it: its ``qat_lr`` as the peak rate, when set."""
    if config.qat_lr is None:
        return config
    return replace(config, optimizer=replace(config.optimizer, lr=config.qat_lr))


#: What :func:`graphopt.distill` trains with when given no config. A *new* student starts from random weights,
#: so recovery's defaults (10 epochs at lr 1e-3, tuned for fine-tuning a pruned copy that starts close to its
#: teacher) leave it far from converged: a half-width digits student reached 90.3-93.1 % with them. 30 epochs
#: of one-cycle at peak lr 0.01 with no early stop reached 99.72 / 99.72 / 99.17 % on seeds 0 / 1 / 2 (the
#: tuned bench settings, which add +-1 px shifts: 99.44 / 99.44 / 99.17 %), bench/distill_digits.py's data.
NEW_STUDENT = RecoveryConfig(
    epochs=30, optimizer=OptimizerConfig(lr=0.01), schedule="onecycle", patience=None
)
