"""The dashboard's entry and login: `/` leads to `/dashboard`, and an accepted `?token=` is kept
in a cookie. The pages themselves (list, saga, cancel, retry) are in console.py."""

from __future__ import annotations

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from sagaq.api.auth import TOKEN_COOKIE, DashboardLogin, TokenCheck
from sagaq.api.pages import login_page
from sagaq.client import SagaQ

RECENT = 100


def dashboard_router(engine: SagaQ, check: TokenCheck) -> APIRouter:
    router = APIRouter(include_in_schema=False)

    @router.get("/")
    def home(request: Request) -> RedirectResponse:
        query = f"?{request.url.query}" if request.url.query else ""
        return RedirectResponse(f"{_root(request)}/dashboard{query}", status_code=307)

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
