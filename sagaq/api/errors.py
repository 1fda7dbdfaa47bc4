"""sagaq errors as HTTP responses, in one place."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from sagaq.errors import (
    BrokerUnavailableError,
    InvalidInputError,
    InvalidStateError,
    SagaNotFoundError,
    SagaqError,
    SagaTimeoutError,
    StoreUnavailableError,
    UnknownSagaError,
)

# Checked in order: the first class the error is an instance of decides.
HTTP_STATUS: tuple[tuple[type[SagaqError], int], ...] = (
    (UnknownSagaError, 404),
    (SagaNotFoundError, 404),
    (InvalidInputError, 422),
    (InvalidStateError, 409),
    (SagaTimeoutError, 504),
    (StoreUnavailableError, 503),
    (BrokerUnavailableError, 503),
)


def http_status(error: SagaqError) -> int:
    return next((code for cls, code in HTTP_STATUS if isinstance(error, cls)), 500)


async def _sagaq_error(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, SagaqError)
    body = {"detail": str(error), "error": type(error).__name__}
    return JSONResponse(body, status_code=http_status(error))


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(SagaqError, _sagaq_error)
