"""The instrument that turns each pass into a report row, measured the moment the pass finishes.

Passes mutate the graph in place, so agreement with the original and accuracy on labelled data must be
measured right after each pass, not at the end: that is what this instrument does. Each row also carries
the process's peak resident memory over its stage (:class:`~graphopt.reporting.memory.PeakWatch`): the
``original`` row from the reporter's creation to its measurement, a pass row from ``before_pass`` to the
end of its measurement (the watch's high-water part reaches back to the previous row, so the other
instruments' hooks around the pass count too).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.fx as fx

from graphopt.data.batches import Batch
from graphopt.ir.graph import count_nodes
from graphopt.pipeline.pass_base import Pass, PassContext
from graphopt.pipeline.pass_manager import PassRecord
from graphopt.quant import is_quantized
from graphopt.reporting.cost import count_macs, count_params, weight_bytes
from graphopt.reporting.energy import estimate_graph
from graphopt.reporting.evaluation import accuracy
from graphopt.reporting.memory import PeakWatch, to_mib
from graphopt.reporting.numerics import agreement
from graphopt.reporting.report import Report, StageRecord


class StageReporter:
    def __init__(self, report: Report, reference: Any, labelled: list[Batch] | None):
        self.report, self.reference, self.labelled = report, reference, labelled
        self.memory = PeakWatch()
        self.memory.open()

    def before_pass(self, pass_: Pass, gm: fx.GraphModule, context: PassContext) -> None:
        self.memory.open()

    def measure(self, stage: str, kind: str, gm: fx.GraphModule, context: PassContext) -> StageRecord:
        with torch.no_grad():
            outputs = gm(*context.example_inputs)
        params = count_params(gm)
        record = StageRecord(
            stage=stage,
            kind=kind,  # type: ignore[arg-type]
            nodes=count_nodes(gm),
            params=params,
            macs=count_macs(gm),
            bytes=weight_bytes(gm),
            energy=estimate_graph(gm, params, "int8" if is_quantized(gm) else "fp32"),
            agreement=agreement(self.reference, outputs),
            accuracy=accuracy(gm, self.labelled) if self.labelled is not None else None,
        )
        record.peak_rss_mib = to_mib(self.memory.close())  # the window ends with the measurement
        return record

    def after_pass(self, pass_: Pass, gm: fx.GraphModule, context: PassContext, record: PassRecord) -> None:
        stage = record.name if record.step == 0 else f"{record.name} (step {record.step + 1})"
        row = self.measure(stage, "pass", gm, context)
        row.seconds, row.modified, row.stats = record.seconds, record.modified, dict(record.stats)
        row.exact_check_max_abs = record.max_abs_change
        self.report.add(row)
