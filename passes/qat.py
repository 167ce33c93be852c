"""Quantization-aware training (QAT): fine-tune the calibrated int8 graph with fake quantization in it.

Runs after ``calibrate``, which serves as the observer warm-up: the activation scales and zero points it
froze stay fixed during training (so the integer graph's requantization stays as calibrated), while every
int8 layer is thawed back to float weights (starting from its int8 values) that the forward fake-quantizes
per channel. Rounding has no gradient, so both use the straight-through estimator:
``d round(x) / dx := 1`` inside the clamp range, ``0`` outside. BatchNorm is already folded (the int8
targets fold it first), so its statistics cannot drift during training.

The loss is the recovery engine's: Hinton distillation from the fp32 original plus the label loss
(:class:`~graphopt.recovery.RecoveryConfig`). After training every layer is quantized again (int8 weights
from the trained values, int32 biases with ``s_in * s_w``). Lossy.
"""

from __future__ import annotations

from dataclasses import replace

import torch.fx as fx

from graphopt.ir.graph import KEEP_ZERO_WEIGHTS, ir_fact
from graphopt.passes.calibrate import Calibrate, int8_summary
from graphopt.pipeline.pass_base import Pass, PassResult
from graphopt.quant.modules import QuantizedLayer
from graphopt.recovery.config import DistillConfig, OptimizerConfig, RecoveryConfig, for_qat
from graphopt.reporting.notes import Note

#: QAT starts from a calibrated model that is already close: a few epochs at a small learning rate.
QAT_DEFAULTS = RecoveryConfig(epochs=3, optimizer=OptimizerConfig(lr=1e-4), distill=DistillConfig())

#: Note keys (graphopt.reporting.notes): what tests and tools read instead of the sentences.
NOTHING_CALIBRATED = "qat:nothing_calibrated"


class QuantizationAwareTraining(Pass):
    name = "qat"
    slot = "training"
    description = "Fine-tune the int8 graph with fake-quantized weights (STE), distilling from the original."
    exact = False
    Options = RecoveryConfig
    needs = ("train_data",)

    def __init__(self, options: RecoveryConfig | None = None, **fields: object):
        if options is None and not fields:
            options = QAT_DEFAULTS
        super().__init__(options, **fields)

    def call(self, gm: fx.GraphModule) -> PassResult:
        layers = [m for m in gm.modules() if isinstance(m, QuantizedLayer) and m.frozen]
        if not layers:
            self.context.notes.append(
                Note(NOTHING_CALIBRATED, "qat: no calibrated int8 layer in the graph; run calibrate first")
            )
            return PassResult(gm, modified=False, stats={"skipped:nothing_quantized": 1})
        context = self.context
        for layer in layers:
            layer.thaw()
        try:
            sparse = bool(ir_fact(gm, KEEP_ZERO_WEIGHTS))
            options = for_qat(replace(self.options, keep_zero_weights=True) if sparse else self.options)
            result = context.training.fit(
                gm,
                context.teacher,
                context.train_data,
                options,
                validation=context.validation_data,
                desc="qat",
            )
        finally:
            refrozen, _ = Calibrate.freeze_layers(gm)  # requantize whatever training left, even on failure
        context.tables["int8"] = int8_summary(gm)
        return PassResult(gm, modified=True, stats={"qat_layers": refrozen, **result.stats()})
