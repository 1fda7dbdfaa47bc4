"""A saga's step graph as inline SVG, laid out by dependency depth, coloured by step status.

Column = the longest dependency path from a first step, so every arrow points right; steps in
the same column are stacked in definition order. Colours come from the page's CSS
(`.status-completed` ...); each node carries `data-step` and `data-status` for tools and tests.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from html import escape

from sagaq.client import StepResult
from sagaq.definition.graph import topological_order

NODE_W, NODE_H = 176, 54
GAP_X, GAP_Y, PAD = 56, 18, 12
MAX_NAME = 22

Position = tuple[int, int]  # column, row


def layout(dependencies: Mapping[str, Sequence[str]]) -> dict[str, Position]:
    depth: dict[str, int] = {}
    for name in topological_order(dependencies):
        depth[name] = max((depth[d] + 1 for d in dependencies[name]), default=0)
    rows: dict[int, int] = {}
    positions: dict[str, Position] = {}
    for name in dependencies:  # definition order within a column
        column = depth[name]
        positions[name] = (column, rows.get(column, 0))
        rows[column] = rows.get(column, 0) + 1
    return positions


def render_step_graph(
    dependencies: Mapping[str, Sequence[str]], steps: Sequence[StepResult]
) -> str:
    """`dependencies` as in `Saga.dependencies`; steps missing from it are drawn unlinked."""
    if not steps:
        return ""
    names = {s.name for s in steps}
    deps = {s.name: tuple(d for d in dependencies.get(s.name, ()) if d in names) for s in steps}
    positions = layout(deps)
    columns = max(c for c, _ in positions.values()) + 1
    rows_in = [sum(1 for c, _ in positions.values() if c == col) for col in range(columns)]
    height_rows = max(rows_in)

    def corner(name: str) -> tuple[float, float]:
        column, row = positions[name]
        offset = (height_rows - rows_in[column]) * (NODE_H + GAP_Y) / 2  # centre the column
        return PAD + column * (NODE_W + GAP_X), PAD + offset + row * (NODE_H + GAP_Y)

    width = 2 * PAD + columns * NODE_W + (columns - 1) * GAP_X
    height = 2 * PAD + height_rows * NODE_H + (height_rows - 1) * GAP_Y
    parts = [
        f'<svg class="step-graph" xmlns="http://www.w3.org/2000/svg" width="{width}" '
        f'height="{height:g}" viewBox="0 0 {width} {height:g}" role="img" '
        'aria-label="step graph">',
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" '
        'markerHeight="7" orient="auto-start-reverse"><path d="M 0 0 L 10 5 L 0 10 z" '
        'class="arrow"/></marker></defs>',
    ]
    for name, needs in deps.items():
        for dep in needs:
            parts.append(_edge(corner(dep), corner(name)))
    parts.extend(_node(step, *corner(step.name)) for step in steps)
    parts.append("</svg>")
    return "\n".join(parts)


def _edge(start: tuple[float, float], end: tuple[float, float]) -> str:
    x1, y1 = start[0] + NODE_W, start[1] + NODE_H / 2
    x2, y2 = end[0], end[1] + NODE_H / 2
    mid = (x1 + x2) / 2
    return (
        f'<path class="edge" d="M {x1:g} {y1:g} C {mid:g} {y1:g}, {mid:g} {y2:g}, '
        f'{x2 - 2:g} {y2:g}" marker-end="url(#arrow)"/>'
    )


def _node(step: StepResult, x: float, y: float) -> str:
    label = step.name if len(step.name) <= MAX_NAME else step.name[: MAX_NAME - 1] + "…"
    tries = f" · {step.attempts} tries" if step.attempts > 1 else ""
    tooltip = f"{step.name}: {step.status}" + (f" — {step.error}" if step.error else "")
    if step.compensation_error:
        tooltip += f" — compensation: {step.compensation_error}"
    css = "status-" + step.status.lower().replace("_", "-")
    return (
        f'<g class="node {css}" data-step="{escape(step.name)}" data-status="{step.status}" '
        f'transform="translate({x:g} {y:g})"><title>{escape(tooltip)}</title>'
        f'<rect width="{NODE_W}" height="{NODE_H}" rx="8"/>'
        f'<text class="name" x="12" y="22">{escape(label)}</text>'
        f'<text class="status" x="12" y="41">{step.status}{tries}</text></g>'
    )
