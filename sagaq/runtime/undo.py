"""The body of a compensation task: claim the undo (the store checks reverse order and waits
for a step still running), run the user's compensation (or compensate a sub-saga), record it."""

from __future__ import annotations

import time
from typing import Any

from sagaq.definition.saga import Saga, Step
from sagaq.observability.events import EventType
from sagaq.runtime.base import Delivery, Fail, Halt, Outcome, Proceed, Retry, Runtime
from sagaq.runtime.invoke import backoff_delay, call_user, describe
from sagaq.runtime.steps import context, shown
from sagaq.runtime.subsagas import POLL_SECONDS, ChildPending, undo_children
from sagaq.store import Claim

# How long a compensation waits between looks at a step it must wait for (it doubles up to).
WAIT_FIRST, WAIT_MAX = 0.05, 2.0


def execute_compensation(
    rt: Runtime, saga: Saga, step: Step, saga_id: str, delivery: Delivery
) -> Outcome:
    store = rt.store
    claim = store.claim_compensation(
        saga_id,
        step.name,
        dependents=sorted(_dependents(saga, step.name)),
        wanted=sorted(saga.ancestors()[step.name]),
        lease=rt.lease,
        stop_running=step.sub_saga is not None,
        token=delivery.token,
        worker=rt.hostname,
    )
    if claim.outcome is Claim.WAIT:
        pause = min(WAIT_FIRST * 2 ** min(delivery.retries, 6), WAIT_MAX, claim.retry_in)
        return Retry(pause)
    if claim.outcome is Claim.DONE:
        return Proceed(shown(saga_id, step.name, claim.attempts, "nothing to undo"))
    if claim.outcome is not Claim.RUN:
        return Halt()  # the saga FAILED (an operator retries it) or is gone
    attempt = claim.attempts

    def emit(type: EventType, **details: Any) -> None:
        rt.emit(type, saga_id, saga.name, step=step.name, attempt=attempt, **details)

    emit(EventType.COMPENSATION_STARTED)
    started = time.perf_counter()
    assert rt.heartbeats is not None
    with rt.heartbeats.hold(saga_id, step.name, attempt, compensation=True):
        try:
            if step.sub_saga is not None:
                undo_children(rt, saga_id, step.name)
            else:
                assert step.compensation is not None, "only undoable steps are claimed"
                ctx = context(saga, step, saga_id, claim)
                call_user(step.compensation, (ctx, claim.result), step.timeout)
        except ChildPending:
            if store.retry_compensation(
                saga_id, step.name, attempt, None, POLL_SECONDS, delivery.next_token
            ):
                return Retry(POLL_SECONDS)
            return Halt()
        except Exception as exc:
            error = describe(exc)
            if attempt - 1 < saga.compensation_retry:
                delay = backoff_delay(saga.compensation_backoff, attempt - 1)
                if store.retry_compensation(
                    saga_id,
                    step.name,
                    attempt,
                    error,
                    delay,
                    delivery.next_token,
                    task_id=delivery.task_id,
                ):
                    emit(EventType.COMPENSATION_RETRYING, error=error)
                    return Retry(delay, exc)
                return Halt()
            if store.fail_compensation(saga_id, step.name, attempt, error):
                emit(EventType.COMPENSATION_FAILED, error=error)
                rt.emit(EventType.SAGA_FAILED, saga_id, saga.name, step=step.name, error=error)
            return Fail(exc)  # stops this branch: the saga is FAILED and needs an operator
    duration = round((time.perf_counter() - started) * 1000, 3)
    done, finished = store.complete_compensation(saga_id, step.name, attempt, duration_ms=duration)
    if not done:
        return Halt()
    emit(EventType.COMPENSATION_COMPLETED, duration_ms=duration)
    if finished:
        rt.emit(EventType.SAGA_COMPENSATED, saga_id, saga.name)
    return Proceed(shown(saga_id, step.name, attempt, "compensated"))


def _dependents(saga: Saga, step: str) -> set[str]:
    """Every step that depends on `step`, directly or not: undone before it."""
    return {name for name, above in saga.ancestors().items() if step in above}
