"""The dashboard's sign-in: the token travels in a POST body, never in a URL (URLs end up in
access logs, browser history and Referer headers). An accepted token is kept in an HttpOnly,
SameSite=Strict cookie; the browser then goes back to the page it asked for."""

from __future__ import annotations

from urllib.parse import parse_qs

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from sagaq.api.auth import TOKEN_COOKIE, TokenCheck
from sagaq.api.pages import login_page

LOGIN_PATH = "/dashboard/login"


def login_router(check: TokenCheck) -> APIRouter:
    router = APIRouter(include_in_schema=False)

    @router.post(LOGIN_PATH)
    async def login(request: Request) -> Response:
        form = parse_qs((await request.body()).decode("utf-8", "replace"))
        token = (form.get("token") or [""])[0]
        root = str(request.scope.get("root_path", "")).rstrip("/")
        target = _local_path((form.get("next") or [""])[0], default=f"{root}/dashboard")
        if not check.accepts(token):
            return HTMLResponse(login_page(root, target, wrong=True), status_code=401)
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(
            TOKEN_COOKIE,
            token,
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
            path=root or "/",
        )
        return response

    return router


def _local_path(path: str, default: str) -> str:
    """Only a path on this site: an absolute URL or `//host` would make an open redirect."""
    return path if path.startswith("/") and not path.startswith("//") else default
