"""`sagaq demo` and `make demo`: two orders on the embedded default (no services). One
completes; one fails at shipping and is compensated. Each step and compensation is printed as
it happens. The saga ships inside the package so the demo works wherever sagaq is installed."""

from __future__ import annotations

import logging
import tempfile
import threading
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field
from rich.console import Console
from rich.table import Table

from sagaq.client import SagaQ, SagaResult
from sagaq.definition import Saga, StepContext
from sagaq.embedded import embedded_app, in_process_worker
from sagaq.errors import NonRetryableError
from sagaq.observability import EventType, SagaEvent
from sagaq.status import SagaStatus


class DemoOrder(BaseModel):
    order_id: str = Field(min_length=1)
    amount_cents: int = Field(default=1999, ge=0)
    fail_at: str | None = None  # a step name: that step fails for good


demo_order = Saga("order", input=DemoOrder)


def _fail_if_asked(ctx: StepContext) -> None:
    if ctx.input.fail_at == ctx.step:
        raise NonRetryableError(f"{ctx.step} failed (injected by fail_at)")


@demo_order.step
def reserve(ctx: StepContext) -> dict[str, Any]:
    _fail_if_asked(ctx)
    return {"reservation_id": f"res-{ctx.idempotency_key}"}


@reserve.compensate
def release(ctx: StepContext, result: dict[str, Any]) -> None:
    """Nothing to call in a demo: the printed event is the point."""


@demo_order.step(depends_on=[reserve])
def charge(ctx: StepContext) -> dict[str, Any]:
    _fail_if_asked(ctx)
    return {"charge_id": f"ch-{ctx.idempotency_key}", "amount_cents": ctx.input.amount_cents}


@charge.compensate
def refund(ctx: StepContext, result: dict[str, Any]) -> None:
    """Nothing to call in a demo: the printed event is the point."""


@demo_order.step(depends_on=[charge])
def ship(ctx: StepContext) -> dict[str, Any]:
    _fail_if_asked(ctx)
    return {"tracking": f"trk-{ctx.input.order_id}"}


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
    """0 when the first order COMPLETED and the second was COMPENSATED."""
    console = console or Console()
    with tempfile.TemporaryDirectory(prefix="sagaq-demo-") as tmp:
        url = store_url or f"sqlite:///{Path(tmp) / 'demo.db'}"
        app = embedded_app("sagaq-demo")
        engine = SagaQ(app, store=url)
        engine.register(demo_order)
        # The worker runs in this process, so its lifecycle events reach us as they happen.
        engine.events.subscribe(lambda event: _print_event(console, event))
        engine.events.subscribe(lambda event: _note_finish(event))
        console.print("[bold]sagaq demo[/]: SQLite store, in-memory broker, in-process worker")
        with in_process_worker(app, engine.queues()):
            # The injected failure is expected: keep Celery's traceback for it off the screen.
            logging.getLogger("celery.app.trace").setLevel(logging.CRITICAL)
            results = [
                _run_one(console, engine, {"order_id": "o-1001"}),
                _run_one(console, engine, {"order_id": "o-1002", "fail_at": "ship"}),
            ]
        console.print(_summary(results))
        engine.store.dispose()
    expected = [SagaStatus.COMPLETED, SagaStatus.COMPENSATED]
    return 0 if [r.status for r in results] == expected else 1


def _run_one(console: Console, engine: SagaQ, data: dict[str, str]) -> SagaResult:
    console.print(f"\n[bold]order[/] {data}")
    handle = engine.start("order", data)
    result = handle.wait(timeout=30)
    # The store says it finished; let the worker's last events reach the screen first.
    _finished.setdefault(handle.id, threading.Event()).wait(2.0)
    failed = f" (failed at {result.failed_step})" if result.failed_step else ""
    # The full id: it is what `sagaq status` takes.
    console.print(f"  => saga {result.id} [bold]{result.status}[/]{failed}", soft_wrap=True)
    return result


_finished: dict[str, threading.Event] = {}
_FINAL = (EventType.SAGA_COMPLETED, EventType.SAGA_COMPENSATED, EventType.SAGA_FAILED)


def _note_finish(event: SagaEvent) -> None:
    if event.type in _FINAL:
        _finished.setdefault(event.saga_id, threading.Event()).set()


def _print_event(console: Console, event: SagaEvent) -> None:
    if event.type in MARKS:
        error = f"  [dim]{event.error}[/]" if event.error else ""
        console.print(f"  {event.step or '':<18} {MARKS[event.type]}{error}")


def _summary(results: list[SagaResult]) -> Table:
    table = Table(title="sagas", show_lines=False)
    # Ids and statuses are never cut (`sagaq status <id>` takes the whole id); the list of
    # compensated steps wraps instead on a narrow terminal.
    table.add_column("id", no_wrap=True, min_width=36)
    table.add_column("status", no_wrap=True, min_width=11)
    table.add_column("failed at", no_wrap=True)
    table.add_column("compensated", overflow="fold")
    for r in results:
        colour = "green" if r.status == SagaStatus.COMPLETED else "magenta"
        table.add_row(
            r.id,
            f"[{colour}]{r.status}[/]",
            r.failed_step or "",
            "\n".join(r.compensated_steps),  # in the order they were undone
        )
    return table
