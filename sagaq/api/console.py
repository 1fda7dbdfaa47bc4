"""The operator's dashboard: find sagas (search, counts, pages), follow one (timeline, Flower
links), cancel or retry it.

Pages refresh in place: dashboard.js fetches the `/dashboard/fragments/...` HTML of the live
region every few seconds (no full reloads). Cancel and retry are form POSTs behind a confirm
dialog with a reason. They are safe against CSRF three ways: the auth cookie is SameSite=Strict,
a cross-site request (Sec-Fetch-Site / Origin) is refused, and the form carries a token derived
from the API token, which another site cannot compute.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import replace
from datetime import datetime
from typing import Annotated
from urllib.parse import parse_qs, urlencode, urlsplit

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from sagaq.api.auth import TOKEN_COOKIE, TokenCheck, require_dashboard_token
from sagaq.api.console_pages import (
    ListQuery,
    SagaView,
    list_fragment,
    list_page,
    saga_fragment,
    saga_page,
)
from sagaq.api.pages import not_found_page
from sagaq.client import SagaQ
from sagaq.errors import InvalidInputError, InvalidStateError, SagaNotFoundError
from sagaq.retention import parse_age
from sagaq.settings import Settings
from sagaq.status import SagaStatus
from sagaq.store.history import CAUSES, SagaFilter, SagaPage, StatusCounts

PAGE_SIZE = 50


def console_router(engine: SagaQ, check: TokenCheck) -> APIRouter:
    router = APIRouter(
        include_in_schema=False, dependencies=[Depends(require_dashboard_token(check))]
    )
    flower_url = Settings().flower_url  # SAGAQ_FLOWER_URL: each step links to its task there
    csrf = CsrfTokens(check)

    def find(query: ListQuery) -> tuple[SagaPage, StatusCounts]:
        where = _filter(query)
        page = engine.history.search(where, cursor=query.cursor, limit=PAGE_SIZE)
        if query.q and not page.sagas and query.cursor is None:
            # Not an idempotency key: then the start of a saga id.
            where = replace(where, key=None, id_prefix=query.q)
            page = engine.history.search(where, limit=PAGE_SIZE)
        return page, engine.history.count_by_status(where)

    @router.get("/dashboard")
    def saga_list(request: Request, query: Annotated[ListQuery, Depends(_list_query)]) -> Response:
        page, counts = find(query)
        names = sorted(engine.sagas)
        return HTMLResponse(list_page(query, page, counts, names, _root(request)))

    @router.get("/dashboard/fragments/list")
    def saga_list_fragment(
        request: Request, query: Annotated[ListQuery, Depends(_list_query)]
    ) -> Response:
        page, counts = find(query)
        return HTMLResponse(list_fragment(query, page, counts, _root(request)))

    def view(request: Request, saga_id: str) -> SagaView:
        result = engine.status(saga_id)
        definition = engine.sagas.get(result.saga)
        return SagaView(
            result=result,
            summary=engine.history.summary(saga_id),
            events=engine.history.events(saga_id),
            task_ids=engine.history.step_task_ids(saga_id),
            dependencies=definition.dependencies if definition is not None else {},
            flower_url=flower_url,
            csrf=csrf.token_for(request),
        )

    @router.get("/dashboard/sagas/{saga_id}")
    def saga_detail(request: Request, saga_id: str, done: str | None = None) -> Response:
        try:
            shown = view(request, saga_id)
        except SagaNotFoundError as exc:
            return HTMLResponse(not_found_page(_root(request), str(exc)), status_code=404)
        notice = _NOTICES.get(done or "")
        return HTMLResponse(saga_page(shown, _root(request), notice))

    @router.get("/dashboard/fragments/sagas/{saga_id}")
    def saga_detail_fragment(request: Request, saga_id: str) -> Response:
        try:
            return HTMLResponse(saga_fragment(view(request, saga_id), _root(request)))
        except SagaNotFoundError as exc:
            return HTMLResponse(str(exc), status_code=404)

    @router.post("/dashboard/sagas/{saga_id}/{action}")
    async def act(request: Request, saga_id: str, action: str) -> Response:
        if action not in ("cancel", "retry"):
            raise HTTPException(404)
        form = await _form(request)
        csrf.verify(request, form.get("csrf", ""))
        reason = form.get("reason", "").strip()[:500] or f"{action} from the dashboard"
        actor = check.actor(request)
        try:
            if action == "cancel":
                engine.cancel(saga_id, reason, actor=actor)
            else:
                engine.retry(saga_id, actor=actor, reason=reason)
        except (InvalidStateError, SagaNotFoundError) as exc:
            code = 404 if isinstance(exc, SagaNotFoundError) else 409
            if code == 404:
                return HTMLResponse(not_found_page(_root(request), str(exc)), status_code=404)
            page = saga_page(view(request, saga_id), _root(request), f"Not done: {exc}")
            return HTMLResponse(page, status_code=409)
        target = f"{_root(request)}/dashboard/sagas/{saga_id}?{urlencode({'done': action})}"
        return RedirectResponse(target, status_code=303)

    return router


_NOTICES = {
    "cancel": "Cancel requested: completed steps are being undone.",
    "retry": "Retry requested: the saga runs again.",
}


def _list_query(
    q: Annotated[str | None, Query()] = None,
    saga: Annotated[str | None, Query()] = None,
    status: Annotated[SagaStatus | None, Query()] = None,
    cause: Annotated[str | None, Query()] = None,
    since: Annotated[str | None, Query()] = None,
    cursor: Annotated[str | None, Query()] = None,
) -> ListQuery:
    return ListQuery(
        q=(q or "").strip() or None,
        saga=saga or None,
        status=status,
        cause=cause if cause in CAUSES else None,
        since=(since or "").strip() or None,
        cursor=cursor or None,
    )


def _filter(query: ListQuery) -> SagaFilter:
    return SagaFilter(
        name=query.saga,
        status=query.status,
        cause=query.cause,
        key=query.q,
        since=_since(query.since),
    )


def _since(text: str | None) -> float | None:
    """'10m', '2h', '1d' ago, or an ISO date; anything else is ignored (shown as typed)."""
    if text is None:
        return None
    try:
        return datetime.now().timestamp() - parse_age(text)
    except InvalidInputError:
        pass
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None


async def _form(request: Request) -> dict[str, str]:
    """An urlencoded form (no multipart dependency for two fields)."""
    body = (await request.body()).decode("utf-8", "replace")
    return {k: v[0] for k, v in parse_qs(body, keep_blank_values=True).items()}


class CsrfTokens:
    """Form tokens: an HMAC of the caller's auth cookie under a key derived from the API tokens
    (so every API replica agrees), or under a per-process key when the API has no token."""

    def __init__(self, check: TokenCheck) -> None:
        secret = "\n".join(sorted(check.named.values())) or secrets.token_hex(32)
        self.key = hashlib.sha256(f"sagaq-csrf\n{secret}".encode()).digest()

    def token_for(self, request: Request) -> str:
        subject = request.cookies.get(TOKEN_COOKIE, "")
        return hmac.new(self.key, subject.encode(), hashlib.sha256).hexdigest()

    def verify(self, request: Request, given: str) -> None:
        site = request.headers.get("sec-fetch-site")
        origin = request.headers.get("origin")
        cross_site = site == "cross-site" or (
            origin is not None and urlsplit(origin).netloc != request.headers.get("host")
        )
        if cross_site or not hmac.compare_digest(given, self.token_for(request)):
            raise HTTPException(403, "this form is stale or came from another site: reload")


def _root(request: Request) -> str:
    return str(request.scope.get("root_path", "")).rstrip("/")
