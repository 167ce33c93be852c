"""Comparing outputs of two versions of a model.

- max abs error ``max |a - b|`` over every output element;
- cosine similarity ``<a, b> / (|a| |b|)`` of all outputs flattened and concatenated;
- top-1 agreement: the fraction of rows whose arg-max over the last dimension is the same (only for outputs
  of rank >= 2 with more than one class, i.e. logits).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils._pytree import tree_flatten


@dataclass(frozen=True)
class Tolerance:
    """``|a - b| <= atol + rtol * |b|`` element-wise, as in ``torch.allclose``."""

    rtol: float = 1e-5
    atol: float = 1e-5

    def relative_to(self, outputs: Any) -> Tolerance:
        """``atol`` scaled by ``max(1, max|outputs|)``. Float rounding in a rewritten network is relative to
        the size of the values flowing through it, not to each output element: folding BatchNorm into
        ResNet-18 at 224x224 moved even its logits near 0 by 1.2e-5 of the largest one."""
        finite = [t[torch.isfinite(t)] for t in flatten_outputs(outputs)]
        scale = max((float(t.abs().max()) for t in finite if t.numel()), default=1.0)
        return Tolerance(rtol=self.rtol, atol=self.atol * max(scale, 1.0))


@dataclass(frozen=True)
class Agreement:
    """How closely a candidate's outputs match the reference outputs."""

    max_abs: float
    cosine: float
    top1: float | None


def flatten_outputs(outputs: Any) -> list[torch.Tensor]:
    """The tensors in a (possibly nested) output structure, as float64 tensors on the CPU."""
    leaves, _ = tree_flatten(outputs)
    tensors = []
    for leaf in leaves:
        if isinstance(leaf, np.ndarray):
            leaf = torch.from_numpy(leaf)
        if isinstance(leaf, torch.Tensor):
            tensors.append(leaf.detach().cpu().double())  # float64 keeps float64 outputs exact
    return tensors


def output_vector(model: Any, *batches: tuple) -> torch.Tensor:
    """Every output tensor of ``model`` on each of ``batches`` (tuples of inputs), flattened and joined into
    one float64 vector, without gradients: what an output SQNR or noise power is computed on."""
    with torch.no_grad():
        return torch.cat([t.reshape(-1) for batch in batches for t in flatten_outputs(model(*batch))])


def first_output(outputs: Any) -> Any:
    """The first leaf of an output structure: the logits of a classifier, whether it returns a tensor, a
    tuple, a dict or a Hugging Face ``ModelOutput`` (whose leaves skip ``None`` fields such as ``loss``)."""
    leaves, _ = tree_flatten(outputs)
    return leaves[0] if leaves else outputs


def _same_structure(ref: list[torch.Tensor], cand: list[torch.Tensor]) -> bool:
    return len(ref) == len(cand) and all(r.shape == c.shape for r, c in zip(ref, cand, strict=True))


def all_finite(outputs: Any) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in flatten_outputs(outputs))


def _max_abs(ref: list[torch.Tensor], cand: list[torch.Tensor]) -> float:
    """Over the positions where the reference is finite (NaN where both are NaN is agreement)."""
    diffs = (
        float((r - c)[torch.isfinite(r)].abs().max())
        for r, c in zip(ref, cand, strict=True)
        if bool(torch.isfinite(r).any())
    )
    return max(diffs, default=0.0)


def row_cosines(got: Any, reference: Any) -> np.ndarray:
    """``cos(got[i], reference[i])`` per row (sample) of two equal-shaped arrays, each row flattened: 1
    where both rows are zero, 0 where only one is (a zero output is no match for a real one)."""
    a = np.asarray(got, dtype=np.float64).reshape(len(got), -1)
    b = np.asarray(reference, dtype=np.float64).reshape(len(reference), -1)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    both_zero = (np.abs(a).sum(1) == 0) & (np.abs(b).sum(1) == 0)
    cosine = (a * b).sum(1) / np.where(norms > 0, norms, 1.0)
    return np.where(both_zero, 1.0, np.where(norms > 0, cosine, 0.0))


def agreement(reference: Any, candidate: Any) -> Agreement:
    """Compare two output structures with the same leaves."""
    ref, cand = flatten_outputs(reference), flatten_outputs(candidate)
    if not _same_structure(ref, cand):
        shapes = ([tuple(r.shape) for r in ref], [tuple(c.shape) for c in cand])
        raise ValueError(f"outputs differ in structure: {shapes[0]} vs {shapes[1]}")
    a = torch.cat([r.flatten() for r in ref]) if ref else torch.zeros(1)
    b = torch.cat([c.flatten() for c in cand]) if cand else torch.zeros(1)
    cosine = float(torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=0, eps=1e-30))
    return Agreement(max_abs=_max_abs(ref, cand), cosine=cosine, top1=_top1(ref, cand))


def _top1(ref: list[torch.Tensor], cand: list[torch.Tensor]) -> float | None:
    logits = [(r, c) for r, c in zip(ref, cand, strict=True) if r.dim() >= 2 and r.shape[-1] > 1]
    if not logits:
        return None
    r, c = logits[0]
    return float((r.argmax(-1) == c.argmax(-1)).float().mean())


def max_abs_difference(reference: Any, candidate: Any) -> float:
    """``max |a - b|`` over every output element (inf when the structures differ)."""
    ref, cand = flatten_outputs(reference), flatten_outputs(candidate)
    return _max_abs(ref, cand) if _same_structure(ref, cand) else float("inf")


def allclose(reference: Any, candidate: Any, tolerance: Tolerance) -> tuple[bool, float]:
    """Whether every output is within ``tolerance``; also the max abs error."""
    ref, cand = flatten_outputs(reference), flatten_outputs(candidate)
    if not _same_structure(ref, cand):
        return False, float("inf")
    pairs = zip(ref, cand, strict=True)
    ok = all(torch.allclose(c, r, rtol=tolerance.rtol, atol=tolerance.atol, equal_nan=True) for r, c in pairs)
    return ok, _max_abs(ref, cand)


def finite_number(value: object) -> float | None:
    """``value`` as a finite float, or None: not a real number (a bool or a string is not), NaN, infinite,
    or an int beyond float's range. For options and files where such a value is a mistake to name."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None
