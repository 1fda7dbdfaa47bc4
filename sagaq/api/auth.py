"""Bearer-token auth. With a token configured (SAGAQ_API_TOKEN), every route but /healthz and
/metrics needs `Authorization: Bearer <token>`. Browsers cannot send that header when they
follow a link, so the dashboard's sign-in form (sagaq.api.login) POSTs the token once and it is
then kept in an HttpOnly, SameSite=Strict cookie. A token is never accepted from a URL."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Mapping

from fastapi import HTTPException, Request

TOKEN_COOKIE = "sagaq_token"


class TokenCheck:
    """One token (SAGAQ_API_TOKEN, named "api") and/or named ones (SAGAQ_API_TOKENS, a JSON
    object {"alice": "<token>"}): the name is recorded as the actor of operator actions."""

    def __init__(self, token: str | None, named: Mapping[str, str] | None = None) -> None:
        self.token = token or None
        self.named = {name: secret for name, secret in (named or {}).items() if secret}
        if self.token is not None:
            self.named.setdefault("api", self.token)

    @property
    def enabled(self) -> bool:
        return bool(self.named)

    def accepts(self, given: str | None) -> bool:
        return not self.enabled or self.name_of(given) is not None

    def name_of(self, given: str | None) -> str | None:
        """The name of the token `given` is (compared in constant time), or None."""
        if given is None:
            return None
        found = None
        for name, secret in self.named.items():
            if secrets.compare_digest(given.encode(), secret.encode()):
                found = name
        return found

    def actor(self, request: Request) -> str:
        """Who is asking: the name of the token the request carries (header or dashboard
        cookie); "anonymous" when the API has no token."""
        if not self.enabled:
            return "anonymous"
        given = bearer_token(request) or request.cookies.get(TOKEN_COOKIE)
        return self.name_of(given) or "unknown"


def bearer_token(request: Request) -> str | None:
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


def require_bearer(check: TokenCheck, *, cookie: bool = False) -> Callable[[Request], None]:
    """A FastAPI dependency: 401 unless the request carries the bearer token (or, with
    `cookie`, the dashboard's cookie: /openapi.json, fetched by the docs page)."""

    def dependency(request: Request) -> None:
        given = bearer_token(request)
        if given is None and cookie:
            given = request.cookies.get(TOKEN_COOKIE)
        if not check.accepts(given):
            raise HTTPException(
                status_code=401,
                detail="missing or wrong bearer token (send 'Authorization: Bearer <token>')",
                headers={"WWW-Authenticate": "Bearer"},
            )

    return dependency


class DashboardLogin(Exception):
    """Raised by the dashboard's auth dependency: redirect with a cookie, or ask for the token."""

    def __init__(self, redirect_to: str | None, token: str | None = None) -> None:
        super().__init__(redirect_to)
        self.redirect_to = redirect_to
        self.token = token


def require_dashboard_token(check: TokenCheck) -> Callable[[Request], None]:
    """A FastAPI dependency for HTML pages: bearer header or the sign-in cookie."""

    def dependency(request: Request) -> None:
        if not check.enabled:
            return
        if check.accepts(bearer_token(request)) or check.accepts(request.cookies.get(TOKEN_COOKIE)):
            return
        raise DashboardLogin(None)

    return dependency
