"""An ESTIMATE of the energy of one inference, from operation counts. Nothing here is measured.

    E = MACs * e_mac(type)               arithmetic
      + weight_bytes * e_dram            weights, read once from DRAM
      + activation_bytes * 2 * e_sram    every activation written once and read once on chip

Per-operation energies are the 45 nm figures of M. Horowitz, "Computing's energy problem (and what we can do
about it)", ISSCC 2014, as tabulated by Han et al., "Learning both Weights and Connections for Efficient
Neural Networks" (NeurIPS 2015) and "EIE" (ISCA 2016):

- 8-bit integer multiply 0.2 pJ + 8-bit add 0.03 pJ: **0.23 pJ per int8 MAC**;
- 32-bit float multiply 3.7 pJ + 32-bit float add 0.9 pJ: **4.6 pJ per fp32 MAC**;
- a 32-bit DRAM read 640 pJ: **160 pJ per byte** of weights;
- a 32-bit read of an on-chip SRAM (8 KB) 5 pJ: **1.25 pJ per byte** of activations moved.

Assumptions, stated because they decide the numbers: weights do not fit on chip and are read once per
inference; activations stay on chip; an int8 parameter is one byte (int32 biases are too few to matter),
an fp32 one four; int8 activations are one byte each. A modern CPU at 5-7 nm spends less per operation
and more on control and caches than this model knows, so compare stages with each other, not with a power
meter.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.fx as fx

from graphopt.ir.graph import shape_of
from graphopt.reporting.cost import count_macs

#: pJ per multiply-accumulate, by numeric type (Horowitz 2014, 45 nm).
MAC_PJ = {"fp32": 4.6, "int8": 0.23}
DRAM_PJ_PER_BYTE = 640.0 / 4
SRAM_PJ_PER_BYTE = 5.0 / 4
BYTES_PER_ELEMENT = {"fp32": 4, "int8": 1}
SOURCE = "Horowitz ISSCC 2014, 45 nm: int8 MAC 0.23 pJ, fp32 MAC 4.6 pJ, DRAM 160 pJ/B, SRAM 1.25 pJ/B"


@dataclass(frozen=True)
class EnergyEstimate:
    """Estimated microjoules of one inference, by where they go."""

    arithmetic_uj: float
    weights_uj: float
    activations_uj: float

    @property
    def total_uj(self) -> float:
        return self.arithmetic_uj + self.weights_uj + self.activations_uj


def estimate(macs: int, weight_bytes: int, activation_elements: int, numeric: str) -> EnergyEstimate:
    """The estimate for ``macs`` MACs, ``weight_bytes`` of weights, ``activation_elements`` values moved."""
    if numeric not in MAC_PJ:
        raise ValueError(f"numeric must be one of {sorted(MAC_PJ)}, got {numeric!r}")
    activation_bytes = activation_elements * BYTES_PER_ELEMENT[numeric]
    return EnergyEstimate(
        arithmetic_uj=macs * MAC_PJ[numeric] * 1e-6,
        weights_uj=weight_bytes * DRAM_PJ_PER_BYTE * 1e-6,
        activations_uj=2 * activation_bytes * SRAM_PJ_PER_BYTE * 1e-6,
    )


def activation_elements(gm: fx.GraphModule) -> int:
    """Values produced by every node that computes (inputs and parameters excluded), from the shape meta."""
    total = 0
    for node in gm.graph.nodes:
        if node.op in ("call_module", "call_function", "call_method"):
            shape = shape_of(node)
            if shape is not None:
                total += _numel(shape)
    return total


def deployed_weight_bytes(params: int, numeric: str) -> int:
    """Bytes of ``params`` parameters as the artifact stores them (int8 weights: one byte each)."""
    return params * BYTES_PER_ELEMENT[numeric]


def estimate_graph(gm: fx.GraphModule, params: int, numeric: str) -> EnergyEstimate:
    """The estimate for a captured graph whose shapes were propagated."""
    return estimate(count_macs(gm), deployed_weight_bytes(params, numeric), activation_elements(gm), numeric)


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n
