"""Mixed weight widths under a byte budget: which layers drop from 8 bits to a narrow width.

Each int8 layer ``i`` has ``n_i`` weights and a sensitivity ``e_i``: the relative output noise power
``E||f_i(x) - f(x)||^2 / E||f(x)||^2`` of the network when only layer ``i`` takes the narrow width (``f``
the network as it is, ``f_i`` with that one layer narrowed), measured on calibration data. Layer noises add
to first order (independent rounding errors), so the total added noise of a set ``S`` of narrowed layers is
about ``sum_{i in S} e_i``, and the allocation solves the knapsack

    min_S  sum_{i in S} e_i    subject to    sum_{i not in S} B(n_i, 8) + sum_{i in S} B(n_i, b) <= budget

with ``B(n, b)`` the bytes ``n`` weights of ``b`` bits take in the artifact (:func:`storage_bytes`). It is
solved greedily, as HAWQ-style mixed precision is: layers narrowed in increasing ``e_i / saved_i`` (noise
per byte saved) until the weights fit, then, from the most sensitive narrowed layer down, each put back at
8 bits if they still fit without it (the last pick often overshoots the budget by more than a small layer
needs). Layers whose width the caller fixed count at their width and are never moved.
"""

from __future__ import annotations

from dataclasses import dataclass

from graphopt.quant.scheme import INT4_BITS


def storage_bytes(weights: int, bits: int) -> int:
    """Bytes ``weights`` values of ``bits`` bits take in an ONNX artifact: two per byte at 2..4 bits (INT4
    initializers), one per byte at 5..8 (int8 storage: 5..7 bits save nothing on 8)."""
    return (weights + 1) // 2 if bits <= INT4_BITS else weights


@dataclass(frozen=True)
class LayerCost:
    name: str
    weights: int
    bits: int  # its width now
    #: Relative output noise power with this layer alone at the narrow width (0 when it cannot move).
    noise: float
    movable: bool = True


@dataclass(frozen=True)
class Allocation:
    narrowed: tuple[str, ...]
    bytes_before: int
    bytes_after: int
    budget: int
    #: The summed noise of the narrowed layers (the knapsack's objective).
    noise: float

    @property
    def fits(self) -> bool:
        return self.bytes_after <= self.budget


def allocate(layers: list[LayerCost], narrow_bits: int, budget: int) -> Allocation:
    """The layers to narrow to ``narrow_bits`` so the weights take at most ``budget`` bytes (module
    docstring); every movable layer when even that does not fit (``Allocation.fits`` is then False)."""
    before = sum(storage_bytes(c.weights, c.bits) for c in layers)

    def saved(c: LayerCost) -> int:
        return storage_bytes(c.weights, c.bits) - storage_bytes(c.weights, narrow_bits)

    candidates = [c for c in layers if c.movable and saved(c) > 0]
    chosen: list[LayerCost] = []
    size = before
    for c in sorted(candidates, key=lambda c: (c.noise / saved(c), c.name)):
        if size <= budget:
            break
        chosen.append(c)
        size -= saved(c)
    if size <= budget:
        for c in sorted(chosen, key=lambda c: -c.noise):
            if size + saved(c) <= budget:
                chosen.remove(c)
                size += saved(c)
    names = tuple(c.name for c in layers if c in chosen)  # graph order
    return Allocation(names, before, size, budget, sum(c.noise for c in chosen))
