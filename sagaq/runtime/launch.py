"""Every publish sagaq makes goes through here: starting a saga, starting its compensation,
and an operator's cancel and retry. The client, the errback, the sweeper and sub-saga steps
all call these functions; none of them compiles or publishes canvas itself."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from typing import Any

from sagaq.compiler import compile_compensation, compile_saga
from sagaq.definition.saga import Saga
from sagaq.errors import BrokerUnavailableError, InvalidStateError
from sagaq.observability.events import EventType
from sagaq.runtime.base import Runtime
from sagaq.status import SAGA_ACTIVE, SagaStatus
from sagaq.store.compensation import Begun

log = logging.getLogger("sagaq")


def start_saga(
    rt: Runtime,
    saga: Saga,
    data: dict[str, Any],
    *,
    idempotency_key: str | None = None,
    deadline: float | None = None,
    headers: dict[str, str] | None = None,
    parent_id: str | None = None,
    parent_step: str | None = None,
) -> tuple[str, bool]:
    """Returns (saga id, created). Commit first (the saga is RUNNING from then on), publish
    second: a publish lost after the commit is found by the sweeper. A publish that fails
    removes the saga again."""
    saga_id = str(uuid.uuid4())
    deadline = deadline if deadline is not None else saga.deadline
    headers = {"correlation_id": idempotency_key or saga_id, **(headers or {})}
    now = rt.store.clock()
    saga_id, created = rt.store.create_saga(
        saga_id,
        saga.name,
        data,
        saga.order(),
        idempotency_key,
        deadline_at=now + deadline if deadline is not None else None,
        headers=headers,
        parent_id=parent_id,
        undoable=sorted(undoable_steps(saga)),
        parent_step=parent_step,
    )
    if created:
        try:
            rt.send(compile_saga(saga, saga_id, rt.app))
        except Exception as exc:
            # Whatever stopped the publish (broker down, a canvas Celery cannot encode...),
            # no half-started saga may stay behind for the sweeper to run later.
            rt.store.delete_saga(saga_id)
            if isinstance(exc, BrokerUnavailableError):
                raise BrokerUnavailableError(f"saga {saga.name!r} was not started: {exc}") from exc
            raise
        rt.emit(EventType.SAGA_STARTED, saga_id, saga.name)
    return saga_id, created


def undoable_steps(saga: Saga) -> frozenset[str]:
    """Steps with a compensation to run: not the pivot, nor anything after it."""
    past = saga.after_pivot()
    return frozenset(
        s.name
        for s in saga.steps.values()
        if s.compensation is not None and not s.pivot and s.name not in past
    )


def pivot_of(saga: Saga) -> str | None:
    return next((s.name for s in saga.steps.values() if s.pivot), None)


def start_compensation(
    rt: Runtime,
    saga: Saga,
    saga_id: str,
    *,
    cause: str,
    failed_step: str | None = None,
    reason: str | None = None,
    allowed: Sequence[SagaStatus] = tuple(SAGA_ACTIVE),
    actor: str | None = None,
    only_if_failed: bool = False,
) -> Begun:
    """Move the saga to COMPENSATING (only one caller wins) and publish its undo canvas:
    the steps that may have applied, and those still running (their ancestors wait for them).
    `allowed=(COMPLETED,)` undoes a finished saga (a sub-saga whose parent compensates);
    `only_if_failed`: only if `failed_step` is FAILED."""
    begun = rt.store.begin_compensation(
        saga_id,
        cause=cause,
        failed_step=failed_step,
        reason=reason,
        allowed=allowed,
        pivot=pivot_of(saga),
        actor=actor,
        only_if_failed=only_if_failed,
    )
    if begun.steps is None:
        return begun
    log.info("saga %s: compensating %s (%s)", saga_id, begun.steps, reason or failed_step)
    if begun.finished:
        rt.emit(EventType.SAGA_COMPENSATED, saga_id, saga.name)
    elif begun.steps:
        rt.send(compile_compensation(saga, saga_id, begun.steps, rt.app))
    return begun


def cancel(rt: Runtime, saga: Saga, saga_id: str, reason: str, *, actor: str | None = None) -> None:
    """Stop a saga and compensate what it did. Refused (InvalidStateError) when it is finished,
    already compensating, or past its pivot step (which has started: nothing is undone then)."""
    begun = start_compensation(rt, saga, saga_id, cause="cancel", reason=reason, actor=actor)
    if begun.steps is not None:
        return
    if begun.status in SAGA_ACTIVE:
        raise InvalidStateError(
            f"saga {saga_id} is past its pivot step {pivot_of(saga)!r}: it can no longer be "
            "cancelled (what comes after the pivot is retried forward, never undone)"
        )
    raise InvalidStateError(f"saga {saga_id} is {begun.status}: there is nothing to cancel")


def retry(
    rt: Runtime,
    saga: Saga,
    saga_id: str,
    *,
    actor: str | None = None,
    reason: str | None = None,
) -> None:
    """Resume a FAILED saga: a compensation that gave up is tried again; a saga that failed
    after its pivot runs its remaining steps again (its deadline no longer applies there)."""
    undo = rt.store.resume_compensation(saga_id, actor=actor, reason=reason)
    if undo is not None:
        if undo:
            rt.send(compile_compensation(saga, saga_id, undo, rt.app))
        else:
            rt.store.finish_compensation(saga_id)
        return
    remaining = rt.store.resume_forward(saga_id, actor=actor, reason=reason)
    if remaining is not None:
        rt.send(compile_saga(saga, saga_id, rt.app, steps=remaining))
        return
    record = rt.store.get(saga_id)
    status = record.status if record else "unknown"
    raise InvalidStateError(f"saga {saga_id} is {status}: only a FAILED saga can be retried")
