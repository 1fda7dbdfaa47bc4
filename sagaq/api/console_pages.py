"""The operator's dashboard as HTML: the saga list (search, counts, pages) and a saga's page
(graph, steps with Flower links, timeline, cancel and retry). Each page has a live region that
dashboard.js refreshes in place from a fragment URL while there is something to watch.
Every value from the store is escaped; `root` is the app's mount path for links."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from html import escape
from urllib.parse import urlencode

from sagaq.api.pages import (
    badge,
    compact_json,
    compensations_table,
    facts_list,
    shorten,
    took,
    when,
)
from sagaq.api.pages import (
    page as whole_page,
)
from sagaq.api.step_graph import render_step_graph
from sagaq.client import SagaResult
from sagaq.status import SagaStatus
from sagaq.store.history import CAUSES, EventRecord, SagaPage, SagaSummary, StatusCounts

REFRESH_MS = 5000
CAUSE_LABELS = {"cancel": "cancelled", "failure": "failed step", "deadline": "deadline"}


@dataclass(frozen=True)
class ListQuery:
    """The list page's filters, as they appear in its URL."""

    q: str | None = None  # an idempotency key or the start of a saga id
    saga: str | None = None
    status: SagaStatus | None = None
    cause: str | None = None
    since: str | None = None  # as typed: 10m, 2h, 1d or an ISO date
    cursor: str | None = None

    def url(self, root: str, path: str = "/dashboard", **changes: str | None) -> str:
        values = {
            "q": self.q,
            "saga": self.saga,
            "status": self.status,
            "cause": self.cause,
            "since": self.since,
            "cursor": self.cursor,
        } | changes
        query = urlencode({k: v for k, v in values.items() if v})
        return f"{root}{path}{'?' + query if query else ''}"


# -- the list ---------------------------------------------------------------------------------


def list_page(
    query: ListQuery, page: SagaPage, counts: StatusCounts, names: Sequence[str], root: str
) -> str:
    names_options = "".join(
        f'<option value="{escape(n)}"{" selected" if n == query.saga else ""}>{escape(n)}</option>'
        for n in names
    )
    form = (
        f'<form class="search" method="get" action="{root}/dashboard" role="search">'
        f'<input type="search" name="q" value="{escape(query.q or "")}" '
        'placeholder="idempotency key or saga id prefix" aria-label="search">'
        f'<select name="saga" aria-label="saga"><option value="">all sagas</option>'
        f"{names_options}</select>"
        f'<input name="since" value="{escape(query.since or "")}" placeholder="since: 1h, 2d, '
        '2026-11-30" aria-label="since">'
        + (f'<input type="hidden" name="status" value="{query.status}">' if query.status else "")
        + (
            f'<input type="hidden" name="cause" value="{escape(query.cause)}">'
            if query.cause
            else ""
        )
        + "<button>Search</button></form>"
    )
    live = list_fragment(query, page, counts, root)
    fragment = query.url(root, "/dashboard/fragments/list")
    # Only the first page follows new sagas; a later page stays put while it is read.
    watch = f' data-live="{escape(fragment)}"' if query.cursor is None else ""
    heading = f"Sagas{f' · {escape(query.saga)}' if query.saga else ''}"
    return whole_page(
        "sagas", f'<h1>{heading}</h1>{form}<div id="live"{watch}>{live}</div>', root, live=True
    )


def list_fragment(query: ListQuery, page: SagaPage, counts: StatusCounts, root: str) -> str:
    """Counts (each a filter), the table and the paging links: what refreshes in place."""
    chips = [_chip(query.url(root, status=None, cursor=None), "all", query.status is None)]
    for status in SagaStatus:
        label = f"{status} <b>{counts.shown(status)}</b>"
        url = query.url(root, status=status, cursor=None)
        chips.append(_chip(url, label, status == query.status, data=f'data-status="{status}"'))
    causes = [_chip(query.url(root, cause=None, cursor=None), "any cause", query.cause is None)]
    for cause in CAUSES:
        url = query.url(root, cause=cause, cursor=None)
        causes.append(_chip(url, CAUSE_LABELS[cause], cause == query.cause))
    if page.sagas:
        rows = "".join(_list_row(s, root) for s in page.sagas)
        table = (
            '<table class="sagas"><colgroup><col class="id"><col><col><col><col><col>'
            '<col class="wide"><col class="when"><col class="took"></colgroup>'
            "<thead><tr><th>id</th><th>saga</th><th>key</th><th>status</th><th>cause</th>"
            "<th>failed step</th><th>error</th><th>started</th><th>took</th></tr></thead>"
            f"<tbody>{rows}</tbody></table>"
        )
    else:
        table = '<p class="empty">No sagas match.</p>'
    paging = []
    if query.cursor:
        paging.append(f'<a class="first" href="{query.url(root, cursor=None)}">« newest</a>')
    if page.next_cursor:
        older = query.url(root, cursor=page.next_cursor)
        paging.append(f'<a class="next" rel="next" href="{older}">older »</a>')
    return (
        f'<nav class="filters counts">{"".join(chips)}</nav>'
        f'<nav class="filters causes">{"".join(causes)}</nav>{table}'
        f'<nav class="paging">{"".join(paging)}</nav>'
    )


def _chip(url: str, label: str, active: bool, data: str = "") -> str:
    return f'<a{" class=active" if active else ""} {data} href="{url}">{label}</a>'


def _list_row(s: SagaSummary, root: str) -> str:
    return (
        f'<tr class="saga" data-id="{escape(s.id)}" data-status="{s.status}" '
        f'data-cause="{escape(s.cause or "")}">'
        f'<td><a href="{root}/dashboard/sagas/{escape(s.id)}"><code>{escape(s.id[:8])}</code></a>'
        f'</td><td><a href="{root}/dashboard?{urlencode({"saga": s.name})}">{escape(s.name)}</a>'
        f'</td><td class="key">{escape(s.idempotency_key or "")}</td><td>{badge(s.status)}</td>'
        f"<td>{_cause_badge(s.cause)}</td><td>{escape(s.failed_step or '')}</td>"
        f'<td class="error">{escape(shorten(s.error or ""))}</td>'
        f'<td class="nowrap">{when(s.created_at)}</td>'
        f'<td class="nowrap">{took(s.duration_ms)}</td></tr>'
    )


def _cause_badge(cause: str | None) -> str:
    if cause is None:
        return ""
    return f'<span class="cause cause-{escape(cause)}">{CAUSE_LABELS.get(cause, cause)}</span>'


# -- one saga ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class SagaView:
    result: SagaResult
    summary: SagaSummary | None  # key and cause (None if the row went meanwhile)
    events: Sequence[EventRecord]
    task_ids: Mapping[str, str]
    dependencies: Mapping[str, Sequence[str]]
    flower_url: str | None
    csrf: str


def saga_page(view: SagaView, root: str, notice: str | None = None) -> str:
    r = view.result
    fragment = f"{root}/dashboard/fragments/sagas/{escape(r.id)}"
    live = saga_fragment(view, root)
    shown = f'<p class="notice" role="status">{escape(notice)}</p>' if notice else ""
    body = (
        f"<h1>{escape(r.saga)} <code>{escape(r.id)}</code></h1>{shown}"
        f'<div id="live" data-live="{fragment}">{live}</div>{_dialogs(view, root)}'
    )
    return whole_page(f"{r.saga} {r.id[:8]}", body, root, live=True)


def saga_fragment(view: SagaView, root: str) -> str:
    r = view.result
    final = " data-final" if r.status.is_terminal else ""
    key = view.summary.idempotency_key if view.summary else None
    cause = view.summary.cause if view.summary else None
    head = (
        f'<div class="saga-head"{final}>{badge(r.status)} {_cause_badge(cause)}'
        f"{f' <span class=muted>key</span> <code>{escape(key)}</code>' if key else ''}"
        f"{_actions(r)}</div>"
    )
    graph = render_step_graph(view.dependencies, r.steps)
    return (
        f"{head}{_failure(view)}"
        '<div class="columns"><section>'
        f'{facts_list(r)}<h2>Steps</h2><div class="graph">{graph}</div>{_steps(view)}'
        f"{compensations_table(r)}</section>"
        f"<section><h2>Timeline</h2>{_timeline(view)}</section></div>"
    )


def _actions(r: SagaResult) -> str:
    buttons = []
    if not r.status.is_terminal:
        buttons.append('<button type="button" class="danger" data-open="cancel">Cancel…</button>')
    if r.status == SagaStatus.FAILED:
        buttons.append('<button type="button" data-open="retry">Retry…</button>')
    return f'<span class="actions">{"".join(buttons)}</span>'


def _dialogs(view: SagaView, root: str) -> str:
    """A confirm step with a reason for each action; the form carries the CSRF token."""
    r = view.result
    out = []
    for action, title, hint in (
        (
            "cancel",
            "Cancel this saga?",
            "Steps not started never start; completed ones are undone.",
        ),
        ("retry", "Retry this saga?", "A compensation that gave up, or the steps left, run again."),
    ):
        out.append(
            f'<dialog id="dialog-{action}"><form method="post" '
            f'action="{root}/dashboard/sagas/{escape(r.id)}/{action}">'
            f"<h2>{title}</h2><p>{hint}</p>"
            f'<label>Reason <input name="reason" required maxlength="500"></label>'
            f'<input type="hidden" name="csrf" value="{view.csrf}">'
            f'<menu><button type="button" value="close" data-close>Back</button>'
            f'<button class="danger" name="confirm" value="1">{action.capitalize()} saga</button>'
            "</menu></form></dialog>"
        )
    return "".join(out)


def _failure(view: SagaView) -> str:
    """What made the saga compensate or fail, now or before a retry (history keeps it)."""
    r = view.result
    lines = []
    if r.failed_step:
        failed = next((s for s in r.steps if s.name == r.failed_step), None)
        detail = f": {failed.error}" if failed is not None and failed.error else ""
        lines.append(f"step <code>{escape(r.failed_step)}</code> failed{escape(detail)}")
    if r.error and (not lines or r.error not in lines[0]):
        lines.append(escape(r.error))
    shown = ""
    if lines:
        title = "Compensation triggered by" if r.compensated_steps else "Error"
        shown = f'<div class="callout error"><strong>{title}</strong>{"<br>".join(lines)}</div>'
    retried = [i for i, e in enumerate(view.events) if e.kind == "operator" and e.status == "RETRY"]
    before = view.events[: retried[-1]] if retried else []
    earlier = [e for e in before if e.error and e.kind in ("saga", "step", "compensation")]
    if not earlier:
        return shown
    last = earlier[-1]
    where = f"step <code>{escape(last.step)}</code>: " if last.step else ""
    return shown + (
        '<div class="callout earlier"><strong>Earlier failure (before a retry)</strong>'
        f"{when(last.at)} · {where}{escape(last.error or '')}</div>"
    )


def _flower(view: SagaView, task_id: str | None) -> str:
    if not task_id:
        return ""
    if view.flower_url is None:
        return f"<code>{escape(task_id[:8])}</code>"
    url = f"{view.flower_url.rstrip('/')}/task/{escape(task_id)}"
    return (
        f'<a class="flower" href="{url}" target="_blank" rel="noopener">{escape(task_id[:8])}</a>'
    )


def _steps(view: SagaView) -> str:
    rows = "".join(
        f'<tr data-step="{escape(s.name)}"><td><code>{escape(s.name)}</code></td>'
        f'<td>{badge(s.status)}</td><td>{s.attempts}</td><td class="nowrap">'
        f"{took(s.duration_ms)}</td><td>{_flower(view, view.task_ids.get(s.name))}</td>"
        f'<td class="error">{escape(s.error or "")}</td>'
        f"<td><code>{escape(shorten(compact_json(s.result), 80))}</code></td></tr>"
        for s in view.result.steps
    )
    return (
        '<table class="steps"><thead><tr><th>step</th><th>status</th><th>attempts</th>'
        "<th>took</th><th>task</th><th>error</th><th>result</th></tr></thead>"
        f"<tbody>{rows}</tbody></table>"
    )


def _timeline(view: SagaView) -> str:
    if not view.events:
        return '<p class="empty">No history recorded for this saga.</p>'
    start = view.result.created_at
    items = []
    for e in view.events:
        what = [f'<span class="kind">{escape(e.kind)}</span>']
        if e.step:
            what.append(f"<code>{escape(e.step)}</code>")
        if e.status:
            what.append(badge(e.status))
        if e.attempt:
            what.append(f'<span class="muted">attempt {e.attempt}</span>')
        detail = []
        if e.worker:
            detail.append(f"on {escape(e.worker)}")
        if e.task_id:
            detail.append(f"task {_flower(view, e.task_id)}")
        if e.duration_ms is not None:
            detail.append(took(e.duration_ms))
        if e.actor:
            detail.append(f"by <b>{escape(e.actor)}</b>")
        if e.reason:
            detail.append(f"“{escape(e.reason)}”")
        error = f'<div class="error">{escape(e.error)}</div>' if e.error else ""
        items.append(
            f'<li class="event kind-{escape(e.kind)}" data-kind="{escape(e.kind)}" '
            f'data-status="{escape(e.status or "")}" data-step="{escape(e.step or "")}">'
            f'<time title="{when(e.at)}">+{_offset(e.at - start)}</time>'
            f'<div>{" ".join(what)}<div class="muted">{" · ".join(detail)}</div>{error}</div></li>'
        )
    return f'<ol class="timeline">{"".join(items)}</ol>'


def _offset(seconds: float) -> str:
    if seconds < 10:
        return f"{max(seconds, 0) * 1000:.0f} ms"
    return f"{seconds:.1f} s" if seconds < 600 else time.strftime("%H:%M:%S", time.gmtime(seconds))
