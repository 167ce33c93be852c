"""Importance of each unit (a class of coupled channels), aggregated over everything it owns.

A unit's weights are the output rows of its producers and the input columns of its consumers, over the whole
coupled group, so a residual channel is judged by every conv that writes or reads it:

- ``l1``: ``sum |w|``; ``l2``: ``sqrt(sum w^2)`` over those slices.
- ``bn_scale``: ``sum |gamma|`` of the BatchNorms on the unit (network slimming, Liu et al., 2017).
- ``taylor``: ``|sum_w w * dL/dw|`` over the producer rows, the first-order change of the loss when the unit
  is zeroed (Molchanov et al., 2019), gradients summed over a few labelled batches.
- ``activation``: the output energy a unit feeds its readers on sample inputs (calibration or training
  data, no labels needed): ``sum_c E[x_c^2] * ||W[:, c]||^2`` over the unit's input positions ``c`` of every
  consumer (``x`` the consumer's input, ``W[:, c]`` the weights reading it). For an attention head that is
  what the head's output adds to the output projection; for an FFN unit, what its activation adds to the
  second layer. Cross terms between channels are ignored (a diagonal approximation).
- ``random``: a seeded uniform score, the baseline every criterion must beat.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from graphopt.data.labelled import LabelledTensors
from graphopt.errors import ConfigError
from graphopt.pruning.channel_map import UNTRACKED
from graphopt.pruning.config import PruneConfig
from graphopt.pruning.dependency import DependencyGraph

Scores = dict[int, float]


def unit_scores(
    graph: DependencyGraph,
    config: PruneConfig,
    train: LabelledTensors | None = None,
    samples: Sequence[tuple[torch.Tensor, ...]] = (),
) -> Scores:
    """A score per unit root; higher means more important. ``samples``: input batches for ``activation``."""
    if config.importance == "random":
        roots = sorted({r for p in graph.producers.values() for r in graph.coupling.roots(p.atoms).tolist()})
        draws = torch.rand(len(roots), generator=torch.Generator().manual_seed(config.seed))
        return dict(zip(roots, draws.tolist(), strict=True))
    if config.importance == "bn_scale":
        return batchnorm_scores(graph)
    if config.importance == "taylor":
        if train is None:
            raise ValueError("importance='taylor' needs train_data")
        return taylor_scores(graph, train, config.taylor_batches)
    if config.importance == "activation":
        if not samples:
            raise ConfigError("importance='activation' needs sample inputs: calibration_data or train_data")
        return activation_scores(graph, samples)
    return magnitude_scores(graph, power=1 if config.importance == "l1" else 2)


def _add(
    scores: defaultdict[int, float], graph: DependencyGraph, atoms: np.ndarray, values: torch.Tensor
) -> None:
    for root, value in zip(graph.coupling.roots(atoms).tolist(), values.tolist(), strict=True):
        if root != UNTRACKED:
            scores[root] += value


def magnitude_scores(graph: DependencyGraph, power: int) -> Scores:
    scores: defaultdict[int, float] = defaultdict(float)
    gm = graph.gm
    for p in graph.producers.values():
        w = gm.get_submodule(p.target).weight.detach()
        _add(scores, graph, p.atoms, w.flatten(1).abs().pow(power).sum(1))
    for c in graph.consumers.values():
        w = gm.get_submodule(c.target).weight.detach()
        _add(scores, graph, c.positions[0], _column_norms(w, c.groups, power))
    return {root: s ** (1 / power) for root, s in scores.items()}


def _column_norms(weight: torch.Tensor, groups: int, power: int) -> torch.Tensor:
    """``sum |w|^power`` of the weights reading each input position (a grouped conv's group rows only)."""
    per_out = weight.abs().pow(power).flatten(2).sum(2) if weight.dim() > 2 else weight.abs().pow(power)
    out_per_group = per_out.shape[0] // groups
    return torch.cat([per_out[g * out_per_group : (g + 1) * out_per_group].sum(0) for g in range(groups)])


def batchnorm_scores(graph: DependencyGraph) -> Scores:
    """``|gamma|`` summed per unit; units without a BatchNorm are absent (the caller falls back)."""
    scores: defaultdict[int, float] = defaultdict(float)
    for f in graph.followers.values():
        module = graph.gm.get_submodule(f.target)
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.weight is not None:
            _add(scores, graph, f.positions, module.weight.detach().abs())
    return dict(scores)


def taylor_scores(graph: DependencyGraph, train: LabelledTensors, batches: int) -> Scores:
    gm = graph.gm
    weights = {p.target: gm.get_submodule(p.target).weight for p in graph.producers.values()}
    saved = {name: w.requires_grad for name, w in weights.items()}
    grads = {name: torch.zeros_like(w) for name, w in weights.items()}
    generator = torch.Generator().manual_seed(0)
    try:
        for w in weights.values():
            w.requires_grad_(True)
        for step, (inputs, labels) in enumerate(train.batches(64, generator)):
            if step >= batches:
                break
            gm.zero_grad(set_to_none=True)
            logits = gm(*inputs)
            F.cross_entropy(logits, labels).backward()
            for name, w in weights.items():
                if w.grad is not None:
                    grads[name] += w.grad
    finally:
        gm.zero_grad(set_to_none=True)
        for name, w in weights.items():
            w.requires_grad_(saved[name])
    scores: defaultdict[int, float] = defaultdict(float)
    for p in graph.producers.values():
        contribution = (weights[p.target].detach() * grads[p.target]).flatten(1).sum(1).abs()
        _add(scores, graph, p.atoms, contribution)
    return dict(scores)


def activation_scores(graph: DependencyGraph, samples: Sequence[tuple[torch.Tensor, ...]]) -> Scores:
    """``sum_c E[x_c^2] ||W[:, c]||^2`` per unit over its consumers (module docstring). A unit no module
    reads (the query/key positions of narrowed heads, read only by the attention) is ranked by its ``l2``
    magnitude instead: selection compares units within their group, and such groups are unread as a whole."""
    gm = graph.gm
    squares: dict[str, list[torch.Tensor]] = {c.target: [] for c in graph.consumers.values()}

    def record(target: str) -> object:
        def hook(module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            squares[target].append(_mean_square_per_channel(module, args[0].detach().float()))

        return hook

    handles = [gm.get_submodule(t).register_forward_pre_hook(record(t)) for t in squares]
    try:
        with torch.no_grad():
            for inputs in samples:
                gm(*inputs)
    finally:
        for handle in handles:
            handle.remove()
    scores: defaultdict[int, float] = defaultdict(float)
    for c in graph.consumers.values():
        weight = gm.get_submodule(c.target).weight.detach()
        mean_square = torch.stack(squares[c.target]).mean(0)
        _add(scores, graph, c.positions[0], mean_square * _column_norms(weight, c.groups, power=2))
    magnitude = magnitude_scores(graph, power=2)
    return {root: scores.get(root, value) for root, value in magnitude.items()}


def _mean_square_per_channel(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``E[x_c^2]`` over every position but the input channel (the last dim of a linear's input, dim 1 of
    a conv's)."""
    channels = x.shape[-1] if isinstance(module, nn.Linear) else x.shape[1]
    moved = x if isinstance(module, nn.Linear) else x.movedim(1, -1)
    return moved.reshape(-1, channels).pow(2).mean(0)
