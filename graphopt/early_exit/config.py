"""Typed options of early exit."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import torch

from graphopt.errors import ConfigError
from graphopt.pipeline.pass_base import PassOptions
from graphopt.recovery.config import DistillConfig

if TYPE_CHECKING:
    from graphopt.targets import Target


@dataclass(frozen=True)
class EarlyExitConfig(PassOptions):
    """Where exits go, how their heads train, and how much accuracy their thresholds may cost.

    - ``exits``: node or module names to exit after (a module name means the last exit point inside it);
      empty: the exit points closest to ``fractions`` of the network's MACs.
    - ``head``: ``linear`` (global pooling + linear, like the classifier), ``conv`` (a 3x3 conv first) or
      ``spatial`` (pooling to 4x4, then linear: keeps where features are, for early exits).
    - Heads train with the backbone frozen, on labels and distilled from the final output (``distill``),
      for ``epochs`` on ``train_data`` plus ``augment_copies`` copies of it passed through ``augment``
      (when given: heads trained on the backbone's features of the very samples it was trained on learn
      to be overconfident; shifted copies look more like new data). The backbone's features are cached
      once; when they would take more than ``cache_bytes``, a seeded random subset that fits is used (the
      report's ``head_samples`` / ``head_samples_available``).
    - The thresholds are calibrated on ``validation_data`` (data the model was not trained on) to minimise
      the expected cost per sample while the expected accuracy drop on new data against the network without
      exits stays within ``accuracy_budget`` percentage points (conformal risk control, see
      :mod:`graphopt.early_exit.thresholds`). Without ``validation_data``, ``holdout_fraction`` of
      ``train_data`` is held out from head training and used instead.
    - ``cost``: ``runtime`` measures each exit path in ``target``'s runtime (lowered with its backend, timed
      side by side; :mod:`graphopt.early_exit.paths`) and keeps the subset of the trained exits with the
      lowest expected latency (:mod:`graphopt.early_exit.selection`); ``macs`` counts MACs and keeps every
      exit. ``runtime`` falls back to MACs, with a note, when the target's CPU family is not this machine's
      or its backend cannot lower the exit network. ``target`` is filled in by ``optimize`` (its target);
      None: ``generic-fp32`` (ONNX Runtime).
    - ``joint_epochs > 0`` then fine-tunes backbone and heads together (every exit distilled from the
      original network's output, ``augment`` applied to the inputs): early features become more
      separable, so early heads take more samples; the backbone changes, so the exit-free path is no longer
      exactly the original.
    """

    exits: tuple[str, ...] = ()
    fractions: tuple[float, ...] = (0.33, 0.66)
    head: Literal["linear", "conv", "spatial"] = "spatial"
    criterion: Literal["max_prob", "entropy"] = "max_prob"
    accuracy_budget: float = 0.3
    epochs: int = 30
    lr: float = 3e-3
    batch_size: int = 64
    holdout_fraction: float = 0.25
    distill: DistillConfig = field(default_factory=DistillConfig)
    cost: Literal["runtime", "macs"] = "runtime"
    target: Target | str | None = None
    joint_epochs: int = 0
    joint_lr: float = 1e-3
    augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None
    augment_copies: int = 3
    #: Memory for the cached backbone features heads train on; beyond it a seeded random subset is used.
    cache_bytes: int = 2 * 1024**3
    seed: int = 0
    quiet: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.exits, str):
            raise ConfigError("exits must be a tuple of node or module names, e.g. exits=('stages.0',)")
        if not self.exits and (not self.fractions or not all(0 < f < 1 for f in self.fractions)):
            raise ConfigError(f"fractions must be MAC shares in (0, 1), got {self.fractions!r}")
        heads, criteria, costs = ("linear", "conv", "spatial"), ("max_prob", "entropy"), ("runtime", "macs")
        if self.head not in heads or self.criterion not in criteria or self.cost not in costs:
            raise ConfigError(
                f"head must be one of {heads}, criterion one of {criteria} and cost one of {costs}; got "
                f"{self.head!r}, {self.criterion!r}, {self.cost!r}"
            )
        if not self.accuracy_budget >= 0:
            raise ConfigError(f"accuracy_budget is percentage points >= 0, got {self.accuracy_budget!r}")
        if (
            self.epochs < 1
            or self.batch_size < 1
            or not self.lr > 0
            or min(self.joint_epochs, self.augment_copies) < 0
            or self.cache_bytes < 1
        ):
            raise ConfigError(
                "epochs, batch_size and cache_bytes must be >= 1, joint_epochs and augment_copies >= 0, "
                "lr > 0"
            )
        if not 0 < self.holdout_fraction < 1:
            raise ConfigError(f"holdout_fraction must be in (0, 1), got {self.holdout_fraction!r}")
