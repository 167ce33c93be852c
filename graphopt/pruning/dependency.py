"""Channel-dependency analysis on the IR: which channels must be removed together, and which cannot go.

One walk over the FX graph in topological order propagates a :class:`~graphopt.pruning.channel_map.ChannelMap`
through every node with the rules of :mod:`graphopt.pruning.rules` (an explicit op table) and records:

- *producers*: modules whose output channels are atoms (conv out-channels, linear out-features);
- *consumers*: modules that read channels on their input dim (the in-channels of a conv, the columns of a
  linear), with the atoms at each input position;
- *followers*: per-channel modules sliced like their input (BatchNorm, depthwise conv);
- *parameter slices*: ``get_attr`` tensors combined element-wise with channels (a position embedding);
- *shape edits*: nodes whose literal sizes follow the widths (reshape sizes, ``split`` sizes, the softmax
  scale of attention whose head dim shrinks).

Channel counts read from tensors (``x.shape``) are followed too (:mod:`graphopt.pruning.size_flow`): one
that shapes a tensor of another group blocks the channels it was read from.

Fail closed: an op outside the table blocks every unit that reaches it, and the network's outputs are never
pruned. :meth:`DependencyGraph.groups` then gathers the producers that share units into groups, with their
units and the reasons any of them are blocked.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch.fx as fx

from graphopt.pruning.channel_map import UNTRACKED, BlockReason, ChannelMap, Coupling

#: What a node yields in the walk: a map, no map (untracked / not a tensor), or one per tuple element.
NodeMap = ChannelMap | list[ChannelMap | None] | None


@dataclass
class Producer:
    target: str
    atoms: np.ndarray  # one atom per output channel, in order


@dataclass
class Consumer:
    target: str
    positions: list[np.ndarray] = field(default_factory=list)  # atoms along the input dim, per call site
    groups: int = 1


@dataclass
class Follower:
    """A module sliced along its output channels by its input's units: BatchNorm, PReLU, depthwise convs.

    A depthwise conv with multiplier ``k`` (``groups == in_channels``, ``k`` outputs per group) is one too:
    output ``k*i + j`` reads input ``i`` only, so its position carries input ``i``'s atom and removing input
    ``i`` removes the whole group ``i`` (its ``k`` filters).
    """

    target: str
    positions: np.ndarray


@dataclass
class ParamSlice:
    target: str
    axis: int
    positions: np.ndarray


@dataclass
class ShapeEdit:
    """A node whose literal sizes must be rewritten after pruning."""

    node: fx.Node
    kind: str  # "reshape": arguments at the map's axes; "split": the sizes list; "sdpa_scale"
    maps: list[ChannelMap]
    head_dim: int = 0  # sdpa_scale: the query's last dim before pruning


@dataclass
class Group:
    """Producers whose channels are coupled, with their units (root atoms) and blocked units' reasons."""

    index: int
    producers: list[str]
    units: list[int]
    blocked: dict[int, set[BlockReason]]
    #: The units of each producer: a producer left with none would be a layer with zero outputs.
    producer_units: dict[str, list[int]] = field(default_factory=dict)
    #: Channels every unit spans in each producer (their gcd): 1 for plain channels, the head width for
    #: whole attention heads, so rounding kept widths to a channel multiple can count in units.
    unit_width: int = 1

    @property
    def prunable(self) -> list[int]:
        return [u for u in self.units if u not in self.blocked]

    @property
    def reasons(self) -> set[BlockReason]:
        return set().union(*self.blocked.values()) if self.blocked else set()

    def blocked_by_kind(self) -> dict[str, int]:
        """How many of the group's units each kind of reason blocks (a unit counts once per kind)."""
        counts: dict[str, int] = {}
        for reasons in self.blocked.values():
            for kind in {r.kind for r in reasons}:
                counts[kind] = counts.get(kind, 0) + 1
        return counts


class DependencyGraph:
    """The result of :func:`analyze`. ``coupling`` decides which atoms form one unit."""

    def __init__(self, gm: fx.GraphModule, whole_heads: bool = True):
        self.gm = gm
        #: Attention loses whole heads (True) or the same channels of every head (False).
        self.whole_heads = whole_heads
        self.coupling = Coupling()
        self.producers: dict[str, Producer] = {}
        self.consumers: dict[str, Consumer] = {}
        self.followers: dict[str, Follower] = {}
        self.params: dict[str, ParamSlice] = {}
        self.edits: list[ShapeEdit] = []

    # -- recording, used by the rules -------------------------------------------------------------
    def producer(self, target: str, channels: int) -> np.ndarray:
        """The atoms of ``target``'s output channels; a module called twice keeps the same atoms."""
        if target not in self.producers:
            self.producers[target] = Producer(target, self.coupling.new_atoms(channels))
        return self.producers[target].atoms

    def consumer(self, target: str, positions: np.ndarray, groups: int = 1) -> None:
        record = self.consumers.setdefault(target, Consumer(target, groups=groups))
        if record.positions:  # a second call site must keep the same input channels
            self.coupling.union_arrays(record.positions[0], positions, _shared(target))
        record.positions.append(positions)

    def follower(self, target: str, positions: np.ndarray) -> None:
        if target in self.followers:
            self.coupling.union_arrays(self.followers[target].positions, positions, _shared(target))
        else:
            self.followers[target] = Follower(target, positions)

    def param_slice(self, target: str, axis: int, positions: np.ndarray) -> None:
        if target in self.params:
            self.coupling.union_arrays(self.params[target].positions, positions, _shared(target))
        else:
            self.params[target] = ParamSlice(target, axis, positions)

    def block(self, value: NodeMap, reason: BlockReason) -> None:
        for m in value if isinstance(value, list) else [value]:
            if m is not None:
                self.coupling.block_all(m.atoms, reason)

    # -- results ------------------------------------------------------------------------------------
    def groups(self) -> list[Group]:
        """Producers sharing at least one unit, in graph order, each with its units and blocked reasons."""
        counted = {
            t: np.unique(self.coupling.roots(p.atoms), return_counts=True) for t, p in self.producers.items()
        }
        roots = {t: units.tolist() for t, (units, _) in counted.items()}
        owner: dict[int, int] = {}
        link = Coupling()  # union-find over producer indices
        link.new_atoms(len(roots))
        for index, units in enumerate(roots.values()):
            for unit in units:
                if unit in owner:
                    link.union(owner[unit], index)
                else:
                    owner[unit] = index
        members: dict[int, list[str]] = {}
        for index, target in enumerate(roots):
            members.setdefault(link.find(index), []).append(target)
        groups = []
        for number, targets in enumerate(members.values()):
            units = sorted({u for t in targets for u in roots[t]})
            blocked = {u: self.coupling.reasons(u) for u in units if self.coupling.reasons(u)}
            width = int(np.gcd.reduce(np.concatenate([counted[t][1] for t in targets])))
            groups.append(Group(number, targets, units, blocked, {t: roots[t] for t in targets}, width))
        return groups


def _shared(target: str) -> BlockReason:
    return BlockReason("shared_module", f"{target} is shared")


def nested_nodes(value: Any) -> list[fx.Node]:
    found: list[fx.Node] = []
    fx.node.map_arg(value, found.append)
    return found


def untracked(size: int) -> np.ndarray:
    return np.full(size, UNTRACKED, dtype=np.int64)
