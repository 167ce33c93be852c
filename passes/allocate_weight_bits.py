"""Mixed weight widths under a byte budget: the least sensitive int8 layers drop to ``narrow_bits``.

Runs after ``calibrate`` on the frozen :class:`~graphopt.quant.QuantizedLayer` s (``WeightQuant(bits=4,
max_weight_bytes=...)`` puts it there). Per layer, the sensitivity is the network's relative output noise
power with that layer alone requantized at ``narrow_bits`` from its fp32 weights (same input scale),
against the network as calibrated, on up to ``max_batches`` calibration batches; then
:func:`graphopt.quant.bit_allocation.allocate` picks the layers to narrow (the knapsack and its greedy
solution are in its docstring) and they are requantized in place. Layers named in ``keep`` (a caller's
``bits_by_layer``) are never moved.

Bytes are the ONNX artifact's weight storage (INT4 two per byte at 2..4 bits, int8 otherwise); biases,
scales and the graph come on top. Other backends store narrow weights as int8 (see
:mod:`graphopt.quant.storage`), so there only the accuracy changes, not the file.

Lossy: stats ``weight_bytes_before`` / ``_after``, ``max_weight_bytes``, ``narrowed`` (layers),
``output_sqnr_db`` (after, against the network as calibrated); the ``allocate_weight_bits`` table lists
each layer's weights, its sensitivity as an SQNR in dB (higher: safer to narrow) and the width it got.
When even every movable layer narrowed does not fit, all are narrowed and the note
``allocate_weight_bits:over_budget`` says by how much it is missed and what would fit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.fx as fx

from graphopt.errors import ConfigError
from graphopt.ir.graph import set_module
from graphopt.pipeline.pass_base import Pass, PassOptions, PassResult
from graphopt.quant.bit_allocation import LayerCost, allocate
from graphopt.quant.modules import QuantizedLayer
from graphopt.quant.scheme import INT4_BITS, WEIGHT_BITS
from graphopt.reporting.notes import Note
from graphopt.reporting.numerics import output_vector
from graphopt.reporting.progress import Progress

#: Note key: the weights do not fit the budget even with every movable layer narrowed.
OVER_BUDGET = "allocate_weight_bits:over_budget"


@dataclass(frozen=True)
class AllocateWeightBitsOptions(PassOptions):
    #: The budget: bytes the int8 layers' weights may take in the artifact.
    max_weight_bytes: int = 0
    #: The width layers drop to (2..4: below that ONNX stores them two per byte; 5..7 would save nothing).
    narrow_bits: int = 4
    #: Layer names whose width is fixed (the caller's ``bits_by_layer``).
    keep: tuple[str, ...] = ()
    #: Calibration batches each layer's sensitivity is measured on.
    max_batches: int = 4
    quiet: bool = True

    def __post_init__(self) -> None:
        budget = self.max_weight_bytes
        if not isinstance(budget, int) or isinstance(budget, bool) or budget < 1:
            raise ConfigError(f"max_weight_bytes must be a number of bytes >= 1, got {budget!r}")
        if self.narrow_bits not in WEIGHT_BITS or self.narrow_bits > INT4_BITS:
            raise ConfigError(
                f"narrow_bits must be 2, 3 or 4 (stored two per byte), got {self.narrow_bits!r}: 5..7-bit "
                "weights are stored in int8 bytes and save nothing on 8 bits"
            )
        if self.max_batches < 1:
            raise ConfigError(f"max_batches must be >= 1, got {self.max_batches}")


class AllocateWeightBits(Pass):
    name = "allocate_weight_bits"
    slot = "int8"
    description = "Narrow the least sensitive int8 layers' weights (to 4 bits) until they fit a byte budget."
    exact = False
    Options = AllocateWeightBitsOptions
    needs = ("calibration_data",)

    def call(self, gm: fx.GraphModule) -> PassResult:
        layers = {n: m for n, m in gm.named_modules() if isinstance(m, QuantizedLayer) and m.frozen}
        if not layers:
            return PassResult(gm, modified=False, stats={"skipped:no_frozen_int8_layers": 1})
        batches = list(self.context.calibration_data[: self.options.max_batches])
        reference = output_vector(gm, *batches)
        costs = self._costs(gm, layers, batches, reference)
        chosen = allocate(costs, self.options.narrow_bits, self.options.max_weight_bytes)
        for name in chosen.narrowed:
            set_module(gm, name, layers[name].requantized(self.options.narrow_bits))
        after = _noise(output_vector(gm, *batches), reference)
        self.context.tables[self.name] = [
            {"layer": c.name, "weights": c.weights, "narrowed_sqnr_db": _db(c.noise) if c.movable else None,
             "bits": self.options.narrow_bits if c.name in chosen.narrowed else c.bits}
            for c in costs
        ]  # fmt: skip
        if not chosen.fits:
            self._say_over_budget(costs, chosen.bytes_after)
        stats = {
            "weight_bytes_before": chosen.bytes_before, "weight_bytes_after": chosen.bytes_after,
            "max_weight_bytes": chosen.budget, "narrowed": len(chosen.narrowed), "output_sqnr_db": _db(after),
        }  # fmt: skip
        return PassResult(gm, modified=bool(chosen.narrowed), stats=stats)

    def _costs(
        self, gm: fx.GraphModule, layers: dict[str, QuantizedLayer], batches: list, reference: torch.Tensor
    ) -> list[LayerCost]:
        progress = Progress(len(layers), self.name, quiet=self.options.quiet)
        costs = []
        for name, layer in layers.items():
            movable = name not in self.options.keep and layer.weight_bits > self.options.narrow_bits
            noise = 0.0
            if movable:
                set_module(gm, name, layer.requantized(self.options.narrow_bits))
                noise = _noise(output_vector(gm, *batches), reference)
                set_module(gm, name, layer)
            costs.append(LayerCost(name, layer.weight_int8.numel(), layer.weight_bits, noise, movable))
            progress.update(layer=name)
        return costs

    def _say_over_budget(self, costs: list[LayerCost], size: int) -> None:
        budget = self.options.max_weight_bytes
        kept = [c for c in costs if not c.movable]
        text = (
            f"allocate_weight_bits: the weights take {size:,} bytes with every movable layer at "
            f"int{self.options.narrow_bits}, above max_weight_bytes={budget:,}"
            + (f" ({len(kept)} layers kept at their width by bits_by_layer)" if kept else "")
            + f"; a budget >= {size:,} bytes fits, or prune channels first (optimize(prune=...))"
        )
        self.context.notes.append(Note(OVER_BUDGET, text, bytes=size, budget=budget))


def _noise(outputs: torch.Tensor, reference: torch.Tensor) -> float:
    """Relative noise power ``||y - y_ref||^2 / ||y_ref||^2``."""
    return float((outputs - reference).pow(2).sum() / reference.pow(2).sum().clamp(min=1e-30))


def _db(noise: float) -> float:
    """The SQNR in dB of a relative noise power (inf for none)."""
    return math.inf if noise <= 0 else -10 * math.log10(noise)


__all__ = ["OVER_BUDGET", "AllocateWeightBits", "AllocateWeightBitsOptions"]
