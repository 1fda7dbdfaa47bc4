"""`sagaq demo`: two orders on the embedded default. One completes; one fails at payment and
is compensated. Each step and compensation is printed as the SQL rows change."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from rich.console import Console
from rich.table import Table

from sagaq import SagaQ, SagaResult, SagaStatus
from sagaq.embedded import embedded_app, in_process_worker
from sagaq.observability import EventType, SagaEvent
from tasks import EXAMPLE_SAGAS

MARKS = {
    EventType.STEP_STARTED: "[yellow]▶ started[/]",
    EventType.STEP_COMPLETED: "[green]✔ completed[/]",
    EventType.STEP_RETRYING: "[yellow]⟳ retrying[/]",
    EventType.STEP_FAILED: "[red]✘ failed[/]",
    EventType.COMPENSATION_STARTED: "[magenta]↺ compensating[/]",
    EventType.COMPENSATION_COMPLETED: "[magenta]↺ compensated[/]",
    EventType.COMPENSATION_FAILED: "[red]✘ compensation failed[/]",
}


def run_demo(console: Console | None = None, store_url: str | None = None) -> int:
    console = console or Console()
    with tempfile.TemporaryDirectory(prefix="sagaq-demo-") as tmp:
        url = store_url or f"sqlite:///{Path(tmp) / 'demo.db'}"
        app = embedded_app("sagaq-demo")
        engine = SagaQ(app, store=url)
        engine.register(*EXAMPLE_SAGAS)
        # The worker runs in this process, so its lifecycle events reach us as they happen.
        engine.events.subscribe(lambda event: _print_event(console, event))
        console.print(
            f"[bold]sagaq demo[/]: SQLite store, in-memory broker, in-process worker ({url})"
        )
        with in_process_worker(app, engine.queues()):
            # The injected failure is expected: keep Celery's traceback for it off the screen.
            logging.getLogger("celery.app.trace").setLevel(logging.CRITICAL)
            results = [
                _run_one(console, engine, "order", {"order_id": "o-1001"}),
                _run_one(
                    console, engine, "order", {"order_id": "o-1002", "fail_at": "charge_payment"}
                ),
            ]
        console.print(_summary(results))
        engine.store.dispose()
    expected = [SagaStatus.COMPLETED, SagaStatus.COMPENSATED]
    return 0 if [r.status for r in results] == expected else 1


def _run_one(console: Console, engine: SagaQ, saga: str, data: dict[str, str]) -> SagaResult:
    console.print(f"\n[bold]{saga}[/] {data}")
    result = engine.start(saga, data).wait(timeout=30)
    failed = f" (failed at {result.failed_step})" if result.failed_step else ""
    console.print(f"  => saga {result.id[:8]} [bold]{result.status}[/]{failed}")
    return result


def _print_event(console: Console, event: SagaEvent) -> None:
    if event.type in MARKS:
        error = f"  [dim]{event.error}[/]" if event.error else ""
        console.print(f"  {event.step or '':<18} {MARKS[event.type]}{error}")


def _summary(results: list[SagaResult]) -> Table:
    table = Table(title="sagas", show_lines=False)
    for column in ("saga", "id", "status", "failed step", "compensated (in order)", "ms"):
        table.add_column(column)
    for r in results:
        colour = "green" if r.status == SagaStatus.COMPLETED else "magenta"
        table.add_row(
            r.saga,
            r.id[:8],
            f"[{colour}]{r.status}[/]",
            r.failed_step or "",
            ", ".join(r.compensated_steps),
            f"{r.duration_ms:.0f}" if r.duration_ms is not None else "",
        )
    return table
