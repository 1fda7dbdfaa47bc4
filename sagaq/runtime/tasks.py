"""The Celery tasks sagaq registers: one per step, one per compensation, the errback and the
two finalizers. The store decides every transition; Celery only carries the work."""

from __future__ import annotations

import logging
import time
from typing import Any

from celery import Task

from sagaq.compiler import (
    COMPENSATION_DONE_TASK,
    SAGA_DONE_TASK,
    STEP_FAILED_TASK,
    compensation_task_name,
    step_task_name,
)
from sagaq.definition.saga import FailurePolicy, Saga, Step, StepContext
from sagaq.errors import NonRetryableError
from sagaq.observability.events import EventType
from sagaq.runtime.base import Runtime
from sagaq.runtime.invoke import backoff_delay, call_user, describe, to_json
from sagaq.runtime.launch import start_compensation
from sagaq.runtime.subsagas import POLL_SECONDS, ChildPending, run_child, undo_child
from sagaq.status import StepStatus
from sagaq.store import Claim, SagaRecord, StepClaim

log = logging.getLogger("sagaq")

# How long a step may stay RUNNING when it has no timeout of its own to go by.
DEFAULT_STEP_LEASE = 600.0
# How long a wait-all failure waits for its siblings before compensating anyway.
WAIT_ALL_GRACE = 60.0


def step_lease(step: Step) -> float:
    """After this long RUNNING (all attempts), a step is presumed lost with its worker."""
    return (step.timeout or DEFAULT_STEP_LEASE) * (step.retry + 1) + 60.0


def siblings_still_working(saga: Saga, record: SagaRecord) -> bool:
    """wait-all: is a step that does not depend on the failed one still running or about to?"""
    failed = {s.name for s in record.steps if s.status == StepStatus.FAILED}
    anc = saga.ancestors()
    done = {s.name for s in record.steps if s.status == StepStatus.COMPLETED}
    for s in record.steps:
        if s.name in failed or anc[s.name] & failed:
            continue
        if s.status == StepStatus.RUNNING:
            return True
        if s.status == StepStatus.PENDING and set(saga.steps[s.name].depends_on) <= done:
            return True
    return False


def install_control_tasks(rt: Runtime) -> None:
    """The errback, the finalizers and the sweeper, shared by every saga."""
    store = rt.store

    @rt.app.task(
        name=STEP_FAILED_TASK, bind=True, ignore_result=True, max_retries=None, shared=False
    )
    def step_failed(task: Task[Any, None], *, saga_id: str, saga: str, step: str) -> None:
        # Keyword-only, so Celery sends this errback as a message instead of calling it inline.
        definition = rt.sagas[saga]
        record = store.get(saga_id)
        if record is None or record.step(step).status not in (
            StepStatus.FAILED,
            StepStatus.RUNNING,
        ):
            # Not a step failure: Celery failed around a step that completed or never ran
            # (a chord whose counter was lost, a publish that failed...). Compensating would
            # undo a healthy saga; the sweeper resumes it instead.
            log.info("saga %s: errback for step %s ignored (step is not failed)", saga_id, step)
            return
        if step in definition.after_pivot():
            # Past the point of no return the step task itself failed the saga (fail_forward);
            # a lost worker there is the sweeper's business. Compensating would be wrong, and
            # this errback may arrive after an operator already retried the saga.
            return
        wait_all = definition.failure_policy is FailurePolicy.WAIT_ALL
        if wait_all and record.status.value in ("PENDING", "RUNNING"):
            failed_at = max((s.finished_at or 0.0 for s in record.steps), default=0.0)
            waiting = time.time() - failed_at < WAIT_ALL_GRACE
            if waiting and siblings_still_working(definition, record):
                raise task.retry(countdown=0.1)
        start_compensation(rt, definition, saga_id, failed_step=step)

    @rt.app.task(name=SAGA_DONE_TASK, ignore_result=True, shared=False)
    def saga_done(*, saga_id: str, saga: str) -> None:
        if store.finish_saga(saga_id):
            rt.emit(EventType.SAGA_COMPLETED, saga_id, saga)

    @rt.app.task(name=COMPENSATION_DONE_TASK, ignore_result=True, shared=False)
    def compensation_done(*, saga_id: str, saga: str) -> None:
        if store.finish_compensation(saga_id):
            rt.emit(EventType.SAGA_COMPENSATED, saga_id, saga)


def install_saga_tasks(rt: Runtime, saga: Saga) -> None:
    for step in saga.steps.values():
        _install_step_task(rt, saga, step)
        if step.compensation is not None:
            _install_compensation_task(rt, saga, step)


def _context(saga: Saga, step: Step, saga_id: str, claim: StepClaim) -> StepContext:
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


def _written(ctx: StepContext, before: dict[str, Any], label: str) -> dict[str, Any] | None:
    """What the step set in ctx.data (stored with its completion)."""
    changed = {k: v for k, v in ctx.data.items() if k not in before or before[k] != v}
    return to_json(changed, f"{label} (ctx.data)") if changed else None


def _install_step_task(rt: Runtime, saga: Saga, step: Step) -> None:
    label = f"step {saga.name}.{step.name}"
    store = rt.store
    ancestors = sorted(saga.ancestors()[step.name])
    forward = step.name in saga.after_pivot()  # past the point of no return: retry, never undo
    budget = max(step.retry, saga.forward_retry) if forward else step.retry

    @rt.app.task(
        name=step_task_name(saga.name, step.name),
        bind=True,
        max_retries=None,
        shared=False,
        ignore_result=rt.skip_result_backend,
    )
    def run_step(task: Task[Any, None], *, saga_id: str, final: bool = False) -> None:
        # A first-attempt message seen again, or any redelivered one, means an attempt may have
        # died midway; a plain retry message follows an attempt that failed cleanly.
        request = task.request
        unknown = request.retries == 0 or bool((request.delivery_info or {}).get("redelivered"))
        claim = store.claim_step(
            saga_id, step.name, step.depends_on, ancestors, outcome_unknown=unknown
        )
        if claim.outcome is Claim.EXPIRED:
            start_compensation(rt, saga, saga_id, reason="deadline exceeded")
            return
        if claim.outcome is not Claim.RUN:
            return  # already done (redelivery) or the saga moved on

        def emit(type: EventType, **details: Any) -> None:
            rt.emit(type, saga_id, saga.name, step=step.name, attempt=claim.attempts, **details)

        emit(EventType.STEP_STARTED)
        started = time.perf_counter()
        ctx = _context(saga, step, saga_id, claim)
        before = dict(ctx.data)
        try:
            if step.when is not None and not step.when(ctx):
                _, finished = store.complete_step(
                    saga_id, step.name, None, status=StepStatus.SKIPPED, finish=final
                )
                if finished:
                    rt.emit(EventType.SAGA_COMPLETED, saga_id, saga.name)
                return
            if step.sub_saga is not None:
                result = run_child(rt, step, ctx)
            else:
                result = to_json(call_user(step.fn, (ctx,), step.timeout), label)
            data = _written(ctx, before, label)
        except ChildPending as pending:
            raise task.retry(countdown=POLL_SECONDS, max_retries=None) from pending
        except Exception as exc:
            # attempts counts redeliveries too: a step that keeps killing its worker stops.
            retries = claim.attempts - 1
            error = describe(exc)
            if not isinstance(exc, NonRetryableError) and retries < budget:
                emit(EventType.STEP_RETRYING, error=error)
                raise task.retry(exc=exc, countdown=backoff_delay(step.backoff, retries)) from exc
            store.fail_step(saga_id, step.name, error)
            if forward:
                store.fail_forward(saga_id, step.name, error)  # so the errback undoes nothing
            emit(EventType.STEP_FAILED, error=error)
            raise  # Celery now calls our errback, which starts compensation
        completed, finished = store.complete_step(saga_id, step.name, result, data, finish=final)
        if not completed:
            _undo_late_step(rt, saga, step, ctx, result)
            return
        emit(EventType.STEP_COMPLETED, duration_ms=_ms_since(started))
        if finished:
            rt.emit(EventType.SAGA_COMPLETED, saga_id, saga.name)


def _ms_since(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)


def _undo_late_step(rt: Runtime, saga: Saga, step: Step, ctx: StepContext, result: Any) -> None:
    """The saga gave up on this step while it ran, and it succeeded after all: undo it here."""
    if step.compensation is None or not rt.store.compensate_late_step(
        ctx.saga_id, step.name, result
    ):
        return

    def emit(type: EventType, **details: Any) -> None:
        rt.emit(type, ctx.saga_id, saga.name, step=step.name, **details)

    emit(EventType.COMPENSATION_STARTED)
    for attempt in range(saga.compensation_retry + 1):
        try:
            call_user(step.compensation, (ctx, result), step.timeout)
        except Exception as exc:
            if attempt == saga.compensation_retry:
                rt.store.fail_compensation(ctx.saga_id, step.name, describe(exc))
                emit(EventType.COMPENSATION_FAILED, error=describe(exc))
                return
            emit(EventType.COMPENSATION_RETRYING, error=describe(exc))
            time.sleep(backoff_delay(saga.compensation_backoff, attempt))
        else:
            rt.store.complete_compensation(ctx.saga_id, step.name)
            emit(EventType.COMPENSATION_COMPLETED)
            return


def _install_compensation_task(rt: Runtime, saga: Saga, step: Step) -> None:
    assert step.compensation is not None
    compensate = step.compensation
    store = rt.store
    lease = step_lease(step)
    ancestors = sorted(saga.ancestors()[step.name])

    @rt.app.task(
        name=compensation_task_name(saga.name, step.name),
        bind=True,
        max_retries=None,
        shared=False,
        ignore_result=rt.skip_result_backend,
    )
    def run_compensation(task: Task[Any, None], *, saga_id: str, final: bool = False) -> None:
        claim = store.claim_compensation(saga_id, step.name, step.depends_on, ancestors)
        if claim.outcome is Claim.WAIT:
            # A sibling still running when compensation began: undo it once it finishes.
            if time.time() - (claim.started_at or 0) < lease:
                raise task.retry(countdown=min(0.05 * 2 ** min(task.request.retries, 6), 2.0))
            store.abandon_step(saga_id, step.name, outcome_unknown=True)
            raise task.retry(countdown=0)  # now COMPLETED (outcome unknown): undo it
        if claim.outcome is not Claim.RUN:
            return

        def emit(type: EventType, **details: Any) -> None:
            rt.emit(type, saga_id, saga.name, step=step.name, attempt=claim.attempts, **details)

        emit(EventType.COMPENSATION_STARTED)
        started = time.perf_counter()
        try:
            if step.sub_saga is not None:
                undo_child(rt, claim.result)
            else:
                ctx = _context(saga, step, saga_id, claim)
                call_user(compensate, (ctx, claim.result), step.timeout)
        except ChildPending as pending:
            raise task.retry(countdown=POLL_SECONDS, max_retries=None) from pending
        except Exception as exc:
            retries = claim.attempts - 1
            error = describe(exc)
            if retries < saga.compensation_retry:
                emit(EventType.COMPENSATION_RETRYING, error=error)
                delay = backoff_delay(saga.compensation_backoff, retries)
                raise task.retry(exc=exc, countdown=delay) from exc
            store.fail_compensation(saga_id, step.name, error)
            emit(EventType.COMPENSATION_FAILED, error=error)
            rt.emit(EventType.SAGA_FAILED, saga_id, saga.name, step=step.name, error=error)
            raise  # stops the compensation chain: the saga is FAILED and needs an operator
        _, finished = store.complete_compensation(saga_id, step.name, finish=final)
        emit(EventType.COMPENSATION_COMPLETED, duration_ms=_ms_since(started))
        if finished:
            rt.emit(EventType.SAGA_COMPENSATED, saga_id, saga.name)
