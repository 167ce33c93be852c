"""Recovery stage: fine-tune the IR with knowledge distillation from the original model.

The student is the current GraphModule (its parameters are trained in place); the teacher is the original
model, frozen, handed over in the pass context. The loss, schedule, validation split and early stopping
are those of :mod:`graphopt.recovery` (see :class:`~graphopt.recovery.RecoveryConfig`), run by the run's
training service (:class:`~graphopt.pipeline.services.TrainingService`); the best epoch is
chosen on ``validation_data`` when the call has it (held-out data), else on a share of ``train_data``.
Lossy by nature.

Skipped, with the reason in ``stats`` and a note in the report: ``skipped:no_train_data``,
``skipped:no_teacher``. Trains the epochs of its config plus any an earlier pass handed it
(:attr:`~graphopt.pipeline.pass_base.PassContext.epochs_added`: ``probe_int8`` hands over a skipped QAT's).
"""

from __future__ import annotations

from dataclasses import replace

import torch.fx as fx

from graphopt.ir.graph import KEEP_ZERO_WEIGHTS, ir_fact
from graphopt.pipeline.pass_base import Pass, PassResult
from graphopt.recovery.config import RecoveryConfig
from graphopt.reporting.notes import Note

#: Note keys (graphopt.reporting.notes): what tests and tools read instead of the sentences.
NO_TRAIN_DATA = "recover:no_train_data"
NO_TEACHER = "recover:no_teacher"


class Recover(Pass):
    name = "recover"
    slot = "training"
    description = "Fine-tune with knowledge distillation from the original model (needs train_data)."
    exact = False
    Options = RecoveryConfig

    def call(self, gm: fx.GraphModule) -> PassResult:
        context = self.context
        data = context.train_data
        if data is None:
            context.notes.append(
                Note(NO_TRAIN_DATA, "recover: no train_data given, accuracy was not recovered")
            )
            return PassResult(gm, modified=False, stats={"skipped:no_train_data": 1})
        if context.teacher is None:
            context.notes.append(
                Note(NO_TEACHER, "recover: no teacher in the pass context, accuracy was not recovered")
            )
            return PassResult(gm, modified=False, stats={"skipped:no_teacher": 1})
        options = self._options(gm, context.epochs_added.get(self.name, 0))
        result = context.training.fit(gm, context.teacher, data, options, validation=context.validation_data)
        return PassResult(gm, modified=True, stats=result.stats())

    def _options(self, gm: fx.GraphModule, added_epochs: int) -> RecoveryConfig:
        """The configured options, keeping zeroed weights at zero on a sparsified graph and training the
        epochs an earlier pass handed over (a declined QAT's: ``probe_int8``) too."""
        options = self.options
        if ir_fact(gm, KEEP_ZERO_WEIGHTS):
            options = replace(options, keep_zero_weights=True)
        if added_epochs:
            options = replace(options, epochs=options.epochs + added_epochs)
        return options
