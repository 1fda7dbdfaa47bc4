"""Saga definition -> Celery canvas. Pure: no I/O, no broker, no database.

The shapes come from the saga's frozen plan (sagaq.plan): Leaf -> one task, Seq -> chain,
Par -> group, and a group followed by more work -> an explicit chord whose body is the next
task only, the rest of the sequence following in the same flat chain:

    a, Par(b, c), d, e   ->   chain(a, chord(group(b, c), d), e)

Never chord(group(b, c), chain(d, e)): every header task carries a copy of its chord's body,
so a body holding the rest of the saga grows the message geometrically with each join (a
chain of 10 diamonds froze into a 1 GB message). Celery 5.7 unrolls that form itself when it
applies a chord, but not in `freeze()`; the flat form is what it would run anyway. For the
same reason a group followed by another group (the layers of a DAG that is not
series-parallel) is not chord(g1, chord(g2, ...)) but chord(g1, barrier), chord(g2, ...), the
barrier being Celery's built-in no-op `celery.accumulate` (one extra hop per such layer; a
ladder of 9 layers nested was a 187 MB message).
Everything here is iterative, so a 1,000-step line compiles without RecursionError.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from celery import Celery, chain, chord, group
from celery.canvas import Signature

from sagaq.definition.saga import SAGAQ_TASK_PREFIX, Saga
from sagaq.definition.shape import Leaf, Par, Seq, Shape

__all__ = [
    "COMPENSATION_DONE_TASK",
    "SAGA_DONE_TASK",
    "STEP_FAILED_TASK",
    "BARRIER_TASK",
    "Leaf",
    "Par",
    "Seq",
    "Shape",
    "compensation_shape",
    "compensation_task_name",
    "compile_compensation",
    "compile_saga",
    "forward_shape",
    "step_task_name",
]

STEP_FAILED_TASK = f"{SAGAQ_TASK_PREFIX}step_failed"
SAGA_DONE_TASK = f"{SAGAQ_TASK_PREFIX}saga_done"
COMPENSATION_DONE_TASK = f"{SAGAQ_TASK_PREFIX}compensation_done"
# Registered in every Celery app (celery.app.builtins); returns its arguments, does nothing.
BARRIER_TASK = "celery.accumulate"


def step_task_name(saga: str, step: str) -> str:
    return f"{saga}.{step}"


def compensation_task_name(saga: str, step: str) -> str:
    return f"{saga}.{step}.compensate"


def forward_shape(saga: Saga, steps: Iterable[str] | None = None) -> Shape:
    """The shape of the whole saga, or of `steps` only (see SagaPlan.forward_shape)."""
    return saga.plan.forward_shape(steps)


def compensation_shape(saga: Saga, steps: Iterable[str]) -> Shape | None:
    """Reverse dependency order over `steps` (see SagaPlan.compensation_shape)."""
    return saga.plan.compensation_shape(steps)


def _canvas(shape: Shape, leaf: Callable[[str], Signature], barrier: _Barrier) -> Signature:
    """Build bottom-up with an explicit stack (a deeply nested shape must not recurse)."""
    built: dict[int, Signature] = {}
    stack: list[tuple[Shape, bool]] = [(shape, False)]
    while stack:
        node, children_built = stack.pop()
        if isinstance(node, Leaf):
            built[id(node)] = leaf(node.step)
        elif not children_built:
            stack.append((node, True))
            stack.extend((part, False) for part in node.parts)
        else:
            parts = [built.pop(id(part)) for part in node.parts]
            if isinstance(node, Par):
                built[id(node)] = group(parts, app=barrier.app)
            else:
                built[id(node)] = _sequence(parts, barrier)
    return built[id(shape)]


class _Barrier:
    """Makes the no-op chord bodies that separate two groups in a row."""

    def __init__(self, app: Celery | None, queue: str) -> None:
        self.app = app
        self.queue = queue

    def __call__(self) -> Signature:
        return _sig(self.app, BARRIER_TASK, {}, self.queue)


def _sequence(sigs: list[Signature], barrier: _Barrier) -> Signature:
    """One flat chain in which every group followed by more work is an explicit chord over the
    next task only (or a barrier, when a group follows), so no operator overload has to guess
    what was meant and no chord body nests the rest of the saga."""
    app = barrier.app
    reversed_tail: list[Signature] = []  # the chain from the end, reversed
    for sig in reversed(sigs):
        if isinstance(sig, group) and reversed_tail:
            joins_a_group = isinstance(reversed_tail[-1], group | chord)
            body = barrier() if joins_a_group else reversed_tail.pop()
            sig = chord(sig, body, app=app)
        reversed_tail.append(sig)
    if len(reversed_tail) == 1:
        return reversed_tail[0]
    # With a keyword argument chain() keeps the tasks as given instead of folding them with |.
    return chain(*reversed(reversed_tail), app=app)


def _with_finalizer(
    shape: Shape, leaf: Callable[[str], Signature], done: Signature, barrier: _Barrier
) -> Signature:
    """Append the finalizer. When the canvas ends with a single task, that task finishes the
    saga itself (kwarg final=True, in the same transaction): one Celery hop fewer."""
    parts = list(shape.parts if isinstance(shape, Seq) else (shape,))
    canvases = [_canvas(p, leaf, barrier) for p in parts]
    if isinstance(parts[-1], Leaf):
        canvases[-1].kwargs["final"] = True
        return _sequence(canvases, barrier)
    return _sequence([*canvases, done], barrier)


def compile_saga(
    saga: Saga, saga_id: str, app: Celery | None = None, steps: Iterable[str] | None = None
) -> Signature:
    """The canvas that runs every step of one saga (or just `steps`), then marks it COMPLETED."""
    plan = saga.plan

    def step_sig(name: str) -> Signature:
        queue = saga.steps[name].queue or saga.queue  # as registered (the app's default)
        sig = _sig(app, step_task_name(saga.name, name), {"saga_id": saga_id}, queue)
        errback = _sig(
            app, STEP_FAILED_TASK, {"saga_id": saga_id, "saga": saga.name, "step": name}, saga.queue
        )
        sig.on_error(errback)  # link_error: immutable, so Celery cannot fail to encode it
        return sig

    done = _sig(app, SAGA_DONE_TASK, {"saga_id": saga_id, "saga": saga.name}, saga.queue)
    remaining = list(steps) if steps is not None else None
    if remaining == []:
        return done
    barrier = _Barrier(app, saga.queue)
    return _with_finalizer(plan.forward_shape(remaining), step_sig, done, barrier)


def compile_compensation(
    saga: Saga, saga_id: str, steps: Iterable[str], app: Celery | None = None
) -> Signature:
    """The canvas that undoes exactly `steps` in reverse dependency order (a step only after
    every given step that depends on it), then marks the saga COMPENSATED. Every given step
    gets its compensation task, even one without a compensation function or one still
    running: the runtime decides what such a task does, and its ancestors wait for it."""
    done = _sig(app, COMPENSATION_DONE_TASK, {"saga_id": saga_id, "saga": saga.name}, saga.queue)
    shape = saga.plan.compensation_shape(steps)
    if shape is None:
        return done

    def comp_sig(name: str) -> Signature:
        return _sig(
            app,
            compensation_task_name(saga.name, name),
            {"saga_id": saga_id},
            saga.steps[name].queue or saga.queue,
        )

    return _with_finalizer(shape, comp_sig, done, _Barrier(app, saga.queue))


def _sig(app: Celery | None, task: str, kwargs: dict[str, Any], queue: str | None) -> Signature:
    options = {"queue": queue} if queue else {}
    return Signature(task, kwargs=kwargs, options=options, immutable=True, app=app)
