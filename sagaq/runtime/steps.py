"""The body of a step task: claim the step, run the user's function (or a sub-saga), record the
outcome. Returns an Outcome; tasks.py turns it into Celery's terms."""

from __future__ import annotations

import time
from typing import Any

from sagaq.definition.saga import Saga, Step, StepContext
from sagaq.errors import NonRetryableError, StepTimeoutError, UnserializableResultError
from sagaq.observability.events import EventType
from sagaq.runtime.base import Delivery, Fail, Halt, Outcome, Proceed, Retry, Runtime
from sagaq.runtime.invoke import backoff_delay, call_user, describe, to_json
from sagaq.runtime.launch import start_compensation
from sagaq.runtime.subsagas import POLL_SECONDS, ChildPending, run_child
from sagaq.status import SAGA_ACTIVE, StepStatus
from sagaq.store import Claim, StepClaim

# Attempts lost with their worker (no outcome) allowed beyond the step's retries.
LOST_ATTEMPTS = 3


def context(saga: Saga, step: Step, saga_id: str, claim: StepClaim) -> StepContext:
    return StepContext(
        saga_id=saga_id,
        saga=saga.name,
        step=step.name,
        input=saga.load_input(claim.input or {}),
        results=claim.results or {},
        attempt=claim.attempts,
        data=dict(claim.data or {}),
        headers=claim.headers or {},
    )


def shown(saga_id: str, step: str, attempt: int, outcome: str) -> dict[str, Any]:
    """What a task returns: Flower shows it as the task's result (the canvas ignores it)."""
    return {"saga_id": saga_id, "step": step, "attempt": attempt, "outcome": outcome}


def written(ctx: StepContext, before: dict[str, Any], label: str) -> dict[str, Any] | None:
    """What the step set in ctx.data (stored with its completion)."""
    changed = {k: v for k, v in ctx.data.items() if k not in before or before[k] != v}
    return to_json(changed, f"{label} (ctx.data)") if changed else None


def execute_step(rt: Runtime, saga: Saga, step: Step, saga_id: str, delivery: Delivery) -> Outcome:
    store = rt.store
    forward = step.name in saga.after_pivot()  # past the point of no return: retry, never undo
    budget = max(step.retry, saga.forward_retry) if forward else step.retry
    claim = store.claim_step(
        saga_id,
        step.name,
        deps=step.depends_on,
        wanted=sorted(saga.ancestors()[step.name]),
        token=delivery.token,
        lease=rt.lease,
        past_pivot=forward,
        is_pivot=step.pivot,
        worker=rt.hostname,
    )
    if claim.outcome is Claim.EXPIRED:
        start_compensation(rt, saga, saga_id, cause="deadline", reason="deadline exceeded")
        return Halt()
    if claim.outcome is Claim.DONE:
        # A redelivery of a step that completed: let the canvas go on.
        return Proceed(shown(saga_id, step.name, claim.attempts, "already done"))
    if claim.outcome is Claim.WAIT:
        return Retry(claim.retry_in)
    if claim.outcome is not Claim.RUN:
        return _refused(rt, saga_id, step)
    attempt = claim.attempts
    label = f"step {saga.name}.{step.name}"

    def emit(type: EventType, **details: Any) -> None:
        rt.emit(type, saga_id, saga.name, step=step.name, attempt=attempt, **details)

    def give_up(error: str, *, applied: bool, result: Any = None) -> bool:
        # A pivot that may have applied cannot be undone either: FAILED for an operator.
        past = forward or (applied and step.pivot)
        if not store.fail_step(
            saga_id,
            step.name,
            attempt,
            error,
            applied=applied,
            result=result,
            forward=past,
            task_id=delivery.task_id,
        ):
            return False
        emit(EventType.STEP_FAILED, error=error)
        return True

    if attempt - 1 > budget + LOST_ATTEMPTS:  # it keeps killing (or losing) its worker
        error = f"gave up after {attempt - 1} attempts whose workers were lost"
        give_up(error, applied=True)
        return Fail(NonRetryableError(error))
    emit(EventType.STEP_STARTED)
    started = time.perf_counter()
    ctx = context(saga, step, saga_id, claim)
    before = dict(ctx.data)
    assert rt.heartbeats is not None
    with rt.heartbeats.hold(saga_id, step.name, attempt, compensation=False):
        try:
            if step.when is not None and not step.when(ctx):
                store.complete_step(
                    saga_id,
                    step.name,
                    attempt,
                    None,
                    status=StepStatus.SKIPPED,
                    task_id=delivery.task_id,
                )
                return Proceed(shown(saga_id, step.name, attempt, "skipped"))
            if step.sub_saga is not None:
                result = run_child(rt, step, ctx, resumed=claim.resumed)
            else:
                result = to_json(call_user(step.fn, (ctx,), step.timeout), label)
            data = written(ctx, before, label)
        except ChildPending:
            if store.poll_step(saga_id, step.name, attempt, POLL_SECONDS, delivery.next_token):
                return Retry(POLL_SECONDS)
            return Halt()
        except (StepTimeoutError, UnserializableResultError) as exc:
            # It may have applied: compensated all the same (with its result, if storable).
            kept = _storable(exc.result) if isinstance(exc, StepTimeoutError) else None
            if give_up(describe(exc), applied=True, result=kept):
                return Fail(exc)
            return Halt()
        except Exception as exc:
            error = describe(exc)
            if not isinstance(exc, NonRetryableError) and attempt - 1 < budget:
                delay = backoff_delay(step.backoff, attempt - 1)
                if store.retry_step(
                    saga_id, step.name, attempt, error, delay, task_id=delivery.task_id
                ):
                    emit(EventType.STEP_RETRYING, error=error)
                    return Retry(delay, exc)
                return Halt()
            if give_up(error, applied=False):
                return Fail(exc)  # Celery now calls the errback, which starts compensation
            return Halt()
    duration = round((time.perf_counter() - started) * 1000, 3)
    done, finished = store.complete_step(
        saga_id, step.name, attempt, result, data, duration_ms=duration, task_id=delivery.task_id
    )
    if not done:
        return Halt()  # another attempt took the step over: it carries the canvas on
    emit(EventType.STEP_COMPLETED, duration_ms=duration)
    if finished:
        rt.emit(EventType.SAGA_COMPLETED, saga_id, saga.name)
    return Proceed(shown(saga_id, step.name, attempt, "completed"))


def _refused(rt: Runtime, saga_id: str, step: Step) -> Outcome:
    """A redelivery of a step that already ended while its saga is still active: the first
    delivery's worker may have died before Celery sent what follows, so do it again instead of
    leaving the saga to the sweeper. Failed for good: fail again (the errback is idempotent).
    Skipped by its `when`: let the canvas go on, as for a completed step."""
    record = rt.store.get(saga_id)
    if record is not None and record.status in SAGA_ACTIVE:
        row = record.step(step.name)
        if row.status == StepStatus.FAILED:
            return Fail(NonRetryableError(row.error or f"step {step.name} failed"))
        if row.status == StepStatus.SKIPPED:
            return Proceed(shown(saga_id, step.name, row.attempts, "skipped"))
    return Halt()


def _storable(value: Any) -> Any:
    try:
        return to_json(value, "")
    except UnserializableResultError:
        return None
