"""Pure graph helpers over a step DAG given as {step: dependencies}.

Everything here is iterative (no recursion, so a 1,000-step line cannot hit RecursionError)
and near-linear: sets of steps are kept as bit masks (Python ints, bit i = the i-th step in
topological order), so "every ancestor of x" is one integer and a union is one `|`.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping, Sequence

from sagaq.errors import DefinitionError

Deps = Mapping[str, Iterable[str]]


def topological_order(deps: Deps) -> list[str]:
    """Steps ordered so every step comes after its dependencies; ties keep definition order
    (Kahn's algorithm, always taking the earliest-defined ready step)."""
    index = {node: i for i, node in enumerate(deps)}
    waiting = {node: 0 for node in deps}
    dependents: dict[str, list[str]] = {node: [] for node in deps}
    for node, node_deps in deps.items():
        for dep in dict.fromkeys(node_deps):  # a repeated dependency counts once
            dependents[dep].append(node)
            waiting[node] += 1
    ready = [index[node] for node, count in waiting.items() if count == 0]
    heapq.heapify(ready)
    names = list(deps)
    order: list[str] = []
    while ready:
        node = names[heapq.heappop(ready)]
        order.append(node)
        for dependent in dependents[node]:
            waiting[dependent] -= 1
            if waiting[dependent] == 0:
                heapq.heappush(ready, index[dependent])
    if len(order) < len(names):
        raise DefinitionError("dependency cycle: " + " -> ".join(_a_cycle(deps, set(order))))
    return order


def _a_cycle(deps: Deps, placed: set[str]) -> list[str]:
    """A cycle among the steps Kahn's algorithm could not place, starting from the first one
    defined. Each of them has a dependency that was not placed either, so following those
    dependencies must come back to a step already seen."""
    node = next(n for n in deps if n not in placed)
    path: list[str] = []
    seen: dict[str, int] = {}
    while node not in seen:
        seen[node] = len(path)
        path.append(node)
        node = next(d for d in deps[node] if d not in placed)
    return [*path[seen[node] :], node]


def ancestor_masks(order: Sequence[str], deps: Deps) -> list[int]:
    """For each step of `order` (a topological order), the bit mask of every step it depends
    on directly or transitively; bit i stands for order[i]."""
    position = {node: i for i, node in enumerate(order)}
    masks: list[int] = []
    for node in order:
        mask = 0
        for dep in deps[node]:
            i = position[dep]
            mask |= masks[i] | (1 << i)
        masks.append(mask)
    return masks


def dependents(deps: Deps) -> dict[str, list[str]]:
    """The reversed graph: for each step, the steps that depend on it directly."""
    found: dict[str, list[str]] = {node: [] for node in deps}
    for node, node_deps in deps.items():
        for dep in dict.fromkeys(node_deps):
            found[dep].append(node)
    return found


def members(mask: int, order: Sequence[str]) -> frozenset[str]:
    """The steps whose bits are set in `mask`."""
    bits = bin(mask)[:1:-1]  # least significant bit first
    return frozenset(order[i] for i, bit in enumerate(bits) if bit == "1")


def ancestors(deps: Deps) -> dict[str, frozenset[str]]:
    """For each step, every step it depends on directly or transitively."""
    order = topological_order(deps)
    masks = ancestor_masks(order, deps)
    return {node: members(masks[i], order) for i, node in enumerate(order)}
