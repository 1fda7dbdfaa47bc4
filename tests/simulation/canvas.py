"""Celery canvas, interpreted the way Celery runs it (as measured), without a worker:

- chain: the next task is sent after the previous one succeeded;
- chord: the body is sent once the header's parts succeeded (a duplicated part counts twice,
  as it does in Celery's Redis chord counter, so the body may start early);
- link_error: a failed task's errbacks are sent, and a chord whose header part failed (anywhere
  in that part's chain) sends its body's errbacks too;
- a retry keeps the message's place in the canvas.

A Message carries its continuation (`then`): what to send when it succeeds."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from celery.canvas import Signature, _chain, _chord, group


@dataclass
class ChordState:
    size: int
    body: Signature | None  # None: a bare group that joins into `after`
    after: Continuation
    done: int = 0
    fired: bool = False


@dataclass(frozen=True)
class Then:
    """Send `rest` (a chain's remaining tasks) after this one succeeded."""

    rest: tuple[Signature, ...]
    after: Continuation


@dataclass(frozen=True)
class Join:
    """This task is one part of a chord header."""

    chord: ChordState


Continuation = Then | Join | None


@dataclass
class Message:
    task_id: str
    retries: int
    sig: Signature  # one task
    then: Continuation
    eta: float
    seq: int = 0
    label: str = field(default="", compare=False)

    @property
    def task(self) -> str:
        return str(self.sig["task"])

    @property
    def kwargs(self) -> dict[str, Any]:
        return dict(self.sig["kwargs"])


def leaves(sig: Signature, after: Continuation) -> list[tuple[Signature, Continuation]]:
    """The single tasks to send now for `sig`, each with its continuation."""
    if isinstance(sig, _chord):
        header = list(sig.tasks)
        state = ChordState(len(header), sig.body, after)
        return [pair for part in header for pair in leaves(part, Join(state))]
    if isinstance(sig, group):
        parts = list(sig.tasks)
        if after is None:
            return [pair for part in parts for pair in leaves(part, None)]
        state = ChordState(len(parts), None, after)
        return [pair for part in parts for pair in leaves(part, Join(state))]
    if isinstance(sig, _chain):
        tasks = list(sig.tasks)
        rest = tuple(tasks[1:])
        return leaves(tasks[0], Then(rest, after) if rest else after)
    return [(sig, after)]


def on_success(then: Continuation) -> list[tuple[Signature, Continuation]]:
    """What Celery sends after a task with continuation `then` succeeded."""
    if then is None:
        return []
    if isinstance(then, Then):
        head, rest = then.rest[0], then.rest[1:]
        return leaves(head, Then(rest, then.after) if rest else then.after)
    state = then.chord
    state.done += 1
    if state.done < state.size or state.fired:
        return []
    state.fired = True
    if state.body is None:
        return on_success(state.after)
    return leaves(state.body, state.after)


def errbacks_of(sig: Signature) -> list[Signature]:
    return [Signature(e) for e in sig.options.get("link_error") or []]


def first_task(sig: Signature) -> Signature:
    while isinstance(sig, (_chain, _chord, group)):
        sig = sig.tasks[0]
    return sig


def on_failure(sig: Signature, then: Continuation) -> list[Signature]:
    """The errbacks Celery sends when the task `sig` (continuation `then`) failed: its own,
    and the body's errbacks of every chord it was (through chains) a header part of."""
    sent = errbacks_of(sig)
    while then is not None:
        if isinstance(then, Then):
            then = then.after
            continue
        state = then.chord
        if state.body is not None:
            sent += errbacks_of(first_task(state.body))
        then = state.after
    return sent
