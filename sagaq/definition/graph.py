"""Pure graph helpers over a step DAG given as {step: dependencies}."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from sagaq.errors import DefinitionError

Deps = Mapping[str, Iterable[str]]


def topological_order(deps: Deps) -> list[str]:
    """Steps ordered so every step comes after its dependencies; ties keep definition order."""
    order: list[str] = []
    state: dict[str, str] = {}  # "visiting" | "done"

    def visit(node: str, path: list[str]) -> None:
        if state.get(node) == "done":
            return
        if state.get(node) == "visiting":
            cycle = [*path[path.index(node) :], node]
            raise DefinitionError("dependency cycle: " + " -> ".join(cycle))
        state[node] = "visiting"
        for dep in deps[node]:
            visit(dep, [*path, node])
        state[node] = "done"
        order.append(node)

    for node in deps:
        visit(node, [])
    return order


def ancestors(deps: Deps) -> dict[str, frozenset[str]]:
    """For each step, every step it depends on directly or transitively."""
    result: dict[str, frozenset[str]] = {}
    for node in topological_order(deps):
        found: set[str] = set()
        for dep in deps[node]:
            found.add(dep)
            found |= result[dep]
        result[node] = frozenset(found)
    return result
