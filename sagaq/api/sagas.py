"""The JSON API: start sagas, read them, list them, cancel them.

Each saga registered when the app is built gets its own `POST /sagas/<name>` route whose body is
the saga's input model, so FastAPI validates it (422 naming the field) and /openapi.json shows
it. A saga registered later is still reachable through the generic `POST /sagas/{name}`.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Header, Query, Request
from pydantic import BaseModel

from sagaq.api.auth import TokenCheck, require_bearer
from sagaq.api.schemas import CancelRequest, Problem, SagaList, SagaOut, Started, summary
from sagaq.client import SagaHandle, SagaQ
from sagaq.definition import Saga
from sagaq.status import SagaStatus

IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        description="Starting twice with the same key returns the first saga",
    ),
]
ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": Problem, "description": "Missing or wrong bearer token"},
    404: {"model": Problem, "description": "Unknown saga or saga id"},
}


def sagas_router(engine: SagaQ, check: TokenCheck) -> APIRouter:
    router = APIRouter(
        prefix="/sagas", tags=["sagas"], dependencies=[Depends(require_bearer(check))]
    )
    for saga in engine.sagas.values():
        router.add_api_route(
            f"/{saga.name}",
            _start_endpoint(engine, saga),
            methods=["POST"],
            status_code=202,
            response_model=Started,
            name=f"start_{saga.name}",
            operation_id=f"start_{saga.name}",
            summary=f"Start a {saga.name} saga",
            description=f"Steps: {', '.join(saga.order())}. Returns at once.",
            responses=ERRORS,
        )

    @router.post("/{name}", status_code=202, include_in_schema=False)
    def start_any(
        request: Request,
        name: str,
        idempotency_key: IdempotencyKey = None,
        body: Annotated[dict[str, Any] | None, Body()] = None,
    ) -> Started:
        """Sagas registered after the app was built (and unknown names: 404)."""
        engine.saga(name)
        return _started(request, engine, engine.start(name, body, idempotency_key=idempotency_key))

    @router.get("", response_model=SagaList, responses=ERRORS)
    def list_sagas(
        status: SagaStatus | None = None,
        saga: str | None = None,
        since: Annotated[
            datetime | None,
            Query(description="Created at or after: ISO 8601 (UTC if naive) or Unix time"),
        ] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    ) -> SagaList:
        """Sagas newest first, without their steps."""
        after = None if since is None else _utc(since).timestamp()
        results = engine.list(status=status, saga=saga, since=after, limit=limit)
        return SagaList(sagas=[summary(r) for r in results])

    @router.get("/{saga_id}", response_model=SagaOut, name="get_saga", responses=ERRORS)
    def get_saga(saga_id: str) -> SagaOut:
        """A saga with every step: status, attempts, result, error, compensation."""
        return SagaOut.of(engine.status(saga_id))

    @router.post(
        "/{saga_id}/cancel",
        status_code=202,
        response_model=SagaOut,
        responses={**ERRORS, 409: {"model": Problem, "description": "The saga is finished"}},
    )
    def cancel_saga(saga_id: str, body: CancelRequest | None = None) -> SagaOut:
        """Stop a saga and compensate what it completed (asynchronously: poll the saga)."""
        reason = (body or CancelRequest()).reason
        return SagaOut.of(engine.cancel(saga_id, reason))

    return router


def _start_endpoint(engine: SagaQ, saga: Saga) -> Callable[..., Started]:
    def start(request: Request, body: Any, idempotency_key: IdempotencyKey = None) -> Started:
        data = body.model_dump(mode="json") if isinstance(body, BaseModel) else body
        handle = engine.start(saga.name, data, idempotency_key=idempotency_key)
        return _started(request, engine, handle)

    # The body's type is the saga's own model: set it here, where it is known.
    start.__annotations__["body"] = Annotated[saga.input_model or dict[str, Any], Body()]
    return start


def _started(request: Request, engine: SagaQ, handle: SagaHandle) -> Started:
    return Started(
        id=handle.id,
        status=engine.status(handle.id).status,
        status_url=str(request.url_for("get_saga", saga_id=handle.id)),
        created=handle.created,
    )


def _utc(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
