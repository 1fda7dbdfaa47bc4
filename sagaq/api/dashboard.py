"""The dashboard: `/dashboard` lists recent sagas (filter by status or saga, refreshes itself);
`/dashboard/sagas/{id}` shows one saga's step graph, what triggered its compensation and how
each compensation went. Read-only: it changes nothing, so it needs no protection from CSRF."""

from __future__ import annotations

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from sagaq.api.auth import TOKEN_COOKIE, DashboardLogin, TokenCheck, require_dashboard_token
from sagaq.api.pages import login_page, not_found_page, saga_list_page, saga_page
from sagaq.client import SagaQ
from sagaq.errors import SagaNotFoundError
from sagaq.status import SagaStatus

RECENT = 100


def dashboard_router(engine: SagaQ, check: TokenCheck) -> APIRouter:
    router = APIRouter(include_in_schema=False)
    guarded = [Depends(require_dashboard_token(check))]

    @router.get("/")
    def home(request: Request) -> RedirectResponse:
        query = f"?{request.url.query}" if request.url.query else ""
        return RedirectResponse(f"{_root(request)}/dashboard{query}", status_code=307)

    @router.get("/dashboard", dependencies=guarded)
    def saga_list(
        request: Request, status: SagaStatus | None = None, saga: str | None = None
    ) -> HTMLResponse:
        results = engine.list(status=status, saga=saga or None, limit=RECENT)
        return HTMLResponse(saga_list_page(results, _root(request), status, saga or None))

    @router.get("/dashboard/sagas/{saga_id}", dependencies=guarded)
    def saga_detail(request: Request, saga_id: str) -> HTMLResponse:
        try:
            result = engine.status(saga_id)
        except SagaNotFoundError as exc:
            return HTMLResponse(not_found_page(_root(request), str(exc)), status_code=404)
        definition = engine.sagas.get(result.saga)
        dependencies = definition.dependencies if definition is not None else {}
        return HTMLResponse(saga_page(result, dependencies, _root(request)))

    return router


def install_dashboard_login(app: FastAPI) -> None:
    """Answer DashboardLogin: keep an accepted `?token=` in a cookie, or ask for the token."""

    async def handle(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, DashboardLogin)
        if exc.redirect_to is None or exc.token is None:
            return HTMLResponse(login_page(_root(request), request.url.path), status_code=401)
        response = RedirectResponse(exc.redirect_to, status_code=303)
        response.set_cookie(
            TOKEN_COOKIE,
            exc.token,
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
            path=_root(request) or "/",
        )
        return response

    app.add_exception_handler(DashboardLogin, handle)


def _root(request: Request) -> str:
    return str(request.scope.get("root_path", "")).rstrip("/")
