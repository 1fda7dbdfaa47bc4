"""What `sagaq list`, `sagaq status --history` and `sagaq purge` show: sagas found by a search,
the counts per status, and a saga's timeline."""

from __future__ import annotations

from collections.abc import Sequence

from rich import box
from rich.console import Group, RenderableType
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from sagaq.cli_views import STYLES, duration, styled, timestamp
from sagaq.status import SagaStatus
from sagaq.store.history import EventRecord, SagaPage, StatusCounts


def page_view(page: SagaPage, counts: StatusCounts | None) -> RenderableType:
    """One line per saga (with its key and cause), the counts, and how to get the next page."""
    table = Table(
        "id", "saga", "key", "status", "cause", "started", "duration", "failed step",
        box=box.SIMPLE_HEAD,
    )  # fmt: skip
    for i in (0, 1, 3, 4, 5):  # never cut an id, a name, a status or a time
        table.columns[i].no_wrap = True
    table.columns[2].overflow = "fold"
    for s in page.sagas:
        table.add_row(
            s.id,
            escape(s.name),
            escape(s.idempotency_key or ""),
            styled(s.status),
            escape(s.cause or ""),
            timestamp(s.created_at, short=True),
            duration(s.duration_ms),
            escape(s.failed_step or ""),
        )
    if not page.sagas:
        table.caption = "no sagas match"
    parts: list[RenderableType] = [table]
    if counts is not None:
        parts.append(Text("  ".join(f"{s}: {counts.shown(s)}" for s in SagaStatus)))
    if page.next_cursor:
        parts.append(Text(f"more: --cursor {page.next_cursor}", style="dim"))
    return Group(*parts)


def _status(status: str | None) -> str:
    """Saga and step statuses in their colours; an operator's CANCEL or RETRY in bold."""
    if status is None:
        return ""
    return styled(status) if status in STYLES else f"[bold]{escape(status)}[/]"


def history_view(events: Sequence[EventRecord], started: float) -> RenderableType:
    """The saga's timeline, oldest first: time since the saga started, what, where, why."""
    table = Table(
        "+time", "kind", "step", "status", "attempt", "worker / task", "took", "by / why",
        "error", title="history", title_justify="left", box=box.SIMPLE_HEAD,
    )  # fmt: skip
    for i in (0, 1, 2, 3):
        table.columns[i].no_wrap = True
    table.columns[8].overflow = "fold"
    for e in events:
        where = " ".join(x for x in (e.worker, e.task_id and e.task_id[:8]) if x)
        why = " ".join(x for x in (e.actor and f"by {e.actor}", e.reason and f"“{e.reason}”") if x)
        table.add_row(
            duration(max(e.at - started, 0.0) * 1000),
            e.kind,
            escape(e.step or ""),
            _status(e.status),
            str(e.attempt or ""),
            escape(where),
            duration(e.duration_ms),
            escape(why),
            f"[red]{escape(e.error)}[/]" if e.error else "",
        )
    if not events:
        table.caption = "no history recorded"
    return table
