"""Sub-saga steps: a step that runs another registered saga. The parent step starts its child
once per forward attempt generation and polls it (through Celery retries, not by blocking a
worker) until the child is finished. Compensating the parent step cancels a child that still
runs and compensates one that completed - always, whatever path led to compensation."""

from __future__ import annotations

from typing import Any

from sagaq.definition.saga import Step, StepContext
from sagaq.errors import NonRetryableError, SagaqError
from sagaq.runtime.base import Runtime
from sagaq.status import SAGA_ACTIVE, SagaStatus, StepStatus
from sagaq.store import SagaRecord

POLL_SECONDS = 0.1


class ChildPending(Exception):
    """The child saga is not finished yet: poll again."""


def children(rt: Runtime, parent_id: str, step: str) -> list[SagaRecord]:
    """The child sagas a parent's step started, oldest first."""
    found = (rt.store.get(i) for i in rt.store.children(parent_id, step))
    return [r for r in found if r is not None]


def run_child(rt: Runtime, step: Step, ctx: StepContext, *, resumed: bool) -> Any:
    """Start the child and return its results once it completed. A new attempt (not the
    attempt's own poll: `resumed`) after a child that did not complete starts a fresh child."""
    from sagaq.runtime.launch import start_saga

    assert step.sub_saga is not None
    child = rt.sagas[step.sub_saga]
    earlier = children(rt, ctx.saga_id, step.name)
    current = earlier[-1] if earlier else None
    gave_up = (SagaStatus.COMPENSATED, SagaStatus.FAILED, SagaStatus.COMPENSATING)
    if current is None or (not resumed and current.status in gave_up):
        child_id, _ = start_saga(
            rt,
            child,
            child.parse_input(step.fn(ctx)),
            idempotency_key=f"{ctx.idempotency_key}#{len(earlier)}",
            headers=dict(ctx.headers),
            parent_id=ctx.saga_id,
            parent_step=step.name,
        )
        current = rt.store.get(child_id)
        assert current is not None
    if current.status == SagaStatus.COMPLETED:
        results = {s.name: s.result for s in current.steps if s.status == StepStatus.COMPLETED}
        return {"saga_id": current.id, "results": results}
    if current.status in gave_up:
        raise NonRetryableError(
            f"sub-saga {child.name} {current.id} did not complete: "
            f"{current.error or current.status}"
        )
    raise ChildPending(current.id)


def undo_children(rt: Runtime, parent_id: str, step: str) -> None:
    """Cancel the children still running, compensate those that completed; raises ChildPending
    until every child is compensated."""
    from sagaq.runtime.launch import start_compensation

    pending = False
    for record in children(rt, parent_id, step):
        child = rt.sagas[record.name]
        reason = f"parent saga {parent_id} is compensating"
        if record.status in SAGA_ACTIVE or record.status == SagaStatus.COMPLETED:
            allowed = (record.status,)
            begun = start_compensation(
                rt, child, record.id, cause="cancel", reason=reason, allowed=allowed
            )
            if begun.steps is None and begun.status == record.status:
                raise SagaqError(
                    f"sub-saga {record.name} {record.id} is past its pivot step and cannot be "
                    "compensated: an operator must settle it"
                )
            pending = pending or not begun.finished
        elif record.status == SagaStatus.COMPENSATING:
            pending = True
        elif record.status == SagaStatus.FAILED:
            raise SagaqError(
                f"sub-saga {record.name} {record.id} could not be compensated: {record.error}"
            )
    if pending:
        raise ChildPending(parent_id)
