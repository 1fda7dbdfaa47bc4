"""/openapi.json and /docs behind the same token as the API (FastAPI serves them openly).

Swagger UI's files come from the installed swagger-ui-bundle package, not a CDN, so /docs
works offline. The schema declares the bearer scheme, so "Authorize" then "Try it out" works.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from swagger_ui_bundle import swagger_ui_path

from sagaq.api.auth import TokenCheck, require_bearer, require_dashboard_token

BEARER = "bearerAuth"
# Routes a probe or a scraper calls without a token.
OPEN_PATHS = ("/healthz", "/readyz", "/metrics")


def docs_router(app: FastAPI, check: TokenCheck) -> APIRouter:
    router = APIRouter(include_in_schema=False)
    app.mount("/docs/assets", StaticFiles(directory=swagger_ui_path), name="swagger-assets")

    @router.get("/openapi.json", dependencies=[Depends(require_bearer(check, cookie=True))])
    def openapi() -> JSONResponse:
        return JSONResponse(with_bearer_scheme(app.openapi()) if check.enabled else app.openapi())

    @router.get("/docs", dependencies=[Depends(require_dashboard_token(check))])
    def docs(request: Request) -> HTMLResponse:
        root = str(request.scope.get("root_path", "")).rstrip("/")
        return get_swagger_ui_html(
            openapi_url=f"{root}/openapi.json",
            title="sagaq API",
            swagger_js_url=f"{root}/docs/assets/swagger-ui-bundle.js",
            swagger_css_url=f"{root}/docs/assets/swagger-ui.css",
            swagger_favicon_url=f"{root}/docs/assets/favicon-32x32.png",
            swagger_ui_parameters={"persistAuthorization": True},
        )

    return router


def with_bearer_scheme(schema: dict[str, Any]) -> dict[str, Any]:
    """The schema with an HTTP bearer scheme required everywhere but the open routes."""
    schema = {**schema, "components": dict(schema.get("components") or {})}
    schema["components"]["securitySchemes"] = {
        BEARER: {"type": "http", "scheme": "bearer", "description": "SAGAQ_API_TOKEN"}
    }
    schema["security"] = [{BEARER: []}]
    for path in OPEN_PATHS:
        for operation in schema.get("paths", {}).get(path, {}).values():
            operation["security"] = []
    return schema
