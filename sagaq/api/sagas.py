"""The JSON API: start sagas and read them (list, history, cancel and retry: history.py).

Each saga registered when the app is built gets its own `POST /sagas/<name>` route whose body is
the saga's input model, so FastAPI validates it (422 naming the field) and /openapi.json shows
it. A saga registered later is still reachable through the generic `POST /sagas/{name}`.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Header, Request
from pydantic import BaseModel

from sagaq.api.auth import TokenCheck, require_bearer
from sagaq.api.schemas import Problem, SagaOut, Started
from sagaq.client import SagaHandle, SagaQ
from sagaq.definition import Saga

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

    @router.get("/{saga_id}", response_model=SagaOut, name="get_saga", responses=ERRORS)
    def get_saga(saga_id: str) -> SagaOut:
        """A saga with every step: status, attempts, result, error, compensation."""
        return SagaOut.of(engine.status(saga_id))

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
