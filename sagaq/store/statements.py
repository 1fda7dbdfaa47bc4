"""The statements on the hot path (every step runs them), built once with bind parameters:
building and cache-keying a SQLAlchemy statement per call costs more than running it.

PostgreSQL runs a claim (with the reads the step needs) and a completion (with the saga's, for
the last step) as single statements: data-modifying CTEs. SQLite runs the same pieces one by one
inside a transaction."""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    CTE,
    BindParameter,
    Select,
    and_,
    bindparam,
    exists,
    func,
    literal,
    or_,
    select,
    update,
)

from sagaq.status import SagaStatus, StepStatus
from sagaq.store.schema import saga, saga_step

ACTIVE = (SagaStatus.PENDING, SagaStatus.RUNNING)

_sid: BindParameter[str] = bindparam("sid")
_step: BindParameter[str] = bindparam("step")
_now: BindParameter[float] = bindparam("now")

# PENDING->RUNNING (or RUNNING->RUNNING on redelivery), attempts+1, while the saga is active.
CLAIM = (
    update(saga_step)
    .where(
        saga_step.c.saga_id == _sid,
        saga_step.c.name == _step,
        saga_step.c.status.in_((StepStatus.PENDING, StepStatus.RUNNING)),
        exists().where(
            saga.c.id == _sid,
            saga.c.status.in_(ACTIVE),
            or_(saga.c.deadline_at.is_(None), saga.c.deadline_at > _now),
        ),
    )
    .values(
        status=StepStatus.RUNNING,
        attempts=saga_step.c.attempts + 1,
        started_at=func.coalesce(saga_step.c.started_at, _now),
    )
    .returning(saga_step.c.attempts)
)


def _inputs(claimed: CTE | None = None) -> Select[Any]:
    """The saga row joined with the rows of the steps a step needs (`wanted`)."""
    head: Any = saga if claimed is None else claimed.join(saga, saga.c.id == _sid)
    columns: list[Any] = [saga.c.input, saga.c.headers]
    if claimed is not None:
        columns.append(claimed.c.attempts)
    return (
        select(*columns, saga_step.c.name, saga_step.c.status, saga_step.c.result, saga_step.c.data)
        .select_from(
            head.outerjoin(
                saga_step,
                and_(
                    saga_step.c.saga_id == saga.c.id,
                    saga_step.c.name.in_(bindparam("wanted", expanding=True)),
                ),
            )
        )
        .where(saga.c.id == _sid)
        .order_by(saga_step.c.position)
    )


INPUTS = _inputs()
CLAIM_WITH_INPUTS = _inputs(CLAIM.cte("claimed"))

# RUNNING->COMPLETED (or SKIPPED) with the result and what the step wrote to ctx.data.
COMPLETE = (
    update(saga_step)
    .where(
        saga_step.c.saga_id == _sid,
        saga_step.c.name == _step,
        saga_step.c.status == StepStatus.RUNNING,
    )
    .values(
        status=bindparam("new_status"),
        result=bindparam("new_result", type_=saga_step.c.result.type),
        data=bindparam("new_data", type_=saga_step.c.data.type),
        finished_at=_now,
    )
)

# Active->COMPLETED once no step is left unfinished.
FINISH = (
    update(saga)
    .where(
        saga.c.id == _sid,
        saga.c.status.in_(ACTIVE),
        ~exists().where(
            saga_step.c.saga_id == _sid,
            saga_step.c.status.not_in((StepStatus.COMPLETED, StepStatus.SKIPPED)),
        ),
    )
    .values(status=SagaStatus.COMPLETED, updated_at=_now, finished_at=_now)
)

_done = COMPLETE.returning(saga_step.c.saga_id).cte("done")
_step_done = select(func.count()).select_from(_done).scalar_subquery()
COMPLETE_ONLY = select(_step_done, literal(0))

# The CTEs share one snapshot: "every other step is done" must leave out this step.
_finished = (
    update(saga)
    .where(
        saga.c.id == _sid,
        saga.c.status.in_(ACTIVE),
        exists(select(literal(1)).select_from(_done)),
        ~exists().where(
            saga_step.c.saga_id == _sid,
            saga_step.c.name != _step,
            saga_step.c.status.not_in((StepStatus.COMPLETED, StepStatus.SKIPPED)),
        ),
    )
    .values(status=SagaStatus.COMPLETED, updated_at=_now, finished_at=_now)
    .returning(saga.c.id)
    .cte("finished")
)
COMPLETE_AND_FINISH = select(
    _step_done, select(func.count()).select_from(_finished).scalar_subquery()
)
