"""The sagaq HTTP API and dashboard as a FastAPI app.

    SAGAQ_APP=shop:engine uvicorn sagaq.api.app:app   # your engine, SAGAQ_* settings
    create_app(engine, token="...")                   # embed in your own process, or test

`app` is built on first access (not at import): it imports the engine named by SAGAQ_APP
("module:attribute", read by sagaq.loader as for the `sagaq` command) so the API knows the
same sagas as the workers, and takes its token from SAGAQ_API_TOKEN.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI

from sagaq.api.auth import TokenCheck
from sagaq.api.console import console_router
from sagaq.api.dashboard import dashboard_router, install_dashboard_login
from sagaq.api.docs import docs_router
from sagaq.api.errors import install_error_handlers
from sagaq.api.history import history_router
from sagaq.api.login import login_router
from sagaq.api.ops import ops_router
from sagaq.api.sagas import sagas_router
from sagaq.client import SagaQ
from sagaq.loader import load_engine
from sagaq.observability.metrics import install_metrics
from sagaq.settings import Settings

DESCRIPTION = """Start sagas, follow them, cancel them. Each registered saga has its own
`POST /sagas/<name>` with its input model. With SAGAQ_API_TOKEN set, send
`Authorization: Bearer <token>` (not needed for /healthz, /readyz and /metrics).
The dashboard is at [/dashboard](/dashboard)."""


def create_app(
    engine: SagaQ, token: str | None = None, *, tokens: Mapping[str, str] | None = None
) -> FastAPI:
    """The API for `engine`'s registered sagas; `token` protects everything but /healthz and
    /metrics (None: no auth). `tokens` are named tokens; the name is the actor of a cancel or
    a retry in the saga's history."""
    check = TokenCheck(token, tokens)
    # FastAPI would serve /openapi.json and /docs to anyone: docs_router serves them instead.
    app = FastAPI(title="sagaq", description=DESCRIPTION, openapi_url=None, docs_url=None)
    install_metrics(engine, store_gauges=True)
    install_error_handlers(app)
    install_dashboard_login(app)
    app.include_router(history_router(engine, check))
    app.include_router(sagas_router(engine, check))
    app.include_router(ops_router(engine))
    app.include_router(dashboard_router(engine, check))
    app.include_router(console_router(engine, check))
    app.include_router(docs_router(app, check))
    app.include_router(login_router(check))
    app.state.engine = engine
    return app


_built: dict[str, FastAPI] = {}


def __getattr__(name: str) -> Any:
    """`sagaq.api.app:app`, built from the settings the first time it is asked for."""
    if name != "app":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if "app" not in _built:
        settings = Settings()
        _built["app"] = create_app(
            load_engine(settings.app), settings.api_token, tokens=settings.api_tokens
        )
    return _built["app"]
