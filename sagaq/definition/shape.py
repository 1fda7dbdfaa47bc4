"""The shape of a set of steps: Leaf, Seq (one after the other) and Par (independent).

A series-parallel DAG is exactly a tree of these. `shape_of` finds it without recursion and
in near-linear time for lines and typical DAGs, working on bit masks (see graph.py):

- steps that are not connected at all run in parallel (Par of the weakly connected parts);
- a connected set is cut wherever every step after the cut waits for every step before it
  (Seq of the pieces between cuts);
- a connected set with no such cut is not series-parallel (e.g. a->c, b->c, b->d). It is
  layered by depth: still correct, at the cost of some waiting that the DAG does not demand.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import pairwise


@dataclass(frozen=True)
class Leaf:
    step: str


@dataclass(frozen=True)
class Seq:
    parts: tuple[Shape, ...]


@dataclass(frozen=True)
class Par:
    parts: tuple[Shape, ...]


Shape = Leaf | Seq | Par


def shape_of(names: Sequence[str], before: Sequence[int], chosen: Sequence[int]) -> Shape:
    """The shape of the steps `chosen` (indices into `names`, ascending, not empty), where
    names is a topological order and before[i] is the bit mask of every step that must
    finish before names[i] (transitively closed). Steps outside `chosen` are ignored."""
    built: dict[int, Shape] = {}
    # Each job is (key, indices) to split, or (key, kind, child keys) to assemble once its
    # children are built: an explicit stack instead of recursion.
    jobs: list[tuple[int, list[int]] | tuple[int, type[Seq] | type[Par], list[int]]] = [
        (0, list(chosen))
    ]
    next_key = 1
    while jobs:
        job = jobs.pop()
        if len(job) == 3:
            key, kind, children = job
            built[key] = _assemble(kind, [built.pop(c) for c in children])
            continue
        key, indices = job
        if len(indices) == 1:
            built[key] = Leaf(names[indices[0]])
            continue
        kind, pieces = _split(indices, before)
        if not pieces:
            built[key] = _layered(names, before, indices)
            continue
        children = list(range(next_key, next_key + len(pieces)))
        next_key += len(pieces)
        jobs.append((key, kind, children))
        jobs.extend(zip(children, pieces, strict=True))
    return built[0]


def _assemble(kind: type[Seq] | type[Par], parts: list[Shape]) -> Shape:
    if kind is Par:
        return Par(tuple(parts))
    flat: list[Shape] = []
    for part in parts:  # a layered piece is itself a Seq: keep one flat sequence
        flat.extend(part.parts if isinstance(part, Seq) else (part,))
    return Seq(tuple(flat))


def _split(
    indices: list[int], before: Sequence[int]
) -> tuple[type[Seq] | type[Par], list[list[int]]]:
    """Par of the connected parts if there are several, else Seq of the series pieces; no
    pieces when the set is connected and has no series cut."""
    within = _mask(indices)
    parts = _connected_parts(indices, before, within)
    if len(parts) > 1:
        return Par, parts
    return Seq, _series_pieces(indices, before)


def _mask(indices: list[int]) -> int:
    mask = 0
    for i in indices:
        mask |= 1 << i
    return mask


def _connected_parts(indices: list[int], before: Sequence[int], within: int) -> list[list[int]]:
    """Weakly connected parts (in the order of their first step), by union-find. Each part
    keeps the mask of its members, so a step finds every part it touches by taking its
    highest still-unexplained predecessor: one lookup per merge, not per predecessor."""
    root: dict[int, int] = {}
    part_mask: dict[int, int] = {}

    def find(i: int) -> int:
        while root[i] != i:
            root[i] = root[root[i]]
            i = root[i]
        return i

    for v in indices:
        root[v] = v
        part_mask[v] = 1 << v
        preds = before[v] & within
        while preds:
            other = find(preds.bit_length() - 1)
            preds &= ~part_mask[other]
            mine = find(v)
            if other != mine:
                root[other] = mine
                part_mask[mine] |= part_mask.pop(other)
    parts: dict[int, list[int]] = {}
    for v in indices:
        parts.setdefault(find(v), []).append(v)
    return list(parts.values())


def _series_pieces(indices: list[int], before: Sequence[int]) -> list[list[int]]:
    """Cut `indices` (a connected set, in topological order) wherever every later step waits
    for every earlier one. reach[k] is how long a prefix the k-th step waits for entirely;
    a cut before position k holds when no step from k on reaches less than k."""
    local = {v: k for k, v in enumerate(indices)}
    reach: list[int] = []
    prefix = 0
    for k, v in enumerate(indices):
        missing = prefix & ~before[v]
        reach.append(k if not missing else local[(missing & -missing).bit_length() - 1])
        prefix |= 1 << v
    cuts: list[int] = []
    lowest = len(indices)
    for k in reversed(range(1, len(indices))):
        lowest = min(lowest, reach[k])
        if lowest >= k:
            cuts.append(k)
    if not cuts:
        return []
    bounds = [0, *reversed(cuts), len(indices)]
    return [indices[a:b] for a, b in pairwise(bounds)]


def _layered(names: Sequence[str], before: Sequence[int], indices: list[int]) -> Shape:
    """Layers by depth (longest chain of predecessors within the set). A step with a
    predecessor at depth d has predecessors at every depth below d, so its depth is found by
    binary search over the layers' masks."""
    within = _mask(indices)
    layer_masks: list[int] = []
    layers: list[list[int]] = []
    for v in indices:
        preds = before[v] & within
        low, high = 0, len(layer_masks)  # first layer holding no predecessor of v
        while low < high:
            middle = (low + high) // 2
            if layer_masks[middle] & preds:
                low = middle + 1
            else:
                high = middle
        if low == len(layers):
            layers.append([])
            layer_masks.append(0)
        layers[low].append(v)
        layer_masks[low] |= 1 << v
    parts: list[Shape] = []
    for layer in layers:
        leaves = tuple(Leaf(names[i]) for i in layer)
        parts.append(leaves[0] if len(leaves) == 1 else Par(leaves))
    return Seq(tuple(parts))


def leaves(shape: Shape) -> Iterator[str]:
    """The steps of `shape`, in order."""
    stack: list[Shape] = [shape]
    while stack:
        node = stack.pop()
        if isinstance(node, Leaf):
            yield node.step
        else:
            stack.extend(reversed(node.parts))


def edges(shape: Shape) -> list[tuple[str, str]]:
    """What waits for what in `shape`: (a, b) when b starts right after a, i.e. between the
    last steps of one part of a Seq and the first steps of the next."""
    found: list[tuple[str, str]] = []
    stack: list[Shape] = [shape]
    while stack:
        node = stack.pop()
        if isinstance(node, Leaf):
            continue
        if isinstance(node, Seq):
            for first, then in pairwise(node.parts):
                found.extend((a, b) for a in _ends(first, last=True) for b in _ends(then))
        stack.extend(reversed(node.parts))
    return found


def _ends(shape: Shape, *, last: bool = False) -> list[str]:
    """The steps a shape starts with (or ends with, when `last`)."""
    ends: list[str] = []
    stack: list[Shape] = [shape]
    while stack:
        node = stack.pop()
        if isinstance(node, Leaf):
            ends.append(node.step)
        elif isinstance(node, Seq):
            stack.append(node.parts[-1] if last else node.parts[0])
        else:
            stack.extend(reversed(node.parts))
    return ends
