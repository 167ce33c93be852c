"""Surgery: remove the chosen units from every module, parameter and literal size that holds them.

Given the removed units (root atoms), each record of the :class:`DependencyGraph` is sliced by the positions
whose unit survives: producers lose output rows, consumers lose input columns (per group for grouped convs),
followers (BatchNorm, PReLU, depthwise convs, whole groups of a depthwise conv with a multiplier) lose their
per-channel entries, parameters lose their slice, and shape
literals (reshape sizes, split sizes) are rewritten to the new widths. An attention whose head dim shrinks
gets its softmax scale pinned to ``1/sqrt(E_original)``, which keeps ``Q K^T * scale`` unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import torch
import torch.fx as fx
from torch import nn

from graphopt.errors import GraphoptError
from graphopt.ir.graph import shape_of
from graphopt.pruning.channel_map import ChannelMap
from graphopt.pruning.dependency import DependencyGraph, ShapeEdit


class SurgeryError(GraphoptError, RuntimeError):
    """The dependency records describe a selection that cannot be cut consistently (a coupling bug)."""


def remove_units(graph: DependencyGraph, removed: Iterable[int]) -> None:
    """Cut every unit in ``removed`` out of ``graph.gm`` (modules, parameters, graph literals)."""
    removed_roots = np.asarray(sorted(set(removed)), dtype=np.int64)

    def keep(atoms: np.ndarray) -> np.ndarray:
        return ~graph.coupling.removed(atoms, removed_roots)

    gm = graph.gm
    with torch.no_grad():
        for p in graph.producers.values():
            _slice_outputs(gm.get_submodule(p.target), _indices(keep(p.atoms)))
        for c in graph.consumers.values():
            _slice_inputs(gm.get_submodule(c.target), keep(c.positions[0]), c.groups)
        for f in graph.followers.values():
            _slice_per_channel(gm.get_submodule(f.target), keep(f.positions))
        for s in graph.params.values():
            _slice_parameter(gm, s.target, s.axis, _indices(keep(s.positions)))
    for edit in graph.edits:
        _rewrite(edit, [keep(m.atoms) for m in edit.maps])
    gm.recompile()


def _indices(mask: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(np.nonzero(mask)[0], dtype=torch.long)


def _select(tensor: torch.Tensor | None, dim: int, index: torch.Tensor) -> torch.Tensor | None:
    return None if tensor is None else tensor.index_select(dim, index).contiguous()


def _set(module: nn.Module, name: str, value: torch.Tensor | None) -> None:
    if value is None:
        return
    old = getattr(module, name)
    if isinstance(old, nn.Parameter):
        setattr(module, name, nn.Parameter(value, requires_grad=old.requires_grad))
    else:
        setattr(module, name, value)


def _slice_outputs(module: nn.Module, index: torch.Tensor) -> None:
    _set(module, "weight", _select(module.weight, 0, index))
    _set(module, "bias", _select(module.bias, 0, index))
    if isinstance(module, nn.Linear):
        module.out_features = len(index)
    else:
        module.out_channels = len(index)


def _slice_inputs(module: nn.Module, mask: np.ndarray, groups: int) -> None:
    if isinstance(module, nn.Linear):
        index = _indices(mask)
        _set(module, "weight", _select(module.weight, 1, index))
        module.in_features = len(index)
        return
    per_group = mask.reshape(groups, -1)
    if (per_group != per_group[0]).any():
        raise SurgeryError(f"grouped conv: groups would keep different input positions ({per_group.sum(1)})")
    index = _indices(per_group[0])
    _set(module, "weight", _select(module.weight, 1, index))
    module.in_channels = groups * len(index)


def _slice_per_channel(module: nn.Module, mask: np.ndarray) -> None:
    index = _indices(mask)
    if isinstance(module, nn.modules.conv._ConvNd):
        _check_whole_groups(module, mask)
    for name in ("weight", "bias", "running_mean", "running_var"):
        if getattr(module, name, None) is not None:
            _set(module, name, _select(getattr(module, name), 0, index))
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        module.num_features = len(index)
    elif isinstance(module, nn.PReLU):
        module.num_parameters = len(index)
    else:  # depthwise conv (multiplier m): m filters per input channel, whole groups kept
        multiplier = module.out_channels // module.groups
        module.out_channels = len(index)
        module.in_channels = module.groups = len(index) // multiplier


def _check_whole_groups(conv: nn.Module, mask: np.ndarray) -> None:
    per_group = mask.reshape(conv.groups, -1)
    if (per_group != per_group[:, :1]).any():
        raise SurgeryError(
            f"depthwise conv: a group would keep only some of its {per_group.shape[1]} outputs"
        )


def _slice_parameter(gm: fx.GraphModule, target: str, axis: int, index: torch.Tensor) -> None:
    owner_name, _, name = target.rpartition(".")
    owner = gm.get_submodule(owner_name) if owner_name else gm
    _set(owner, name, _select(getattr(owner, name), axis, index))


def _rewrite(edit: ShapeEdit, masks: list[np.ndarray]) -> None:
    node = edit.node
    if edit.kind == "sdpa_scale":
        node.kwargs = {**node.kwargs, "scale": 1.0 / math.sqrt(edit.head_dim)}
    elif edit.kind == "split":
        node.args = (node.args[0], [int(m.sum()) for m in masks], *node.args[2:])
    else:
        _rewrite_reshape(node, edit.maps[0], masks[0])


def _rewrite_reshape(node: fx.Node, out: ChannelMap, mask: np.ndarray) -> None:
    """Write the new width of each tracked output axis into the reshape's size arguments."""
    sizes_in_tuple = len(node.args) == 2 and isinstance(node.args[1], (tuple, list))
    sizes = list(node.args[1] if sizes_in_tuple else node.args[1:])
    old_shape = shape_of(node)
    for i, axis in enumerate(out.axes):
        others = tuple(j for j in range(mask.ndim) if j != i)
        kept_along = mask.any(axis=others) if others else mask
        new = int(kept_along.sum())
        if new != old_shape[axis] and sizes[axis] != -1:
            sizes[axis] = new
    if mask.ndim > 1 and not _is_rectangular(mask):
        raise SurgeryError(f"{node.name}: the kept channels do not form equal pieces")
    node.args = (node.args[0], tuple(sizes)) if sizes_in_tuple else (node.args[0], *sizes)


def _is_rectangular(mask: np.ndarray) -> bool:
    """Whether ``mask`` is the outer product of its per-axis masks (a reshape can express the selection)."""
    outer = np.ones_like(mask)
    for i in range(mask.ndim):
        others = tuple(j for j in range(mask.ndim) if j != i)
        shape = [1] * mask.ndim
        shape[i] = mask.shape[i]
        outer = outer & mask.any(axis=others).reshape(shape)
    return bool((outer == mask).all())
