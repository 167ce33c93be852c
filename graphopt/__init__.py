"""graphopt: a compiler-style graph optimizer for trained PyTorch models on edge CPUs.

res = graphopt.optimize(model, target="arm-fp32", example_inputs=(x,))
print(res.report)
res.export("model.onnx")
"""

from __future__ import annotations

from graphopt.api import optimize
from graphopt.artifacts.result import OptimizeResult
from graphopt.artifacts.serialize import load
from graphopt.distill import DistillResult, distill
from graphopt.early_exit import EarlyExitConfig
from graphopt.errors import (
    CaptureError,
    ConfigError,
    ExportError,
    GraphoptError,
    InvalidInputError,
    InvalidModelError,
    PassError,
    SerializationError,
    TrainingDivergedError,
    UnknownNameError,
    WriteError,
)
from graphopt.passes.sparsify import SparsifyConfig
from graphopt.pipeline.pass_base import Pass, PassContext, PassOptions, PassResult
from graphopt.pipeline.pass_manager import PassManager, PassRecord
from graphopt.pipeline.registry import list_passes, register_pass
from graphopt.pruning import PruneConfig
from graphopt.quant.options import WeightQuant
from graphopt.recovery import DistillConfig, FeatureHint, OptimizerConfig, RecoveryConfig, RecoveryResult
from graphopt.reporting.report import Report, StageRecord
from graphopt.search import Goals, SearchConfig
from graphopt.targets import TARGETS, BackendSettings, NumericScheme, PassSpec, Target

__version__ = "0.1.0"

__all__ = [
    "TARGETS",
    "BackendSettings",
    "CaptureError",
    "ConfigError",
    "DistillConfig",
    "DistillResult",
    "EarlyExitConfig",
    "ExportError",
    "FeatureHint",
    "Goals",
    "GraphoptError",
    "InvalidInputError",
    "InvalidModelError",
    "NumericScheme",
    "OptimizeResult",
    "OptimizerConfig",
    "Pass",
    "PassContext",
    "PassError",
    "PassManager",
    "PassOptions",
    "PassRecord",
    "PassResult",
    "PassSpec",
    "PruneConfig",
    "RecoveryConfig",
    "RecoveryResult",
    "Report",
    "SearchConfig",
    "SerializationError",
    "SparsifyConfig",
    "StageRecord",
    "Target",
    "TrainingDivergedError",
    "UnknownNameError",
    "WeightQuant",
    "WriteError",
    "__version__",
    "distill",
    "list_passes",
    "load",
    "optimize",
    "register_pass",
]
