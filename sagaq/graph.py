"""Draw a saga's step graph as text: ASCII for the terminal, Mermaid and Graphviz DOT for docs
and the dashboard. Pure functions of a saga's frozen plan; pass step statuses to colour nodes.

The forward graph has an edge dep -> step for each declared dependency. The compensation graph
is drawn from `plan.compensation`, the very shape the compiler turns into the rollback canvas:
only the undoable steps (a compensation, not the pivot nor after it), and an edge y -> x when
undoing x starts right after undoing y.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from sagaq.definition.saga import Saga
from sagaq.definition.shape import edges as shape_edges

FORMATS = ("ascii", "mermaid", "dot")

Statuses = Mapping[str, str]

# status -> (fill, stroke); statuses not listed are drawn plain.
COLOURS = {
    "RUNNING": ("#dbeafe", "#2563eb"),
    "COMPLETED": ("#dcfce7", "#16a34a"),
    "FAILED": ("#fee2e2", "#dc2626"),
    "SKIPPED": ("#f3f4f6", "#9ca3af"),
    "COMPENSATING": ("#fef3c7", "#d97706"),
    "COMPENSATED": ("#f3e8ff", "#9333ea"),
    "COMPENSATION_FAILED": ("#fecaca", "#991b1b"),
}


@dataclass(frozen=True)
class Plan:
    """Nodes grouped in layers (a node's layer is one more than its deepest predecessor's)."""

    saga: str
    compensation: bool
    layers: tuple[tuple[str, ...], ...]
    edges: tuple[tuple[str, str], ...]

    def successors(self, node: str) -> list[str]:
        return [b for a, b in self.edges if a == node]

    def label(self, node: str) -> str:
        return f"undo {node}" if self.compensation else node


def plan(saga: Saga, *, compensation: bool = False) -> Plan:
    frozen = saga.plan
    if not compensation:
        order = list(frozen.order)
        edges = [(dep, step) for step in order for dep in frozen.deps[step]]
    else:
        order = [s for s in reversed(frozen.order) if s in frozen.undoable]
        edges = shape_edges(frozen.compensation) if frozen.compensation else []
    return Plan(saga.name, compensation, _layers(order, edges), tuple(edges))


def _layers(order: list[str], edges: list[tuple[str, str]]) -> tuple[tuple[str, ...], ...]:
    """A node's layer is one more than its deepest predecessor's (every edge points forward
    in `order`)."""
    preds: dict[str, list[str]] = {node: [] for node in order}
    for a, b in edges:
        preds[b].append(a)
    depth: dict[str, int] = {}
    for node in order:
        depth[node] = 1 + max((depth[a] for a in preds[node]), default=-1)
    layers: list[list[str]] = [[] for _ in range(max(depth.values(), default=-1) + 1)]
    for node in order:
        layers[depth[node]].append(node)
    return tuple(tuple(layer) for layer in layers)


def render(
    saga: Saga, fmt: str, *, compensation: bool = False, statuses: Statuses | None = None
) -> str:
    """Render in one of FORMATS."""
    renderers: dict[str, Callable[[Plan, Statuses], str]] = {
        "ascii": _ascii,
        "mermaid": _mermaid,
        "dot": _dot,
    }
    if fmt not in renderers:
        raise ValueError(f"unknown graph format {fmt!r} (use {', '.join(FORMATS)})")
    return renderers[fmt](plan(saga, compensation=compensation), statuses or {})


def to_ascii(saga: Saga, *, compensation: bool = False, statuses: Statuses | None = None) -> str:
    return render(saga, "ascii", compensation=compensation, statuses=statuses)


def to_mermaid(saga: Saga, *, compensation: bool = False, statuses: Statuses | None = None) -> str:
    return render(saga, "mermaid", compensation=compensation, statuses=statuses)


def to_dot(saga: Saga, *, compensation: bool = False, statuses: Statuses | None = None) -> str:
    return render(saga, "dot", compensation=compensation, statuses=statuses)


def mermaid_id(step: str) -> str:
    """The node id of a step in Mermaid output (prefixed: `end` and friends are keywords)."""
    return f"s_{step}"


def _ascii(p: Plan, statuses: Statuses) -> str:
    title = "compensation plan (undo in this order)" if p.compensation else "steps"
    lines = [f"{p.saga}: {title}"]
    if not p.layers:
        lines.append("  (no step has a compensation)")
    for number, layer in enumerate(p.layers, start=1):
        for i, node in enumerate(layer):
            mark = f"{number:>2}" if i == 0 else "  "
            status = f"  [{statuses[node]}]" if node in statuses else ""
            lines.append(f"{mark}  {p.label(node)}{status}")
            lines.extend(f"      --> {p.label(succ)}" for succ in p.successors(node))
    return "\n".join(lines) + "\n"


def _mermaid(p: Plan, statuses: Statuses) -> str:
    kind = "compensation plan" if p.compensation else "steps"
    lines = [f"%% saga {p.saga}: {kind}", "flowchart TD"]
    for node in (n for layer in p.layers for n in layer):
        status = f"<br/>{statuses[node]}" if node in statuses else ""
        lines.append(f'    {mermaid_id(node)}["{p.label(node)}{status}"]')
    lines.extend(f"    {mermaid_id(a)} --> {mermaid_id(b)}" for a, b in p.edges)
    used = {statuses[n] for layer in p.layers for n in layer if n in statuses}
    for status in (s for s in COLOURS if s in used):
        fill, stroke = COLOURS[status]
        lines.append(f"    classDef {status.lower()} fill:{fill},stroke:{stroke}")
        members = ",".join(
            mermaid_id(n) for layer in p.layers for n in layer if statuses.get(n) == status
        )
        lines.append(f"    class {members} {status.lower()}")
    return "\n".join(lines) + "\n"


def _dot(p: Plan, statuses: Statuses) -> str:
    name = f"{p.saga} compensation" if p.compensation else p.saga
    lines = [
        f'digraph "{name}" {{',
        "    rankdir=TB;",
        '    node [shape=box, style="rounded,filled", fillcolor="#ffffff", fontname="Helvetica"];',
    ]
    for node in (n for layer in p.layers for n in layer):
        status = statuses.get(node)
        label = p.label(node) + (f"\\n{status}" if status else "")
        colour = COLOURS.get(status or "")
        paint = f', fillcolor="{colour[0]}", color="{colour[1]}"' if colour else ""
        lines.append(f'    "{node}" [label="{label}"{paint}];')
    lines.extend(f'    "{a}" -> "{b}";' for a, b in p.edges)
    lines.append("}")
    return "\n".join(lines) + "\n"
