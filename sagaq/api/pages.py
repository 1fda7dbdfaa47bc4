"""The dashboard's HTML: the page shell, status badges, the pieces of a saga's page that
do not change with history (facts, compensations), the login and not-found pages.
Every value from the store is escaped; `root` is the app's mount path for links."""

from __future__ import annotations

import json
import time
from functools import cache
from html import escape
from importlib.resources import files
from typing import Any

from sagaq.client import SagaResult
from sagaq.status import StepStatus

_UNDO_STATES = (StepStatus.COMPENSATING, StepStatus.COMPENSATED, StepStatus.COMPENSATION_FAILED)


@cache
def stylesheet() -> str:
    return files("sagaq.api").joinpath("static/dashboard.css").read_text(encoding="utf-8")


@cache
def script() -> str:
    return files("sagaq.api").joinpath("static/dashboard.js").read_text(encoding="utf-8")


def page(title: str, body: str, root: str, *, live: bool = False) -> str:
    """A whole page; with `live`, dashboard.js refreshes its `data-live` region in place."""
    code = f"<script>{script()}</script>" if live else ""
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)} · sagaq</title><style>{stylesheet()}</style></head>"
        f'<body><header><a class="brand" href="{root}/dashboard">sagaq</a>'
        f'<a href="{root}/dashboard">sagas</a><a href="{root}/docs">API</a>'
        f'<span class="note" id="updated"></span></header><main>{body}</main>{code}</body></html>'
    )


def badge(status: str) -> str:
    return f'<span class="badge status-{status.lower().replace("_", "-")}">{status}</span>'


def facts_list(result: SagaResult) -> str:
    facts = {
        "started": when(result.created_at),
        "took": took(result.duration_ms) or "still running",
        "compensated, in order": escape(", ".join(result.compensated_steps)) or "—",
        "input": f"<pre>{escape(json.dumps(result.input, indent=2))}</pre>",
    }
    items = "".join(f"<dt>{key}</dt><dd>{value}</dd>" for key, value in facts.items())
    return f'<dl class="facts">{items}</dl>'


def compensations_table(result: SagaResult) -> str:
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


def when(at: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(at)) + " UTC"


def took(ms: float | None) -> str:
    if ms is None:
        return ""
    return f"{ms:.0f} ms" if ms < 10_000 else f"{ms / 1000:.1f} s"


def compact_json(value: Any) -> str:
    return "" if value is None else json.dumps(value, separators=(",", ":"))


def shorten(text: str, limit: int = 120) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
