"""Sub-sagas: a step that runs another registered saga. The child is started with the
parent step's idempotency key, so a redelivered or re-polled parent step never starts a second
child; the parent step polls (via Celery retries, not by blocking a worker) until the child
is finished. Compensating the parent step compensates a completed child."""

from __future__ import annotations

from typing import Any

from sagaq.definition.saga import Step, StepContext
from sagaq.errors import NonRetryableError, SagaqError
from sagaq.runtime.base import Runtime
from sagaq.runtime.launch import start_compensation, start_saga
from sagaq.status import SagaStatus, StepStatus

POLL_SECONDS = 0.1


class ChildPending(Exception):
    """The child saga is not finished yet: poll again."""


def run_child(rt: Runtime, step: Step, ctx: StepContext) -> Any:
    """Start the child (once) and return its results when it completed."""
    assert step.sub_saga is not None
    child = rt.sagas[step.sub_saga]
    child_id, _ = start_saga(
        rt,
        child,
        child.parse_input(step.fn(ctx)),
        idempotency_key=ctx.idempotency_key,
        headers=dict(ctx.headers),
        parent_id=ctx.saga_id,
    )
    record = rt.store.get(child_id)
    assert record is not None
    if record.status == SagaStatus.COMPLETED:
        results = {s.name: s.result for s in record.steps if s.status == StepStatus.COMPLETED}
        return {"saga_id": child_id, "results": results}
    if record.status.is_terminal or record.status == SagaStatus.COMPENSATING:
        raise NonRetryableError(
            f"sub-saga {child.name} {child_id} did not complete: {record.error or record.status}"
        )
    raise ChildPending(child_id)


def undo_child(rt: Runtime, result: dict[str, Any] | None) -> None:
    """Compensate the child this step completed; raises ChildPending until it is undone."""
    if not result or "saga_id" not in result:
        return  # the step never got as far as a child that completed
    record = rt.store.get(result["saga_id"])
    if record is None or record.status == SagaStatus.COMPENSATED:
        return
    if record.status == SagaStatus.COMPLETED:
        child = rt.sagas[record.name]
        reason = f"parent saga {record.parent_id} is compensating"
        start_compensation(rt, child, record.id, reason=reason, allowed=(SagaStatus.COMPLETED,))
        raise ChildPending(record.id)
    if record.status == SagaStatus.FAILED:
        raise SagaqError(
            f"sub-saga {record.name} {record.id} could not be compensated: {record.error}"
        )
    raise ChildPending(record.id)
