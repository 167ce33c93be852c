"""Re-estimate BatchNorm running statistics on calibration data (no labels, no gradients).

The cheap first step of recovery after an edit that shifts activations (pruning): see
:func:`graphopt.recovery.reestimate_batchnorm` for the math. Run it before ``fold_batchnorm``; once folded
there is nothing left to re-estimate. Without calibration data it uses the inputs of
``train_data``. Skipped, with the reason in ``stats``: ``skipped:no_batchnorm``,
``skipped:no_calibration_data``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.fx as fx
from torch import nn

from graphopt.errors import ConfigError
from graphopt.pipeline.pass_base import Pass, PassOptions, PassResult
from graphopt.recovery.batchnorm import reestimate_batchnorm
from graphopt.reporting.notes import Note

#: Note keys (graphopt.reporting.notes): what tests and tools read instead of the sentences.
NO_DATA = "reestimate_batchnorm:no_data"


@dataclass(frozen=True)
class ReestimateBatchNormOptions(PassOptions):
    max_batches: int = 100

    def __post_init__(self) -> None:
        if self.max_batches < 1:
            raise ConfigError(f"max_batches must be >= 1, got {self.max_batches}")


class ReestimateBatchNorm(Pass):
    name = "reestimate_batchnorm"
    slot = "prune"
    description = "Recompute BatchNorm running statistics on calibration data."
    exact = False
    Options = ReestimateBatchNormOptions

    def call(self, gm: fx.GraphModule) -> PassResult:
        if not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in gm.modules()):
            return PassResult(gm, modified=False, stats={"skipped:no_batchnorm": 1})
        data = self.context.calibration_data
        if data is None and self.context.train_data is not None:
            data = self.context.train_data.batches(64)  # the inputs of the training data serve as well
        if data is None:
            self.context.notes.append(
                Note(
                    NO_DATA, "reestimate_batchnorm: no calibration_data or train_data given, statistics kept"
                )
            )
            return PassResult(gm, modified=False, stats={"skipped:no_calibration_data": 1})
        batches = reestimate_batchnorm(gm, data, self.options.max_batches)
        return PassResult(gm, modified=True, stats={"batches": batches})
