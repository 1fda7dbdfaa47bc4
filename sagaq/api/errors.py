"""Every error the API answers, in one shape (`Problem`), from one place:

    {"error": "SagaNotFoundError", "detail": "no saga with id 'x'", "status": 404}

401 (bearer token), 404 (unknown saga or id), 409 (finished saga, idempotency conflict),
422 (invalid input; `problems` then lists each field) and 503 (broker or store down) all
look like this, so a client reads `detail` without knowing which layer refused.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import SQLAlchemyError
from starlette.exceptions import HTTPException

from sagaq.errors import (
    BrokerUnavailableError,
    ConfigurationError,
    IdempotencyConflictError,
    InvalidInputError,
    InvalidStateError,
    SagaNotFoundError,
    SagaqError,
    SagaTimeoutError,
    StoreUnavailableError,
    UnknownSagaError,
)

log = logging.getLogger("sagaq.api")

# Checked in order: the first class the error is an instance of decides.
HTTP_STATUS: tuple[tuple[type[SagaqError], int], ...] = (
    (UnknownSagaError, 404),
    (SagaNotFoundError, 404),
    (InvalidInputError, 422),
    (IdempotencyConflictError, 409),
    (InvalidStateError, 409),
    (SagaTimeoutError, 504),
    (StoreUnavailableError, 503),
    (BrokerUnavailableError, 503),
    (ConfigurationError, 500),
)

# The `error` of refusals that are not sagaq exceptions.
_HTTP_ERROR_NAMES = {401: "Unauthorized", 403: "Forbidden", 404: "NotFound", 405: "NotAllowed"}


def http_status(error: SagaqError) -> int:
    return next((code for cls, code in HTTP_STATUS if isinstance(error, cls)), 500)


def problem(
    status: int, error: str, detail: str, headers: dict[str, str] | None = None, **extra: Any
) -> JSONResponse:
    body = {"error": error, "detail": detail, "status": status, **extra}
    return JSONResponse(jsonable_encoder(body), status_code=status, headers=headers)


async def _sagaq_error(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, SagaqError)
    code = http_status(error)
    # A 503 is retried by the caller: tell it when, and say nothing but what happened.
    headers = {"Retry-After": "5"} if code == 503 else None
    return problem(code, type(error).__name__, str(error), headers)


async def _http_error(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, HTTPException)
    name = _HTTP_ERROR_NAMES.get(error.status_code, "HTTPError")
    headers = dict(error.headers) if error.headers else None
    return problem(error.status_code, name, str(error.detail), headers)


async def _invalid_request(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, RequestValidationError)
    problems = [
        {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
        for e in error.errors()
    ]
    where = "; ".join(f"{'.'.join(map(str, p['loc']))}: {p['msg']}" for p in problems)
    return problem(422, "InvalidInputError", f"invalid request: {where}", problems=problems)


async def _database_error(request: Request, error: Exception) -> JSONResponse:
    # A driver message can name hosts and users: log it, answer without it.
    log.error("the saga store failed: %s", error)
    return problem(
        503,
        "StoreUnavailableError",
        "the saga store is unavailable; try again later",
        {"Retry-After": "5"},
    )


async def _unexpected(request: Request, error: Exception) -> JSONResponse:
    # Starlette logs the traceback; the client gets the shape, not the internals.
    return problem(500, "InternalError", "internal error: see the API server's log")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(SagaqError, _sagaq_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _invalid_request)
    app.add_exception_handler(SQLAlchemyError, _database_error)
    app.add_exception_handler(Exception, _unexpected)
