"""Copies of a graph that cost no weight bytes, or only the bytes a float64 re-check needs.

A pass that replaces a module or a parameter (``layer.weight = nn.Parameter(...)``, a new submodule) leaves
the old object alone, so the graph as it was before the pass is kept by copying its *structure* (modules,
graph, code) and sharing every tensor: :func:`structural_copy` costs Python objects, not weights. The one
thing it cannot survive is a pass writing into a shared tensor in place (``w.data.mul_(...)``); whoever
relies on such a copy checks it still computes what it computed before (the numeric check compares its
float32 outputs with the ones recorded before the pass).

:func:`float64_copy` converts lazily: parameters and buffers go straight from the source to float64 in the
copy (what ``deepcopy(gm).double()`` computes, without the float32 copy in between), so a float64 re-check
holds 2x the weights of one graph at a time rather than a float32 copy plus a float64 one per graph.

:func:`release` drops a private copy's modules at once: a GraphModule and its graph reference each other,
so without it the copy and every tensor only it holds would wait for the cyclic garbage collector.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Iterator
from typing import TypeVar

import torch
from torch import nn

M = TypeVar("M", bound=nn.Module)


def structural_copy(module: M) -> M:
    """A deep copy of ``module`` that shares every parameter, buffer and tensor attribute with it."""
    return _copy_with(module, lambda t: t)


def float64_copy(module: M) -> M:
    """A deep copy with floating parameters and buffers in float64 (like ``.double()``); other tensors are
    shared, as ``.double()`` leaves them as they are."""

    def convert(t: torch.Tensor) -> torch.Tensor:
        if not t.is_floating_point():
            return t
        if isinstance(t, nn.Parameter):
            return nn.Parameter(t.detach().double(), requires_grad=t.requires_grad)
        return t.detach().double()

    return _copy_with(module, convert)


def release(module: nn.Module | None) -> None:
    """Free a private copy now: its modules (and the tensors only they hold) go with its attributes."""
    if module is not None:
        module.__dict__.clear()


def _copy_with(module: M, map_state: Callable[[torch.Tensor], torch.Tensor]) -> M:
    """``deepcopy`` with every tensor found up front in its memo: parameters and buffers mapped by
    ``map_state``, plain tensor attributes shared (a tensor met both ways counts as state)."""
    memo: dict[int, object] = {}
    for tensor, is_state in _tensors(module):
        if is_state or id(tensor) not in memo:
            memo[id(tensor)] = map_state(tensor) if is_state else tensor
    with warnings.catch_warnings():  # torch's pytree FutureWarning when copying a torch.export output spec
        warnings.simplefilter("ignore", FutureWarning)
        return copy.deepcopy(module, memo)


def _tensors(module: nn.Module) -> Iterator[tuple[torch.Tensor, bool]]:
    """Every tensor the modules hold, and whether it is a parameter or buffer (``.double()`` converts
    those) rather than a plain tensor attribute (a constant, which it leaves alone)."""
    for sub in module.modules():
        yield from ((p, True) for p in sub._parameters.values() if p is not None)
        yield from ((b, True) for b in sub._buffers.values() if b is not None)
        yield from ((v, False) for v in vars(sub).values() if isinstance(v, torch.Tensor))
