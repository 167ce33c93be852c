"""The channel-dependency op table: how each op moves, couples or consumes channels.

Every rule takes the node and the maps of its inputs and returns the output's map. The table is explicit
and closed: a module type, function or method that is not listed blocks the units reaching it, naming itself
as the reason (see :func:`apply_rule`).

Coupling rules, and why each is exact:

- element-wise ``a op b`` (residual add, SE gate ``x * g``): ``out[c]`` depends on ``a[c]`` and ``b[c]``
  only, so channel ``c`` of both sides is one unit; a parameter on the other side is sliced with it.
- ``cat`` along channels concatenates maps; ``split`` with sizes slices them (the sizes are rewritten).
- ``chunk(n)`` and a reshape splitting ``C`` into ``(g, C/g)`` (channel shuffle, attention heads) must keep
  equal pieces: position ``k`` of every piece is one unit, so every piece loses the same positions.
- grouped convs likewise couple in-position ``k`` of every group, and out-position ``k`` of every group;
  depthwise convs are per-channel (sliced like their input). A depthwise conv with multiplier ``m``
  (``groups == in_channels``, ``m`` outputs per group: ``Conv2d(48, 96, 3, groups=48)``) reads input ``i``
  into outputs ``m*i .. m*i+m-1`` only, so those outputs carry input ``i``'s atom: removing the unit removes
  the input channel and its whole group, and the conv keeps ``groups == in_channels``.
- per-channel PReLU (``num_parameters=C``) is sliced like a BatchNorm; ``PReLU()`` (one slope) is
  element-wise.
- ``Q K^T`` contracts the head dim: ``q[d]`` and ``k[d]`` are one unit; the softmax scale ``1/sqrt(E)``
  is pinned to the original ``E`` so removing head dims is exact.
- Norms that average over channels (LayerNorm over them, GroupNorm) block: removing a channel changes the
  statistics of the others, which no slicing undoes.
"""

from __future__ import annotations

import itertools
import operator
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from graphopt.ir.graph import is_metadata_read, shape_of
from graphopt.pruning.channel_map import BlockReason, ChannelMap, reshape_blocks
from graphopt.pruning.dependency import DependencyGraph, NodeMap, ShapeEdit, untracked

Maps = dict[fx.Node, NodeMap]


class Blocked(ValueError):
    """Raised by a rule that understands the op and must block its channels (the message says why)."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


Rule = Callable[[DependencyGraph, fx.Node, Maps], NodeMap]


def apply_rule(graph: DependencyGraph, node: fx.Node, maps: Maps) -> NodeMap:
    if node.op in ("placeholder", "get_attr"):
        return None
    inputs = [maps.get(n) for n in _tensor_args(node)]
    if is_metadata_read(node):
        return None  # what a tensor looks like (timm asserts ``x.ndim == 4``): no channel flows on
    rule = _find_rule(graph, node)
    if all(m is None for m in inputs) and rule not in (_conv, _linear):
        return None  # nothing tracked flows in and nothing new is produced: any op is fine
    if rule is None:
        reason = BlockReason(
            "not_in_table", f"{_describe(graph, node)} is not in the channel-dependency table"
        )
        for m in inputs:
            graph.block(m, reason)
        return None
    try:
        return rule(graph, node, maps)
    except Blocked as exc:
        for m in inputs:
            graph.block(m, BlockReason(exc.kind, f"{_describe(graph, node)}: {exc}"))
        return None
    except (ValueError, IndexError, TypeError) as exc:  # a form of the op the rule does not understand
        for m in inputs:
            graph.block(
                m, BlockReason("unsupported_form", f"{_describe(graph, node)}: unsupported form ({exc})")
            )
        return None


def _find_rule(graph: DependencyGraph, node: fx.Node) -> Rule | None:
    if node.op == "call_module":
        module = graph.gm.get_submodule(str(node.target))
        for types, rule in _MODULE_RULES:
            if isinstance(module, types):
                return rule
        return None
    if node.op == "call_function":
        return _FUNCTION_RULES.get(node.target)
    if node.op == "call_method":
        return _METHOD_RULES.get(str(node.target))
    return None


def _describe(graph: DependencyGraph, node: fx.Node) -> str:
    if node.op == "call_module":
        return f"{type(graph.gm.get_submodule(str(node.target))).__name__} ({node.target})"
    if node.op == "call_method":
        return f"method .{node.target}() ({node.name})"
    return f"{getattr(node.target, '__name__', node.target)} ({node.name})"


def _tensor_args(node: fx.Node) -> list[fx.Node]:
    found: list[fx.Node] = []
    fx.node.map_arg((node.args, node.kwargs), found.append)
    return found


def _arg(node: fx.Node, index: int, name: str, default: Any = None) -> Any:
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(name, default)


def _rank(node: Any) -> int:
    shape = shape_of(node)
    if shape is None:
        raise ValueError("no shape recorded")
    return len(shape)


def _untracked(text: str) -> BlockReason:
    """A channel paired with one no producer owns (an input image channel, a fixed-size tensor)."""
    return BlockReason("untracked_partner", text)


def _single(m: NodeMap) -> ChannelMap | None:
    if isinstance(m, list):
        raise ValueError("a tuple where a tensor was expected")
    return m


# -- shape-preserving ops ---------------------------------------------------------------------------
def _same(graph: DependencyGraph, node: fx.Node, maps: Maps) -> NodeMap:
    return _single(maps.get(node.args[0]))


def _spatial(graph: DependencyGraph, node: fx.Node, maps: Maps) -> NodeMap:
    """Pooling and resizing: per channel, on dims 2 and up."""
    m = _single(maps.get(node.args[0]))
    if m is not None and m.axes != (1,):
        raise ValueError(f"pools over tracked axes {m.axes}")
    return m


def _elementwise(graph: DependencyGraph, node: fx.Node, maps: Maps) -> NodeMap:
    """Broadcasting ``a op b``: couple channel maps position by position, slice parameters alongside."""
    rank = _rank(node)
    operands = [a for a in node.args if isinstance(a, fx.Node)]
    tracked = [(a, m.shifted(rank - _rank(a))) for a in operands if (m := _single(maps.get(a))) is not None]
    ref = tracked[0][1]
    for _, m in tracked[1:]:
        if m.axes != ref.axes or m.atoms.shape != ref.atoms.shape:
            raise ValueError("operands track channels on different axes")
        graph.coupling.union_arrays(ref.atoms, m.atoms, _untracked(f"{node.name} adds an untracked channel"))
    for a in operands:
        if maps.get(a) is not None:
            continue
        shift = rank - _rank(a)
        shape = shape_of(a) or ()
        sizes = [shape[ax - shift] if ax - shift >= 0 else 1 for ax in ref.axes]
        if all(s == 1 for s in sizes):
            continue  # broadcast along the channels: nothing to slice
        if a.op == "get_attr" and len(ref.axes) == 1:
            graph.param_slice(str(a.target), ref.axes[0] - shift, ref.atoms)
            continue
        graph.coupling.block_all(
            ref.atoms, _untracked(f"{node.name} combines channels with a fixed-size tensor {a.name}")
        )
    return ref


def _softmax(graph: DependencyGraph, node: fx.Node, maps: Maps) -> NodeMap:
    m = _single(maps.get(node.args[0]))
    if m is None:
        return None
    dim = _arg(node, 1, "dim")
    if dim is None:
        raise ValueError("softmax without dim")
    if dim % _rank(node) in m.axes:
        raise Blocked("normalizes_channels", "softmax normalizes over these channels")
    return m


# -- reductions and axis moves ----------------------------------------------------------------------
def _reduce(graph: DependencyGraph, node: fx.Node, maps: Maps) -> NodeMap:
    m = _single(maps.get(node.args[0]))
    if m is None:
        return None
    rank = _rank(node.args[0])
    dims = _arg(node, 1, "dim")
    if dims is None:
        raise ValueError("reduction over every axis")
    reduced = {d % rank for d in (dims if isinstance(dims, (tuple, list)) else (dims,))}
    if reduced & set(m.axes):
        raise Blocked("reduces_channels", "it reduces over the channels")
    if _arg(node, 2, "keepdim", False):
        return m
    kept = [a for a in range(rank) if a not in reduced]
    return m.remap({old: new for new, old in enumerate(kept)})


def _transpose(graph: DependencyGraph, node: fx.Node, maps: Maps) -> NodeMap:
    m = _single(maps.get(node.args[0]))
    rank = _rank(node)
    a, b = node.args[1] % rank, node.args[2] % rank
    order = list(range(rank))
    order[a], order[b] = order[b], order[a]
    return m.remap({old: new for new, old in enumerate(order)}) if m is not None else None


def _permute(graph: DependencyGraph, node: fx.Node, maps: Maps) -> NodeMap:
    m = _single(maps.get(node.args[0]))
    dims = node.args[1] if isinstance(node.args[1], (tuple, list)) else node.args[1:]
    rank = _rank(node)
    return m.remap({d % rank: new for new, d in enumerate(dims)}) if m is not None else None


def _reshape(editable: bool) -> Rule:
    """Reshape-like ops, read from the recorded shapes: pass, merge or split the tracked axes."""

    def rule(graph: DependencyGraph, node: fx.Node, maps: Maps) -> NodeMap:
        m = _single(maps.get(node.args[0]))
        if m is None:
            return None
        src, dst = shape_of(node.args[0]), shape_of(node)
        if src is None or dst is None:
            raise ValueError("no shape recorded")
        if src == dst:  # a reshape to the same shape: the map passes; its literal sizes still follow
            if editable:
                graph.edits.append(ShapeEdit(node, "reshape", [m]))
            return m
        block = [(ia, ja) for ia, ja in reshape_blocks(src, dst) if set(ia) & set(m.axes)]
        if len(block) != 1 or not set(m.axes) <= set(block[0][0]):
            raise ValueError("tracked axes spread over several reshape groups")
        ia, ja = block[0]
        if len(ja) == 1:  # merge (flatten): every source position keeps its atom, untracked axes repeat it
            expanded = m.atoms.reshape([src[a] if a in m.axes else 1 for a in ia])
            out = ChannelMap((ja[0],), np.broadcast_to(expanded, [src[a] for a in ia]).reshape(-1))
        elif len(ia) == 1:
            split = _split_heads if graph.whole_heads and _feeds_attention(node) else _split_axis
            out = split(graph, m, [dst[b] for b in ja], ja)
        else:
            raise ValueError("regroups channel axes with others")
        if editable:
            graph.edits.append(ShapeEdit(node, "reshape", [out]))
        elif len(out.axes) > 1:
            raise ValueError("splits channels with sizes it cannot rewrite")
        return out

    return rule


def _split_axis(graph: DependencyGraph, m: ChannelMap, sizes: list[int], axes: list[int]) -> ChannelMap:
    """``C -> (g1, ..., gk, inner)``: position ``inner`` of every outer index is one unit (equal pieces)."""
    keep = [i for i, s in enumerate(sizes) if s != 1]
    atoms = m.atoms.reshape([sizes[i] for i in keep])
    if len(keep) > 1:
        rows = atoms.reshape(-1, atoms.shape[-1])
        for row in rows[1:]:
            graph.coupling.union_arrays(rows[0], row, _untracked("splits an untracked channel"))
    return ChannelMap(tuple(axes[i] for i in keep), atoms)


def _split_heads(graph: DependencyGraph, m: ChannelMap, sizes: list[int], axes: list[int]) -> ChannelMap:
    """``C -> (..., heads, head_dim)`` feeding attention: every channel of one head is one unit.

    Head ``h`` is the slice at position ``h`` of the second-to-last split axis, over every other split axis
    (all ``head_dim`` positions, and the query/key/value index of a fused ``qkv``): removing it removes the
    head from Q, K and V alike, so the head count falls and every kept head keeps its width.
    """
    if (
        len(sizes) < 2 or sizes[-2] == 1 or sizes[-1] == 1
    ):  # one head (or one channel a head): no heads to cut
        return _split_axis(graph, m, sizes, axes)
    keep = [i for i, s in enumerate(sizes) if s != 1]  # the last two (heads, head_dim) among them
    atoms = m.atoms.reshape([sizes[i] for i in keep])
    per_head = np.moveaxis(atoms, -2, 0).reshape(atoms.shape[-2], -1)
    reason = _untracked("an attention head holds an untracked channel")
    for row in per_head:
        graph.coupling.union_arrays(np.repeat(row[:1], len(row) - 1), row[1:], reason)
    return ChannelMap(tuple(axes[i] for i in keep), atoms)


#: Ops between a head split and attention that only move axes or pick the query/key/value of a fused qkv.
_AXIS_MOVES = {"transpose", "permute", "contiguous", "getitem"}


def _feeds_attention(node: fx.Node, depth: int = 4) -> bool:
    """Whether ``node`` reaches a query, key or value of ``scaled_dot_product_attention`` through axis
    moves only (the head split of an attention, not a channel shuffle)."""
    for user in node.users:
        if user.target is F.scaled_dot_product_attention and any(
            _arg(user, i, name) is node for i, name in enumerate(("query", "key", "value"))
        ):
            return True
        name = user.target if user.op == "call_method" else getattr(user.target, "__name__", "")
        if name in _AXIS_MOVES and depth > 0 and _feeds_attention(user, depth - 1):
            return True
    return False


def _getitem(graph: DependencyGraph, node: fx.Node, maps: Maps) -> NodeMap:
    source, index = node.args[0], node.args[1]
    value = maps.get(source)
    if isinstance(value, list):
        return value[index]
    if value is None:
        return None
    rank = _rank(source)
    items = list(index) if isinstance(index, tuple) else [index]
    if Ellipsis in items:
        at = items.index(Ellipsis)
        fill = rank - (len(items) - 1 - items.count(None))
        items[at : at + 1] = [slice(None)] * fill
    new_axis: dict[int, int] = {}
    picks: dict[int, int] = {}
    axis = out = 0
    for item in items:
        if item is None:
            out += 1
            continue
        if isinstance(item, int):
            picks[axis] = item
        elif item == slice(None):
            new_axis[axis] = out
            out += 1
        elif axis in value.axes:
            raise ValueError("slices channels")
        else:
            new_axis[axis], out = out, out + 1
        axis += 1
    for rest in range(axis, rank):
        new_axis[rest], out = out, out + 1
    atoms, axes = value.atoms, list(value.axes)
    for ax, at in sorted(picks.items(), reverse=True):
        if ax in axes:
            if len(axes) == 1:
                raise ValueError("picks one channel")
            atoms = np.take(atoms, at, axis=axes.index(ax))
            axes.remove(ax)
    return ChannelMap(tuple(new_axis[a] for a in axes), atoms)


# -- concatenation and splitting --------------------------------------------------------------------
def _cat(graph: DependencyGraph, node: fx.Node, maps: Maps) -> NodeMap:
    tensors = list(_arg(node, 0, "tensors"))
    rank = _rank(node)
    dim = _arg(node, 1, "dim", 0) % rank
    parts = [_single(maps.get(t)) for t in tensors]
    if all(p is None or p.axes == (dim,) for p in parts):
        pieces = [
            p.atoms if p is not None else untracked(shape_of(t)[dim])
            for p, t in zip(parts, tensors, strict=True)
        ]
        return ChannelMap((dim,), np.concatenate(pieces))
    tracked = [p for p in parts if p is not None]
    if any(p is None for p in parts) or any(dim in p.axes for p in tracked):
        raise ValueError("concatenates tracked and untracked channels along another axis")
    for p in tracked[1:]:
        graph.coupling.union_arrays(
            tracked[0].atoms, p.atoms, _untracked(f"{node.name} mixes untracked channels")
        )
    return tracked[0]


def _pieces(node: fx.Node, maps: Maps, cut: Callable[[ChannelMap, list[int]], NodeMap]) -> NodeMap:
    """``chunk`` / ``split``: the pieces' maps; ``cut(map, piece widths)`` when they split the channels."""
    m = _single(maps.get(node.args[0]))
    shapes = node.meta.get("shapes")
    if m is None or shapes is None:
        return [None] * len(shapes or ())
    dim = _arg(node, 2, "dim", 0) % _rank(node.args[0])
    if dim not in m.axes:
        return [m] * len(shapes)
    if len(m.axes) != 1:
        raise ValueError("splits channels tracked on several axes")
    return cut(m, [s[dim] for s in shapes])


def _chunk(graph: DependencyGraph, node: fx.Node, maps: Maps) -> NodeMap:
    def equal_pieces(m: ChannelMap, widths: list[int]) -> NodeMap:
        if len(set(widths)) != 1:
            raise ValueError("unequal chunks of channels")
        rows = m.atoms.reshape(len(widths), widths[0])  # also for pieces of one channel each
        for row in rows[1:]:
            graph.coupling.union_arrays(rows[0], row, _untracked(f"{node.name} chunks an untracked channel"))
        return [ChannelMap(m.axes, row) for row in rows]

    return _pieces(node, maps, equal_pieces)


def _split(graph: DependencyGraph, node: fx.Node, maps: Maps) -> NodeMap:
    def sized_pieces(m: ChannelMap, widths: list[int]) -> NodeMap:
        if not isinstance(_arg(node, 1, "split_size_or_sections"), (list, tuple)):
            raise ValueError("splits channels by an int size")
        bounds = np.cumsum([0, *widths])
        pieces = [ChannelMap(m.axes, m.atoms[a:b]) for a, b in itertools.pairwise(bounds)]
        graph.edits.append(ShapeEdit(node, "split", pieces))
        return list(pieces)

    return _pieces(node, maps, sized_pieces)


# -- attention --------------------------------------------------------------------------------------
def _sdpa(graph: DependencyGraph, node: fx.Node, maps: Maps) -> NodeMap:
    """``softmax(Q K^T * scale) V``: Q and K share the contracted head dim; the output is laid out like V."""
    q, k, v = (_arg(node, i, name) for i, name in enumerate(("query", "key", "value")))
    mq, mk, mv = (_single(maps.get(t)) for t in (q, k, v))
    rank = _rank(node)
    if (mq is None) != (mk is None):
        raise ValueError("only one of query and key tracks channels")
    if mq is not None and mk is not None:
        if mq.axes != mk.axes or mq.atoms.shape != mk.atoms.shape or rank - 2 in mq.axes:
            raise ValueError("query and key track different axes")
        graph.coupling.union_arrays(mq.atoms, mk.atoms, _untracked(f"{node.name}: untracked key"))
        if mv is not None and graph.whole_heads:
            _couple_value_heads(graph, node, mq, mv, rank)
        if rank - 1 in mq.axes and node.kwargs.get("scale") is None:
            graph.edits.append(ShapeEdit(node, "sdpa_scale", [mq], head_dim=shape_of(q)[-1]))
    if mv is not None and rank - 2 in mv.axes:
        raise ValueError("value tracks the sequence axis")
    return mv


def _couple_value_heads(
    graph: DependencyGraph, node: fx.Node, mq: ChannelMap, mv: ChannelMap, rank: int
) -> None:
    """Whole heads: head ``h`` of the value goes with head ``h`` of the query and key (the head axis is a
    batch axis of the attention, so all three must keep the same heads)."""
    head_axis = rank - 3
    if head_axis not in mq.axes or head_axis not in mv.axes:
        return
    q_heads, v_heads = _slices_along(mq, head_axis), _slices_along(mv, head_axis)
    if len(q_heads) != len(v_heads):
        raise ValueError("query and value have different head counts")
    graph.coupling.union_arrays(
        q_heads[:, 0], v_heads[:, 0], _untracked(f"{node.name}: untracked value head")
    )


def _slices_along(m: ChannelMap, axis: int) -> np.ndarray:
    """The map's atoms as one row per position of tensor ``axis``."""
    at = m.axes.index(axis)
    return np.moveaxis(m.atoms, at, 0).reshape(m.atoms.shape[at], -1)


# -- modules ----------------------------------------------------------------------------------------
def _conv(graph: DependencyGraph, node: fx.Node, maps: Maps) -> NodeMap:
    conv: nn.Conv1d = graph.gm.get_submodule(str(node.target))
    target, g = str(node.target), conv.groups
    m = _single(maps.get(node.args[0]))
    if m is not None and m.axes != (1,):
        raise ValueError(f"input channels tracked on axes {m.axes}")
    multiplier = conv.out_channels // g
    if g > 1 and g == conv.in_channels and (m is not None or multiplier == 1):
        return _depthwise(graph, target, m, multiplier)
    if m is not None:
        if g > 1:
            _couple_groups(graph, target, m.atoms, g)
        graph.consumer(target, m.atoms, groups=g)
    out = graph.producer(target, conv.out_channels)
    if g > 1:
        _couple_groups(graph, target, out, g)
    return ChannelMap((1,), out)


def _depthwise(graph: DependencyGraph, target: str, m: ChannelMap | None, multiplier: int) -> NodeMap:
    """One input channel per group: outputs ``multiplier*i ..`` belong to input ``i``'s unit (a follower)."""
    if m is None:
        return None
    out = np.repeat(m.atoms, multiplier)
    graph.follower(target, out)
    return ChannelMap((1,), out)


def _couple_groups(graph: DependencyGraph, target: str, atoms: np.ndarray, groups: int) -> None:
    """Position ``k`` of every group is one unit, so every group keeps the same positions (``groups`` is
    fixed); with one position per group that makes every channel one unit, which no selection splits."""
    rows = atoms.reshape(groups, -1)
    reason = BlockReason("grouped_conv", f"{target}: a group of the grouped conv reads an untracked channel")
    for row in rows[1:]:
        graph.coupling.union_arrays(rows[0], row, reason)


def _linear(graph: DependencyGraph, node: fx.Node, maps: Maps) -> NodeMap:
    linear: nn.Linear = graph.gm.get_submodule(str(node.target))
    m = _single(maps.get(node.args[0]))
    rank = _rank(node)
    if m is not None:
        if m.axes != (rank - 1,):
            raise ValueError(f"input channels tracked on axes {m.axes}, not the features")
        graph.consumer(str(node.target), m.atoms)
    return ChannelMap((rank - 1,), graph.producer(str(node.target), linear.out_features))


def _per_channel(graph: DependencyGraph, node: fx.Node, maps: Maps) -> NodeMap:
    """BatchNorm, per-channel PReLU: one parameter entry per channel of axis 1, sliced with the channels."""
    m = _single(maps.get(node.args[0]))
    if m is not None:
        if m.axes != (1,):
            raise ValueError(f"its parameters follow axis 1 but channels are tracked on {m.axes}")
        graph.follower(str(node.target), m.atoms)
    return m


def _prelu(graph: DependencyGraph, node: fx.Node, maps: Maps) -> NodeMap:
    prelu: nn.PReLU = graph.gm.get_submodule(str(node.target))
    if prelu.num_parameters == 1:  # one slope shared by every channel: element-wise
        return _same(graph, node, maps)
    return _per_channel(graph, node, maps)


def _layernorm(graph: DependencyGraph, node: fx.Node, maps: Maps) -> NodeMap:
    norm: nn.LayerNorm = graph.gm.get_submodule(str(node.target))
    m = _single(maps.get(node.args[0]))
    rank = _rank(node)
    if m is not None and set(m.axes) & set(range(rank - len(norm.normalized_shape), rank)):
        raise Blocked(
            "normalizes_channels",
            "it normalizes over these channels; removing some changes the statistics of the rest",
        )
    return m


def _groupnorm(graph: DependencyGraph, node: fx.Node, maps: Maps) -> NodeMap:
    raise Blocked(
        "normalizes_channels", "it normalizes over channel groups; removing channels changes their statistics"
    )


_ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.Hardtanh, nn.Sigmoid, nn.Tanh, nn.GELU, nn.SiLU, nn.Hardswish,
                nn.Hardsigmoid, nn.LeakyReLU, nn.ELU, nn.Mish, nn.Dropout, nn.Dropout1d, nn.Dropout2d,
                nn.Identity)  # fmt: skip
_POOLS = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
          nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool2d,
          nn.Upsample)  # fmt: skip

_MODULE_RULES: tuple[tuple[type | tuple[type, ...], Rule], ...] = (
    ((nn.Conv1d, nn.Conv2d, nn.Conv3d), _conv),
    (nn.Linear, _linear),
    (nn.modules.batchnorm._BatchNorm, _per_channel),
    (nn.PReLU, _prelu),
    (nn.LayerNorm, _layernorm),
    (nn.GroupNorm, _groupnorm),
    (_ACTIVATIONS, _same),
    (_POOLS, _spatial),
    (nn.Flatten, _reshape(editable=False)),
)

_UNARY_FUNCTIONS = (F.relu, F.relu6, torch.relu, torch.sigmoid, torch.tanh, F.gelu, F.silu, F.hardswish,
                    F.hardsigmoid, F.hardtanh, F.leaky_relu, F.elu, F.mish, F.dropout, torch.abs,
                    torch.clamp, operator.neg, torch.exp)  # fmt: skip
_SPATIAL_FUNCTIONS = (F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_max_pool2d, F.avg_pool2d,
                      F.max_pool2d, F.interpolate)  # fmt: skip
_BINARY_FUNCTIONS = (operator.add, operator.mul, operator.sub, operator.truediv, torch.add, torch.mul,
                     torch.sub, torch.div)  # fmt: skip

_FUNCTION_RULES: dict[Any, Rule] = {
    **dict.fromkeys(_UNARY_FUNCTIONS, _same),
    **dict.fromkeys(_SPATIAL_FUNCTIONS, _spatial),
    **dict.fromkeys(_BINARY_FUNCTIONS, _elementwise),
    torch.cat: _cat,
    torch.concat: _cat,
    torch.chunk: _chunk,
    torch.split: _split,
    torch.flatten: _reshape(editable=False),
    torch.reshape: _reshape(editable=True),
    torch.transpose: _transpose,
    torch.permute: _permute,
    torch.mean: _reduce,
    torch.sum: _reduce,
    torch.softmax: _softmax,
    F.softmax: _softmax,
    F.scaled_dot_product_attention: _sdpa,
    operator.getitem: _getitem,
}

_METHOD_RULES: dict[str, Rule] = {
    **dict.fromkeys(
        ("relu", "sigmoid", "tanh", "contiguous", "clone", "float", "abs", "clamp", "exp"), _same
    ),
    **dict.fromkeys(("add", "mul", "sub", "div"), _elementwise),
    "flatten": _reshape(editable=False),
    "unsqueeze": _reshape(editable=False),
    "squeeze": _reshape(editable=False),
    "view": _reshape(editable=True),
    "reshape": _reshape(editable=True),
    "transpose": _transpose,
    "permute": _permute,
    "mean": _reduce,
    "sum": _reduce,
    "chunk": _chunk,
    "split": _split,
    "softmax": _softmax,
}
