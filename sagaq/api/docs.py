"""/openapi.json and /docs behind the same token as the API (FastAPI serves them openly)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse

from sagaq.api.auth import TokenCheck, require_bearer, require_dashboard_token


def docs_router(app: FastAPI, check: TokenCheck) -> APIRouter:
    router = APIRouter(include_in_schema=False)

    @router.get("/openapi.json", dependencies=[Depends(require_bearer(check, cookie=True))])
    def openapi() -> JSONResponse:
        return JSONResponse(app.openapi())

    @router.get("/docs", dependencies=[Depends(require_dashboard_token(check))])
    def docs(request: Request) -> HTMLResponse:
        root = str(request.scope.get("root_path", "")).rstrip("/")
        return get_swagger_ui_html(openapi_url=f"{root}/openapi.json", title="sagaq API")

    return router
