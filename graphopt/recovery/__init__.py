"""Recovery: fine-tuning with knowledge distillation and BatchNorm re-estimation, used by lossy passes."""

from __future__ import annotations

from graphopt.recovery.batchnorm import reestimate_batchnorm
from graphopt.recovery.config import DistillConfig, FeatureHint, OptimizerConfig, RecoveryConfig
from graphopt.recovery.engine import RecoveryJob, RecoveryResult, evaluate, fit
from graphopt.recovery.losses import RecoveryLoss, distillation_loss

__all__ = [
    "DistillConfig",
    "FeatureHint",
    "OptimizerConfig",
    "RecoveryConfig",
    "RecoveryJob",
    "RecoveryLoss",
    "RecoveryResult",
    "distillation_loss",
    "evaluate",
    "fit",
    "reestimate_batchnorm",
]
