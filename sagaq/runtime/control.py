"""The errback's body: a step failed for good, so compensation starts - unless the store says
otherwise (Celery also calls errbacks around steps that did not fail: chord bodies that never
ran, publish errors), the step is past the pivot (retried forward, never undone), or the
saga waits for its siblings (wait-all)."""

from __future__ import annotations

from sagaq.compiler import Leaf, Par, Seq, Shape, forward_shape
from sagaq.definition.saga import FailurePolicy, Saga
from sagaq.runtime.base import Halt, Outcome, Retry, Runtime
from sagaq.runtime.launch import start_compensation
from sagaq.status import SAGA_ACTIVE, StepStatus
from sagaq.store import SagaRecord

# How long a wait-all failure waits for its siblings before compensating anyway.
WAIT_ALL_GRACE = 60.0


def on_step_failed(rt: Runtime, saga: Saga, saga_id: str, step: str) -> Outcome:
    if step not in saga.after_pivot() and saga.failure_policy is not FailurePolicy.WAIT_ALL:
        # The common case in one transaction: the step failed for good, the saga is active.
        begun = start_compensation(
            rt, saga, saga_id, cause="failure", failed_step=step, only_if_failed=True
        )
        if begun.steps is not None:
            return Halt()
    # Anything else (a lost attempt, wait-all, a duplicate errback...) reads the saga first.
    record = rt.store.get(saga_id)
    if record is None or record.status not in SAGA_ACTIVE:
        return Halt()
    row = record.step(step)
    now = rt.store.clock()
    if row.status == StepStatus.RUNNING:
        # The task failed without the wrapper recording why (hard time limit): compensate once
        # its attempt has really stopped, i.e. its lease ran out.
        if row.heartbeat_at is not None and now < row.heartbeat_at + rt.lease:
            return Retry(row.heartbeat_at + rt.lease - now)
    elif row.status != StepStatus.FAILED:
        return Halt()  # not a step failure: the sweeper resumes the saga if it stalled
    if step in saga.after_pivot():
        return Halt()  # the step task failed the saga itself; nothing is undone past the pivot
    if saga.failure_policy is FailurePolicy.WAIT_ALL:
        failed_at = max((s.finished_at or 0.0 for s in record.steps), default=0.0)
        if now - failed_at < WAIT_ALL_GRACE and siblings_still_working(saga, record, rt.lease, now):
            return Retry(0.2)
    start_compensation(rt, saga, saga_id, cause="failure", failed_step=step)
    return Halt()


def siblings_still_working(saga: Saga, record: SagaRecord, lease: float, now: float) -> bool:
    """wait-all: is a step that does not depend on a failed one still running, or ready and
    certain to be started by the canvas (not queued behind a failed step)?"""
    failed = {s.name for s in record.steps if s.status == StepStatus.FAILED}
    anc = saga.ancestors()
    done = {s.name for s in record.steps if s.status in (StepStatus.COMPLETED, StepStatus.SKIPPED)}
    reachable = runs_despite(forward_shape(saga), failed)
    for s in record.steps:
        if s.name in failed or anc[s.name] & failed:
            continue
        alive = s.heartbeat_at is not None and now < s.heartbeat_at + lease
        if s.status == StepStatus.RUNNING and alive:
            return True
        ready = set(saga.steps[s.name].depends_on) <= done
        if s.status == StepStatus.PENDING and ready and s.name in reachable:
            return True
    return False


def runs_despite(shape: Shape, failed: set[str]) -> set[str]:
    """Steps the forward canvas still starts when the steps `failed` fail: in a sequence,
    nothing after a part that contains a failure runs (a layered DAG can put an independent
    step there)."""
    reached: set[str] = set()
    stack: list[Shape] = [shape]
    while stack:
        part = stack.pop()
        if isinstance(part, Leaf):
            reached.add(part.step)
        elif isinstance(part, Par):
            stack.extend(part.parts)
        else:
            assert isinstance(part, Seq)
            for sub in part.parts:
                stack.append(sub)
                if _steps(sub) & failed:
                    break
    return reached


def _steps(shape: Shape) -> set[str]:
    found: set[str] = set()
    stack = [shape]
    while stack:
        part = stack.pop()
        if isinstance(part, Leaf):
            found.add(part.step)
        else:
            stack.extend(part.parts)
    return found
