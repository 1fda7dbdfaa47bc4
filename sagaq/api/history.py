"""The operator's JSON routes: find sagas (search, cursor paging, counts), read a saga's
history, cancel or retry it. Cancel and retry record the token's name as the actor."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request

from sagaq.api.auth import TokenCheck, require_bearer
from sagaq.api.history_models import EventList, EventOut, OperatorAction, SagaPageOut
from sagaq.api.schemas import Problem, SagaOut
from sagaq.client import SagaQ
from sagaq.status import SagaStatus
from sagaq.store.history import SagaFilter

ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": Problem, "description": "Missing or wrong bearer token"},
    404: {"model": Problem, "description": "Unknown saga id"},
}
Moment = Annotated[datetime | None, Query(description="ISO 8601 (UTC if naive) or Unix time")]


def history_router(engine: SagaQ, check: TokenCheck) -> APIRouter:
    router = APIRouter(
        prefix="/sagas", tags=["sagas"], dependencies=[Depends(require_bearer(check))]
    )

    @router.get("", response_model=SagaPageOut, responses=ERRORS)
    def list_sagas(
        status: SagaStatus | None = None,
        saga: Annotated[str | None, Query(description="The saga's name")] = None,
        cause: Annotated[
            str | None,
            Query(description="Why compensation began: failure, cancel or deadline"),
        ] = None,
        key: Annotated[str | None, Query(description="The idempotency key, exactly")] = None,
        id_prefix: Annotated[str | None, Query(description="The start of the saga id")] = None,
        since: Moment = None,
        until: Moment = None,
        cursor: Annotated[str | None, Query(description="next_cursor of the previous page")] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 50,
        counts: Annotated[bool, Query(description="Also count the matches per status")] = False,
    ) -> SagaPageOut:
        """Sagas newest first, without their steps, one page at a time."""
        where = SagaFilter(
            name=saga or None,
            status=status,
            cause=cause or None,
            key=key or None,
            id_prefix=id_prefix or None,
            since=_epoch(since),
            until=_epoch(until),
        )
        page = engine.history.search(where, cursor=cursor or None, limit=limit)
        tally = engine.history.count_by_status(where) if counts else None
        return SagaPageOut.of(page, tally)

    @router.get("/{saga_id}/events", response_model=EventList, responses=ERRORS)
    def saga_events(
        saga_id: str, after: Annotated[int, Query(ge=0, description="Only events after")] = 0
    ) -> EventList:
        """What happened to the saga, oldest first: transitions, attempts (worker, task id,
        error, duration), sweeper and operator actions."""
        events = engine.history.events(saga_id, after=after)
        if not events and after == 0:
            engine.status(saga_id)  # 404 for an unknown id, an empty list for a quiet saga
        return EventList(saga_id=saga_id, events=[EventOut.of(e) for e in events])

    conflict = {**ERRORS, 409: {"model": Problem, "description": "Not in a state for this"}}

    @router.post("/{saga_id}/cancel", status_code=202, response_model=SagaOut, responses=conflict)
    def cancel_saga(request: Request, saga_id: str, body: OperatorAction | None = None) -> SagaOut:
        """Stop a saga and compensate what it completed (asynchronously: poll the saga)."""
        reason = (body and body.reason) or "cancelled through the HTTP API"
        return SagaOut.of(engine.cancel(saga_id, reason, actor=check.actor(request)))

    @router.post("/{saga_id}/retry", status_code=202, response_model=SagaOut, responses=conflict)
    def retry_saga(request: Request, saga_id: str, body: OperatorAction | None = None) -> SagaOut:
        """Resume a FAILED saga: a compensation that gave up runs again, or the steps left
        after its pivot do. Its earlier failure stays in its history."""
        reason = (body and body.reason) or None
        return SagaOut.of(engine.retry(saga_id, actor=check.actor(request), reason=reason))

    return router


def _epoch(moment: datetime | None) -> float | None:
    if moment is None:
        return None
    return (moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)).timestamp()
