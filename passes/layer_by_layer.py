"""The loop AdaRound and the sequential MSE range search share: the frozen int8 layers, front to back, each
reconstructed against the fp32 model on calibration samples (:mod:`graphopt.passes.layer_capture`).

A subclass says which layers it works on (:meth:`LayerByLayerPass.selected`, counting the others in the
stats by why), what it does to one (:meth:`LayerByLayerPass.layer`: a table row, or why it was skipped),
and how its rows add up (:meth:`LayerByLayerPass.totals`). The loop captures the inputs (the partly
quantized model's, so each layer sees what the layers before it left), shows progress, writes the pass's
table and the refreshed ``int8`` table, and notes a graph with no calibrated int8 layer.
"""

from __future__ import annotations

import time

import torch.fx as fx

from graphopt.errors import InvalidInputError
from graphopt.passes.calibrate import int8_summary
from graphopt.passes.layer_capture import (
    Candidate,
    Reconstruction,
    first_samples,
    int8_layers,
    reconstruction,
)
from graphopt.pipeline.pass_base import Pass, PassResult
from graphopt.quant.float_twin import float_twin
from graphopt.quant.modules import QuantizedLayer
from graphopt.reporting.notes import Note
from graphopt.reporting.progress import Progress

Row = dict[str, object]


class LayerByLayerPass(Pass):
    """Base of the passes that go over the int8 layers one by one (module docstring). Options need
    ``samples`` (calibration samples used), ``asymmetric`` (inputs from the partly quantized model, else
    the fp32 one) and ``quiet``."""

    def call(self, gm: fx.GraphModule) -> PassResult:
        candidates = int8_layers(gm)
        if not candidates:
            why = "no calibrated int8 layer in the graph; run insert_fake_quant and calibrate first"
            self.context.notes.append(
                Note(f"{self.name}:nothing_quantized", f"{self.name}: not applied ({why})")
            )
            return PassResult(gm, modified=False, stats={"skipped:nothing_quantized": 1})
        stats: dict[str, float] = {}
        layers = self.selected(gm, candidates, stats)
        if not layers:  # the stats say why each was left out
            return PassResult(gm, modified=False, stats=stats)
        data = self.context.calibration_data
        if data is None:
            raise InvalidInputError(
                f"{self.name} needs calibration_data: an iterable of input tensors/tuples"
            )
        batches = first_samples(data, self.options.samples)
        fp32 = float_twin(gm, unrounded=True)  # the model that entered quantization: the targets
        progress = Progress(len(layers), self.name, quiet=self.options.quiet)
        rows = []
        example_batch = len(self.context.example_inputs[0])
        for node, name, layer in layers:
            start = time.perf_counter()
            problem = reconstruction(gm, fp32, node, name, batches, example_batch, self.options.asymmetric)
            row = "not_reached" if problem is None else self.layer(name, layer, problem)
            if isinstance(row, str):  # not reached: a branch the calibration data never takes
                stats[f"skipped:{row}"] = stats.get(f"skipped:{row}", 0) + 1
            else:
                rows.append({**row, "seconds": round(time.perf_counter() - start, 2)})
            progress.update(layer=name)
        stats.update(self.totals(rows))
        self.context.tables[self.name] = rows
        self.context.tables["int8"] = int8_summary(gm)  # the weight SQNRs changed
        return PassResult(gm, modified=self.changed(rows), stats=stats)

    def selected(
        self, gm: fx.GraphModule, candidates: list[Candidate], stats: dict[str, float]
    ) -> list[Candidate]:
        raise NotImplementedError

    def layer(self, name: str, layer: QuantizedLayer, problem: Reconstruction) -> Row | str:
        """Work on one layer, given its inputs and fp32 targets: its table row, or why it was skipped."""
        raise NotImplementedError

    def totals(self, rows: list[Row]) -> dict[str, float]:
        raise NotImplementedError

    def changed(self, rows: list[Row]) -> bool:
        return bool(rows)
