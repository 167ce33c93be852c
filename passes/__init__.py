"""Built-in rewrite passes, one per module; installed as ``graphopt.passes``.

:data:`BUILTIN_PASSES` is the explicit list the registry loads. Outside passes use
``graphopt.register_pass``.
"""

from __future__ import annotations

from graphopt.passes.accuracy_budget import AccuracyBudget, AccuracyBudgetOptions
from graphopt.passes.adaround import AdaRound, AdaRoundOptions
from graphopt.passes.allocate_weight_bits import AllocateWeightBits, AllocateWeightBitsOptions
from graphopt.passes.bias_correction import BiasCorrection, BiasCorrectionOptions
from graphopt.passes.calibrate import Calibrate, CalibrateOptions
from graphopt.passes.eliminate_dead_code import EliminateDeadCode, EliminateDeadCodeOptions
from graphopt.passes.equalize import Equalize, EqualizeOptions
from graphopt.passes.fold_batchnorm import FoldBatchNorm, FoldBatchNormOptions
from graphopt.passes.improve_int8 import ImproveInt8, ImproveInt8Options
from graphopt.passes.insert_early_exit import InsertEarlyExit
from graphopt.passes.insert_fake_quant import InsertFakeQuant, InsertFakeQuantOptions
from graphopt.passes.probe_int8 import ProbeInt8
from graphopt.passes.prune_channels import PruneChannels
from graphopt.passes.qat import QuantizationAwareTraining
from graphopt.passes.quantize_dynamic import QuantizeDynamic, QuantizeDynamicOptions
from graphopt.passes.recover import Recover
from graphopt.passes.reestimate_batchnorm import ReestimateBatchNorm, ReestimateBatchNormOptions
from graphopt.passes.remove_identity import RemoveIdentity, RemoveIdentityOptions
from graphopt.passes.sequential_mse import SequentialMse, SequentialMseOptions
from graphopt.passes.space_to_depth import SpaceToDepthOptions, SpaceToDepthRewrite
from graphopt.passes.sparsify import Sparsify, SparsifyConfig

BUILTIN_PASSES = (
    FoldBatchNorm,
    RemoveIdentity,
    EliminateDeadCode,
    PruneChannels,
    Equalize,
    ReestimateBatchNorm,
    ProbeInt8,
    Recover,
    InsertFakeQuant,
    Calibrate,
    AllocateWeightBits,
    SequentialMse,
    AdaRound,
    BiasCorrection,
    InsertEarlyExit,
    ImproveInt8,
    AccuracyBudget,
    QuantizationAwareTraining,
    Sparsify,
    SpaceToDepthRewrite,
    QuantizeDynamic,
)

__all__ = [
    "BUILTIN_PASSES",
    "AccuracyBudget",
    "AccuracyBudgetOptions",
    "AdaRound",
    "AdaRoundOptions",
    "AllocateWeightBits",
    "AllocateWeightBitsOptions",
    "BiasCorrection",
    "BiasCorrectionOptions",
    "Calibrate",
    "CalibrateOptions",
    "EliminateDeadCode",
    "EliminateDeadCodeOptions",
    "Equalize",
    "EqualizeOptions",
    "FoldBatchNorm",
    "FoldBatchNormOptions",
    "ImproveInt8",
    "ImproveInt8Options",
    "InsertEarlyExit",
    "InsertFakeQuant",
    "InsertFakeQuantOptions",
    "ProbeInt8",
    "PruneChannels",
    "QuantizationAwareTraining",
    "QuantizeDynamic",
    "QuantizeDynamicOptions",
    "Recover",
    "ReestimateBatchNorm",
    "ReestimateBatchNormOptions",
    "RemoveIdentity",
    "RemoveIdentityOptions",
    "SequentialMse",
    "SequentialMseOptions",
    "SpaceToDepthOptions",
    "SpaceToDepthRewrite",
    "Sparsify",
    "SparsifyConfig",
]
