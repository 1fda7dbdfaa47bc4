"""The dashboard's HTML: plain pages with a little CSS and an inline SVG step graph.
Every value from the store is escaped; `root` is the app's mount path for links."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from functools import cache
from html import escape
from importlib.resources import files
from typing import Any
from urllib.parse import urlencode

from sagaq.api.step_graph import render_step_graph
from sagaq.client import SagaResult, StepResult
from sagaq.status import SagaStatus, StepStatus

REFRESH_SECONDS = 5
_UNDO_STATES = (StepStatus.COMPENSATING, StepStatus.COMPENSATED, StepStatus.COMPENSATION_FAILED)


@cache
def stylesheet() -> str:
    return files("sagaq.api").joinpath("static/dashboard.css").read_text(encoding="utf-8")


def page(title: str, body: str, root: str, *, refresh: bool = False) -> str:
    meta = f'<meta http-equiv="refresh" content="{REFRESH_SECONDS}">' if refresh else ""
    note = f"refreshes every {REFRESH_SECONDS} s" if refresh else ""
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"{meta}<title>{escape(title)} · sagaq</title><style>{stylesheet()}</style></head>"
        f'<body><header><a class="brand" href="{root}/dashboard">sagaq</a>'
        f'<a href="{root}/dashboard">sagas</a><a href="{root}/docs">API</a>'
        f'<span class="note">{note}</span></header><main>{body}</main></body></html>'
    )


def badge(status: str) -> str:
    return f'<span class="badge status-{status.lower().replace("_", "-")}">{status}</span>'


def saga_list_page(
    results: Sequence[SagaResult], root: str, status: SagaStatus | None, saga: str | None
) -> str:
    def link(choice: SagaStatus | None) -> str:
        query = urlencode({k: v for k, v in (("status", choice), ("saga", saga)) if v})
        active = ' class="active"' if choice == status else ""
        label = choice or "all"
        return f'<a{active} href="{root}/dashboard{"?" + query if query else ""}">{label}</a>'

    filters = "".join([link(None), *(link(s) for s in SagaStatus)])
    heading = f"Sagas{f' · {escape(saga)}' if saga else ''}"
    if not results:
        table = '<p class="empty">No sagas match.</p>'
    else:
        rows = "".join(_list_row(r, root) for r in results)
        table = (
            "<table><thead><tr><th>id</th><th>saga</th><th>status</th><th>failed step</th>"
            f"<th>error</th><th>started</th><th>took</th></tr></thead><tbody>{rows}</tbody></table>"
        )
    body = f'<h1>{heading}</h1><nav class="filters">{filters}</nav>{table}'
    return page("sagas", body, root, refresh=True)


def _list_row(r: SagaResult, root: str) -> str:
    return (
        f'<tr class="saga" data-id="{escape(r.id)}" data-status="{r.status}">'
        f'<td><a href="{root}/dashboard/sagas/{escape(r.id)}">'
        f"<code>{escape(r.id[:8])}</code></a></td>"
        f'<td><a href="{root}/dashboard?{urlencode({"saga": r.saga})}">{escape(r.saga)}</a></td>'
        f"<td>{badge(r.status)}</td><td>{escape(r.failed_step or '')}</td>"
        f'<td class="error">{escape(_short(r.error or ""))}</td>'
        f"<td>{_when(r.created_at)}</td><td>{_took(r.duration_ms)}</td></tr>"
    )


def saga_page(result: SagaResult, dependencies: Mapping[str, Sequence[str]], root: str) -> str:
    graph = render_step_graph(dependencies, result.steps)
    legend = "".join(badge(s) for s in StepStatus)
    body = (
        f"<h1>{escape(result.saga)} <code>{escape(result.id)}</code> {badge(result.status)}</h1>"
        f"{_cause(result)}{_facts(result)}"
        f'<h2>Steps</h2><div class="graph">{graph}</div><div class="legend">{legend}</div>'
        f"{_steps_table(result.steps)}{_compensations(result)}"
    )
    return page(f"{result.saga} {result.id[:8]}", body, root, refresh=not result.status.is_terminal)


def _cause(result: SagaResult) -> str:
    """What made the saga compensate (or fail): the saga's error and its failed step's."""
    if not result.error and not result.failed_step:
        return ""
    lines = []
    if result.failed_step:
        failed = next((s for s in result.steps if s.name == result.failed_step), None)
        detail = f": {failed.error}" if failed is not None and failed.error else ""
        lines.append(f"step <code>{escape(result.failed_step)}</code> failed{escape(detail)}")
    if result.error and (not lines or result.error not in lines[0]):
        lines.append(escape(result.error))
    title = "Compensation triggered by" if result.compensated_steps or _undoing(result) else "Error"
    return f'<div class="callout error"><strong>{title}</strong>{"<br>".join(lines)}</div>'


def _undoing(result: SagaResult) -> bool:
    return any(s.status in _UNDO_STATES for s in result.steps)


def _facts(result: SagaResult) -> str:
    facts = {
        "started": _when(result.created_at),
        "took": _took(result.duration_ms) or "still running",
        "compensated, in order": escape(", ".join(result.compensated_steps)) or "—",
        "input": f"<pre>{escape(json.dumps(result.input, indent=2))}</pre>",
    }
    items = "".join(f"<dt>{key}</dt><dd>{value}</dd>" for key, value in facts.items())
    return f'<dl class="facts">{items}</dl>'


def _steps_table(steps: Sequence[StepResult]) -> str:
    rows = "".join(
        f'<tr data-step="{escape(s.name)}"><td><code>{escape(s.name)}</code></td>'
        f"<td>{badge(s.status)}</td><td>{s.attempts}</td><td>{_took(s.duration_ms)}</td>"
        f'<td class="error">{escape(s.error or "")}</td>'
        f"<td><code>{escape(_short(_json(s.result)))}</code></td></tr>"
        for s in steps
    )
    return (
        "<table><thead><tr><th>step</th><th>status</th><th>attempts</th><th>took</th>"
        f"<th>error</th><th>result</th></tr></thead><tbody>{rows}</tbody></table>"
    )


def _compensations(result: SagaResult) -> str:
    undone = [s for s in result.steps if s.status in _UNDO_STATES]
    if not undone:
        return ""
    order = {name: i for i, name in enumerate(result.compensated_steps)}
    undone.sort(key=lambda s: order.get(s.name, len(order)))
    rows = "".join(
        f'<tr class="compensation" data-step="{escape(s.name)}" data-status="{s.status}">'
        f"<td><code>{escape(s.name)}</code></td><td>{badge(s.status)}</td>"
        f'<td>{s.compensation_attempts}</td><td class="error">'
        f"{escape(s.compensation_error or '')}</td></tr>"
        for s in undone
    )
    return (
        "<h2>Compensations</h2><table><thead><tr><th>step</th><th>outcome</th>"
        f"<th>attempts</th><th>error</th></tr></thead><tbody>{rows}</tbody></table>"
    )


def login_page(root: str, path: str, *, wrong: bool = False) -> str:
    # POST: the token must never be part of a URL (access logs, history, Referer).
    retry = '<p class="error">That token was not accepted.</p>' if wrong else ""
    body = (
        "<h1>Token required</h1><p>This sagaq API needs its token (SAGAQ_API_TOKEN). It is kept "
        f"in a cookie for this browser once accepted.</p>{retry}"
        f'<form class="login" method="post" action="{root}/dashboard/login">'
        f'<input type="hidden" name="next" value="{escape(path)}">'
        '<input type="password" name="token" placeholder="API token" autofocus>'
        "<button>Open</button></form>"
    )
    return page("token required", body, root)


def not_found_page(root: str, message: str) -> str:
    body = f'<h1>Not found</h1><p>{escape(message)}</p><p><a href="{root}/dashboard">All sagas</a>'
    return page("not found", body, root)


def _when(at: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(at)) + " UTC"


def _took(ms: float | None) -> str:
    if ms is None:
        return ""
    return f"{ms:.0f} ms" if ms < 10_000 else f"{ms / 1000:.1f} s"


def _json(value: Any) -> str:
    return "" if value is None else json.dumps(value, separators=(",", ":"))


def _short(text: str, limit: int = 120) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
