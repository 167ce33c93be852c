"""Channel atoms, their coupling, and where they live in a tensor.

Every output channel of a producer (a conv's out-channel, a linear's out-feature) is an *atom*: one integer.
A tensor's :class:`ChannelMap` says which atom sits at each position of its tracked axes (``-1``: a position
that no producer owns, such as an input image channel). Ops propagate maps; ops that force two channels to
be removed together (a residual ``a + b`` pairs ``a[c]`` with ``b[c]``) *couple* their atoms in a
:class:`Coupling` (union-find). A *unit* is one class of coupled atoms: it is kept or removed as a whole,
which is what makes structured pruning exact.

A unit can be *blocked*: one of its atoms reaches something that cannot lose channels (the network output,
an op outside the table, a protected layer). Blocking is recorded with a :class:`BlockReason` (a sentence
for the report, and a short ``kind`` for the pass's ``blocked:<kind>`` stats) and spreads on coupling.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

UNTRACKED = -1


class BlockReason(str):
    """Why a unit cannot be removed: the sentence the report shows, plus a short ``kind`` to count it by.

    A ``str`` (the sentence) so reasons stay readable, sortable and comparable to plain text; ``kind`` is the
    stable slug (``network_output``, ``not_in_table``, ``grouped_conv``, ...) behind ``blocked:<kind>``.
    """

    kind: str

    def __new__(cls, kind: str, text: str) -> BlockReason:
        reason = super().__new__(cls, text)
        reason.kind = kind
        return reason

    def __reduce__(self) -> tuple[type, tuple[str, str]]:  # copy/pickle keep the kind
        return (BlockReason, (self.kind, str(self)))


class Coupling:
    """Union-find over atoms, with the reasons a class is blocked."""

    def __init__(self) -> None:
        self._parent: list[int] = []
        self._reasons: dict[int, set[BlockReason]] = {}

    def new_atoms(self, count: int) -> np.ndarray:
        """``count`` fresh, uncoupled atoms."""
        start = len(self._parent)
        self._parent.extend(range(start, start + count))
        return np.arange(start, start + count, dtype=np.int64)

    def __len__(self) -> int:
        return len(self._parent)

    def find(self, atom: int) -> int:
        root = atom
        while self._parent[root] != root:
            root = self._parent[root]
        while self._parent[atom] != root:  # path compression
            self._parent[atom], atom = root, self._parent[atom]
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        if ra > rb:
            ra, rb = rb, ra
        self._parent[rb] = ra
        if rb in self._reasons:
            self._reasons.setdefault(ra, set()).update(self._reasons.pop(rb))

    def union_arrays(self, a: np.ndarray, b: np.ndarray, reason_if_untracked: BlockReason) -> None:
        """Couple ``a[i]`` with ``b[i]`` everywhere; an atom paired with an untracked position is blocked."""
        for x, y in zip(a.ravel().tolist(), b.ravel().tolist(), strict=True):
            if x == UNTRACKED and y == UNTRACKED:
                continue
            if x == UNTRACKED or y == UNTRACKED:
                self.block(y if x == UNTRACKED else x, reason_if_untracked)
            else:
                self.union(x, y)

    def block(self, atom: int, reason: BlockReason) -> None:
        if atom != UNTRACKED:
            self._reasons.setdefault(self.find(atom), set()).add(reason)

    def block_all(self, atoms: np.ndarray, reason: BlockReason) -> None:
        for atom in np.unique(atoms).tolist():
            self.block(atom, reason)

    def reasons(self, atom: int) -> set[BlockReason]:
        return self._reasons.get(self.find(atom), set())

    def removed(self, atoms: np.ndarray, removed_roots: np.ndarray) -> np.ndarray:
        """Whether each position's unit is among ``removed_roots`` (untracked positions never are)."""
        return np.isin(self.roots(atoms), removed_roots)

    def roots(self, atoms: np.ndarray) -> np.ndarray:
        """The unit (root atom) of every position; untracked positions stay ``-1``."""
        flat = [self.find(a) if a != UNTRACKED else UNTRACKED for a in atoms.ravel().tolist()]
        return np.asarray(flat, dtype=np.int64).reshape(atoms.shape)


@dataclass(frozen=True)
class ChannelMap:
    """The atoms along the tracked ``axes`` of a tensor: ``atoms.shape`` is the tensor's size on them.

    Usually one axis (dim 1 of NCHW, the last dim of tokens); several after a reshape splits channels into
    heads or shuffle groups.
    """

    axes: tuple[int, ...]
    atoms: np.ndarray

    def remap(self, new_axis: dict[int, int]) -> ChannelMap:
        """The map after the tensor's axes moved (``new_axis[old] = new``), keeping positions."""
        axes = tuple(new_axis[a] for a in self.axes)
        order = sorted(range(len(axes)), key=lambda i: axes[i])
        return ChannelMap(tuple(axes[i] for i in order), np.transpose(self.atoms, order))

    def shifted(self, by: int) -> ChannelMap:
        return ChannelMap(tuple(a + by for a in self.axes), self.atoms)


def reshape_blocks(src: tuple[int, ...], dst: tuple[int, ...]) -> list[tuple[list[int], list[int]]]:
    """Pair groups of source and destination axes with equal products: how a reshape regroups axes.

    ``(N, 12, H, W) -> (N, 3, 4, H, W)`` gives ``[([0], [0]), ([1], [1, 2]), ([2], [3]), ([3], [4])]``.
    Raises ValueError when the shapes do not describe the same number of elements.
    """
    blocks: list[tuple[list[int], list[int]]] = []
    i = j = 0
    while i < len(src) and j < len(dst):
        ia, ja = [i], [j]
        pa, pb = src[i], dst[j]
        i, j = i + 1, j + 1
        while pa != pb:
            if pa < pb:
                if i >= len(src):
                    raise ValueError(f"cannot pair {src} with {dst}")
                ia.append(i)
                pa, i = pa * src[i], i + 1
            else:
                if j >= len(dst):
                    raise ValueError(f"cannot pair {src} with {dst}")
                ja.append(j)
                pb, j = pb * dst[j], j + 1
        blocks.append((ia, ja))
    rest_src, rest_dst = list(range(i, len(src))), list(range(j, len(dst)))
    if any(src[a] != 1 for a in rest_src) or any(dst[b] != 1 for b in rest_dst) or not blocks:
        raise ValueError(f"cannot pair {src} with {dst}")
    blocks[-1][0].extend(rest_src)
    blocks[-1][1].extend(rest_dst)
    return blocks
