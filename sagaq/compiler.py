"""Saga definition -> Celery canvas. Pure: no I/O, no broker, no database.

The step DAG is first turned into a small shape tree (Leaf / Seq / Par), then into canvas:
Seq -> chain, Par -> group (Celery turns a group followed by more work into a chord).
Series-parallel DAGs compile exactly. A DAG that is not series-parallel (e.g. a->c, b->c, b->d)
is layered by depth: still correct, at the cost of some waiting that the DAG does not demand.
The same machinery compiles the compensation plan over the reversed dependency order.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from celery import Celery, chain, chord, group
from celery.canvas import Signature

from sagaq.definition.saga import Saga

STEP_FAILED_TASK = "sagaq.step_failed"
SAGA_DONE_TASK = "sagaq.saga_done"
COMPENSATION_DONE_TASK = "sagaq.compensation_done"


def step_task_name(saga: str, step: str) -> str:
    return f"{saga}.{step}"


def compensation_task_name(saga: str, step: str) -> str:
    return f"{saga}.{step}.compensate"


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


def shape_of(order: list[str], preds: Mapping[str, frozenset[str]]) -> Shape:
    """Shape tree of `order` (a topological order) where preds[x] is everything that must
    finish before x (transitively closed)."""
    if len(order) == 1:
        return Leaf(order[0])
    components = _components(order, preds)
    if len(components) > 1:
        return Par(tuple(shape_of(c, preds) for c in components))
    for cut in range(1, len(order)):
        head, tail = order[:cut], order[cut:]
        if all(preds[t].issuperset(head) for t in tail):
            return _seq([shape_of(head, preds), shape_of(tail, preds)])
    return _layered(order, preds)


def _seq(parts: Iterable[Shape]) -> Seq:
    flat: list[Shape] = []
    for part in parts:
        flat.extend(part.parts if isinstance(part, Seq) else [part])
    return Seq(tuple(flat))


def _components(order: list[str], preds: Mapping[str, frozenset[str]]) -> list[list[str]]:
    """Weakly connected components, each kept in topological order."""
    members = set(order)
    parent = {n: n for n in order}

    def root(n: str) -> str:
        while parent[n] != n:
            parent[n] = parent[parent[n]]
            n = parent[n]
        return n

    for node in order:
        for p in preds[node] & members:
            parent[root(p)] = root(node)
    groups: dict[str, list[str]] = {}
    for node in order:
        groups.setdefault(root(node), []).append(node)
    return list(groups.values())


def _layered(order: list[str], preds: Mapping[str, frozenset[str]]) -> Shape:
    members = set(order)
    depth: dict[str, int] = {}
    for node in order:
        depth[node] = 1 + max((depth[p] for p in preds[node] & members), default=-1)
    layers: dict[int, list[str]] = {}
    for node in order:
        layers.setdefault(depth[node], []).append(node)
    parts: list[Shape] = []
    for d in sorted(layers):
        leaves = tuple(Leaf(n) for n in layers[d])
        parts.append(leaves[0] if len(leaves) == 1 else Par(leaves))
    return Seq(tuple(parts))


def forward_shape(saga: Saga, steps: Iterable[str] | None = None) -> Shape:
    """The shape of the whole saga, or of `steps` only (work that remains after a recovery:
    dependencies outside `steps` are already done)."""
    order = saga.order()
    if steps is not None:
        chosen = set(steps)
        order = [s for s in order if s in chosen]
    return shape_of(order, saga.ancestors())


def compensation_shape(saga: Saga, steps: Iterable[str]) -> Shape | None:
    """Reverse dependency order over `steps`: a step is undone before everything it depends on."""
    chosen = set(steps)
    if not chosen:
        return None
    anc = saga.ancestors()
    order = [s for s in reversed(saga.order()) if s in chosen]
    # In reverse, x must wait for every chosen step that depends on x.
    preds = {x: frozenset(y for y in chosen if x in anc[y]) for x in order}
    return shape_of(order, preds)


def _canvas(shape: Shape, leaf: Callable[[str], Signature]) -> Signature:
    if isinstance(shape, Leaf):
        return leaf(shape.step)
    if isinstance(shape, Par):
        return group([_canvas(p, leaf) for p in shape.parts])
    return _sequence([_canvas(p, leaf) for p in shape.parts])


def _sequence(sigs: list[Signature]) -> Signature:
    """A chain in which every group followed by more work is an explicit chord, so no operator
    overload has to guess what was meant."""
    for i, sig in enumerate(sigs[:-1]):
        if isinstance(sig, group):
            joined = chord(sig, _sequence(sigs[i + 1 :]))
            return chain(*sigs[:i], joined) if i else joined
    return sigs[0] if len(sigs) == 1 else chain(*sigs)


def _with_finalizer(shape: Shape, leaf: Callable[[str], Signature], done: Signature) -> Signature:
    """Append the finalizer. When the canvas ends with a single task, that task finishes the
    saga itself (kwarg final=True, in the same transaction): one Celery hop fewer."""
    parts = list(shape.parts if isinstance(shape, Seq) else (shape,))
    if isinstance(parts[-1], Leaf):
        last = leaf(parts[-1].step)
        last.kwargs["final"] = True
        return _sequence([*(_canvas(p, leaf) for p in parts[:-1]), last])
    return _sequence([*(_canvas(p, leaf) for p in parts), done])


def compile_saga(
    saga: Saga, saga_id: str, app: Celery | None = None, steps: Iterable[str] | None = None
) -> Signature:
    """The canvas that runs every step of one saga (or just `steps`), then marks it COMPLETED."""

    def step_sig(name: str) -> Signature:
        step = saga.steps[name]
        sig = _sig(app, step_task_name(saga.name, name), {"saga_id": saga_id}, step.queue)
        errback = _sig(
            app, STEP_FAILED_TASK, {"saga_id": saga_id, "saga": saga.name, "step": name}, saga.queue
        )
        sig.on_error(errback)  # link_error: immutable, so Celery cannot fail to encode it
        return sig

    done = _sig(app, SAGA_DONE_TASK, {"saga_id": saga_id, "saga": saga.name}, saga.queue)
    remaining = list(steps) if steps is not None else None
    if remaining == []:
        return done
    return _with_finalizer(forward_shape(saga, remaining), step_sig, done)


def compile_compensation(
    saga: Saga, saga_id: str, steps: Iterable[str], app: Celery | None = None
) -> Signature:
    """The canvas that undoes `steps` in reverse dependency order, then marks the saga
    COMPENSATED. Steps without a compensation function are left out."""
    undoable = [s for s in steps if saga.steps[s].compensation is not None]
    done = _sig(app, COMPENSATION_DONE_TASK, {"saga_id": saga_id, "saga": saga.name}, saga.queue)
    shape = compensation_shape(saga, undoable)
    if shape is None:
        return done

    def comp_sig(name: str) -> Signature:
        return _sig(
            app,
            compensation_task_name(saga.name, name),
            {"saga_id": saga_id},
            saga.steps[name].queue,
        )

    return _with_finalizer(shape, comp_sig, done)


def _sig(app: Celery | None, task: str, kwargs: dict[str, Any], queue: str | None) -> Signature:
    options = {"queue": queue} if queue else {}
    return Signature(task, kwargs=kwargs, options=options, immutable=True, app=app)
