"""What the `sagaq` command shows: rich tables of sagas and steps, and parsing of --since."""

from __future__ import annotations

import json
import re
from datetime import datetime
from typing import Any

from rich import box
from rich.console import Group, RenderableType
from rich.markup import escape
from rich.table import Table

from sagaq.client import SagaResult, StepResult
from sagaq.status import StepStatus

STYLES = {
    "PENDING": "dim",
    "RUNNING": "blue",
    "COMPLETED": "green",
    "COMPENSATING": "yellow",
    "COMPENSATED": "magenta",
    "FAILED": "bold red",
    "SKIPPED": "dim",
    "COMPENSATION_FAILED": "bold red",
}
UNDO_STATUSES = (
    StepStatus.COMPENSATING,
    StepStatus.COMPENSATED,
    StepStatus.COMPENSATION_FAILED,
)
_AGO = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def styled(status: str) -> str:
    return f"[{STYLES.get(status, '')}]{status}[/]"


def duration(ms: float | None) -> str:
    if ms is None:
        return ""
    return f"{ms:.0f} ms" if ms < 1000 else f"{ms / 1000:.2f} s"


def timestamp(epoch: float, *, short: bool = False) -> str:
    """Local time; with `short`, today's times without the date."""
    moment = datetime.fromtimestamp(epoch)
    if short and moment.date() == datetime.now().date():
        return moment.strftime("%H:%M:%S")
    return moment.isoformat(sep=" ", timespec="seconds")


def saga_view(result: SagaResult) -> RenderableType:
    """Header (status, failed step, error, duration) above one row per step."""
    head = Table.grid(padding=(0, 2))
    head.add_row("saga", f"[bold]{escape(result.saga)}[/] {result.id}")
    head.add_row("status", styled(result.status))
    head.add_row("started", timestamp(result.created_at))
    if result.duration_ms is not None:
        head.add_row("duration", duration(result.duration_ms))
    if result.failed_step:
        head.add_row("failed step", escape(result.failed_step))
    if result.error:
        head.add_row("error", f"[red]{escape(result.error)}[/]")
    steps = Table(
        "step", "status", "attempts", "duration", "error", "compensation", box=box.SIMPLE_HEAD
    )
    for i in (0, 1, 3, 5):  # never cut a step name or a status; errors fold instead
        steps.columns[i].no_wrap = True
    steps.columns[4].overflow = "fold"
    for step in result.steps:
        steps.add_row(*_step_row(step))
    return Group(head, steps)


def _step_row(step: StepResult) -> tuple[str, ...]:
    # The status is the step's own, as in `--json` and the API; how its undo went (attempts,
    # error) is in the compensation and error columns.
    undo = ""
    if step.status in UNDO_STATUSES or step.compensation_attempts:
        attempts = step.compensation_attempts
        undo = f"{attempts} attempt{'s' if attempts != 1 else ''}" if attempts else "queued"
    errors = [f"[red]{escape(step.error)}[/]"] if step.error else []
    if step.compensation_error:
        errors.append(f"[red]undo: {escape(step.compensation_error)}[/]")
    return (
        escape(step.name),
        styled(step.status),
        str(step.attempts),
        duration(step.duration_ms),
        "\n".join(errors),
        undo,
    )


def sagas_table(results: list[SagaResult]) -> Table:
    """One line per saga; `sagaq status <id>` has the details."""
    table = Table("id", "saga", "status", "started", "duration", "failed step", box=box.SIMPLE_HEAD)
    for i in (0, 1, 2, 3):  # id, saga, status, started: cut, they could not be read or copied
        table.columns[i].no_wrap = True
    for r in results:
        table.add_row(
            r.id,
            escape(r.saga),
            styled(r.status),
            timestamp(r.created_at, short=True),
            duration(r.duration_ms),
            escape(r.failed_step or ""),
        )
    if not results:
        table.caption = "no sagas match"
    return table


def since_timestamp(text: str, *, now: float) -> float:
    """'30s', '10m', '2h', '1d' ago, or an ISO date/time (local time unless it has an offset)."""
    if match := _AGO.match(text.strip()):
        return now - float(match[1]) * _SECONDS[match[2]]
    try:
        return datetime.fromisoformat(text.strip()).timestamp()
    except ValueError:
        raise ValueError(
            f"{text!r} is neither a duration like 10m, 2h, 1d nor an ISO date like 2026-01-31"
        ) from None


def to_json(data: Any) -> str:
    return json.dumps(data, indent=2, default=str)
