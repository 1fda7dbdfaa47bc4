"""The `sagaq` command: start, inspect and operate sagas, run workers, migrate the store.

`status` and `list` read the database through SagaStore and never create a Celery app. Commands
that publish work or need saga definitions (start, cancel, retry, sweep, graph, worker) load the
engine named by --app (default: $SAGAQ_APP; sagaq.loader, shared with the API).
"""

from __future__ import annotations

import json
import os
import shlex
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, fields
from pathlib import Path
from typing import IO, Any

import click
from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.table import Table
from sqlalchemy import inspect
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from sagaq import loader
from sagaq.cli_history import history_view, page_view
from sagaq.cli_views import saga_view, since_timestamp, to_json
from sagaq.client import SagaQ, SagaResult
from sagaq.errors import SagaNotFoundError, SagaqError, SagaTimeoutError
from sagaq.graph import FORMATS, render
from sagaq.retention import BATCH, count_purgeable, finished_statuses, parse_age
from sagaq.retention import purge as purge_sagas
from sagaq.settings import Settings
from sagaq.status import SagaStatus
from sagaq.store import SagaStore
from sagaq.store.history import CAUSES, SagaFilter, SagaHistory

CLI_ACTOR = "cli"  # the actor of cancel and retry in a saga's history


class UserError(click.ClickException):
    """A mistake or a refusal the user can act on: one red line on stderr, exit code 1."""

    def show(self, file: IO[Any] | None = None) -> None:
        _console(stderr=True).print(f"[bold red]error:[/] {escape(self.format_message())}")


class _Commands(click.Group):
    """Turns sagaq's own errors and database errors into one line instead of a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except SagaqError as exc:
            raise UserError(str(exc)) from None
        except SQLAlchemyError as exc:
            reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
            raise UserError(f"database error: {reason}") from None


# Wide enough that no table row is ever folded when the output goes to a pipe or a file.
PIPED_WIDTH = 10_000


def _console(*, stderr: bool = False) -> Console:
    # Made per call: the console must follow the current stdout/stderr and $COLUMNS. Piped
    # output is read by programs (grep, awk): never wrapped at 80 columns unless $COLUMNS says.
    stream = sys.stderr if stderr else sys.stdout
    width = None if stream.isatty() or os.environ.get("COLUMNS") else PIPED_WIDTH
    return Console(stderr=stderr, highlight=False, soft_wrap=stderr, width=width)


def _warn(message: str) -> None:
    _console(stderr=True).print(f"[yellow]warning:[/] {escape(message)}")


app_option = click.option(
    "--app",
    "app_spec",
    envvar="SAGAQ_APP",
    default=None,
    metavar="MODULE:ATTR",
    help="The SagaQ engine to use (env SAGAQ_APP).",
)


def load_engine(spec: str | None) -> SagaQ:
    """The engine named by --app / SAGAQ_APP (sagaq.loader: one loader for CLI and API)."""
    return loader.load_engine(spec)


def _engine_method(engine: SagaQ, name: str) -> Callable[..., Any]:
    method: Callable[..., Any] | None = getattr(engine, name, None)
    if method is None:
        raise UserError(f"this sagaq version has no {name}")
    return method


def _warn_if_memory_broker(engine: SagaQ) -> None:
    if str(engine.app.conf.broker_url or "").startswith("memory://"):
        _warn(
            "the broker is memory:// (SAGAQ_BROKER_URL is not set): only a worker inside this "
            "process can see the messages"
        )


@contextmanager
def _reading_store() -> Iterator[SagaStore]:
    """The store named by SAGAQ_STORE_URL, as it is: nothing is created, not even a file."""
    url = Settings().store_url
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and not Path(parsed.database or "").is_file():
        raise UserError(f"no saga store at {url} (set SAGAQ_STORE_URL)")
    store = SagaStore(url, create_tables=False)
    try:
        with store.engine.connect() as conn:
            if not inspect(conn).has_table("saga"):
                raise UserError(
                    f"the store {store.safe_url} has no saga tables: run `sagaq db upgrade`"
                )
        yield store
    finally:
        store.dispose()


@click.group(cls=_Commands)
@click.version_option(package_name="sagaq")
def cli() -> None:
    """Sagas on Celery: start, inspect and operate them."""


@cli.command()
def demo() -> None:
    """Run two example orders on the embedded default (no services needed)."""
    from sagaq.demo import run_demo

    sys.exit(run_demo(_console()))


@cli.command()
@click.argument("saga")
@click.option(
    "--input", "raw_input", default="{}", help="A JSON object, or @FILE holding one (@- is stdin)."
)
@click.option("--idempotency-key", help="Starting twice with the same key starts one saga.")
@click.option("--wait/--no-wait", default=False, help="Watch the steps until the saga ends.")
@click.option("--timeout", type=float, default=60.0, show_default=True, help="Seconds to wait.")
@app_option
def start(
    saga: str,
    raw_input: str,
    idempotency_key: str | None,
    wait: bool,
    timeout: float,
    app_spec: str,
) -> None:
    """Start SAGA and print its id. With --wait, exit 0 only if it COMPLETED."""
    data = _parse_input(raw_input)
    engine = load_engine(app_spec)
    handle = engine.start(saga, data, idempotency_key=idempotency_key)
    click.echo(handle.id)
    _warn_if_memory_broker(engine)
    if not handle.created:
        _warn(f"a saga with idempotency key {idempotency_key!r} exists already: not started again")
    if wait:
        result = _watch(engine, handle.id, timeout)
        sys.exit(0 if result.status == SagaStatus.COMPLETED else 1)


def _parse_input(raw: str) -> Any:
    if raw.startswith("@"):
        try:
            raw = sys.stdin.read() if raw == "@-" else Path(raw[1:]).read_text()
        except OSError as exc:
            raise UserError(f"cannot read input file: {exc}") from None
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise UserError(f"invalid JSON input: {exc}") from None


def _watch(engine: SagaQ, saga_id: str, timeout: float) -> SagaResult:
    deadline = time.monotonic() + timeout
    result = engine.status(saga_id)
    console = _console()
    with Live(saga_view(result), console=console, refresh_per_second=8) as live:
        while not result.status.is_terminal:
            if time.monotonic() > deadline:
                raise SagaTimeoutError(
                    f"saga {saga_id} is still {result.status} after {timeout:g}s; it goes on "
                    f"running: see `sagaq status {saga_id}`"
                )
            time.sleep(0.1)
            result = engine.status(saga_id)
            live.update(saga_view(result))
    if not console.is_terminal:
        console.line()  # Live leaves its last frame without a newline when not on a terminal
    return result


@cli.command()
@click.argument("saga_id")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--history", is_flag=True, help="Also show what happened to it, step by step.")
def status(saga_id: str, as_json: bool, history: bool) -> None:
    """Show a saga and its steps, from the store (SAGAQ_STORE_URL)."""
    with _reading_store() as store:
        record = store.get(saga_id)
        events = SagaHistory(store).events(saga_id) if history else []
    if record is None:
        raise SagaNotFoundError(saga_id)
    result = SagaResult.from_record(record)
    if as_json:
        from sagaq.api.schemas import SagaOut  # the API's shape: one JSON for both

        shown = SagaOut.of(result).model_dump(mode="json")
        if history:
            shown["history"] = [asdict(e) for e in events]
        click.echo(to_json(shown))
    else:
        _console().print(saga_view(result))
        if history:
            _console().print(history_view(events, result.created_at))


@cli.command("list")
@click.option(
    "--status",
    "status_",
    type=click.Choice([s.value for s in SagaStatus], case_sensitive=False),
    help="Only sagas in this status.",
)
@click.option("--saga", help="Only sagas with this name.")
@click.option("--key", help="The saga with this idempotency key (your business id).")
@click.option("--id", "id_prefix", metavar="PREFIX", help="Sagas whose id starts with PREFIX.")
@click.option("--cause", type=click.Choice(CAUSES), help="Why compensation began.")
@click.option("--since", help="Only sagas started in the last 30s/10m/2h/1d, or since an ISO date.")
@click.option("--until", help="Only sagas started before this (same forms as --since).")
@click.option("--cursor", help="Continue after the previous page (printed under it).")
@click.option("--counts", is_flag=True, help="Also count the matches per status.")
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def list_(
    status_: str | None,
    saga: str | None,
    key: str | None,
    id_prefix: str | None,
    cause: str | None,
    since: str | None,
    until: str | None,
    cursor: str | None,
    counts: bool,
    limit: int,
    as_json: bool,
) -> None:
    """List sagas, newest first, a page at a time, from the store (SAGAQ_STORE_URL)."""
    where = SagaFilter(
        name=saga,
        status=SagaStatus(status_.upper()) if status_ else None,
        cause=cause,
        key=key,
        id_prefix=id_prefix,
        since=_moment(since, "--since"),
        until=_moment(until, "--until"),
    )
    with _reading_store() as store:
        history = SagaHistory(store)
        page = history.search(where, cursor=cursor, limit=limit)
        tally = history.count_by_status(where) if counts else None
    if as_json:
        from sagaq.api.history_models import SagaPageOut  # the API's shape: one JSON for both

        click.echo(SagaPageOut.of(page, tally).model_dump_json(indent=2))
    else:
        _console().print(page_view(page, tally))


def _moment(text: str | None, option: str) -> float | None:
    try:
        return since_timestamp(text, now=time.time()) if text else None
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint=option) from None


@cli.command()
@click.argument("saga_id")
@click.option("--reason", default="cancelled by operator", show_default=True)
@app_option
def cancel(saga_id: str, reason: str, app_spec: str) -> None:
    """Stop a saga and compensate the steps it completed."""
    engine = load_engine(app_spec)
    with _console(stderr=True).status(f"cancelling {saga_id}..."):
        result = _engine_method(engine, "cancel")(saga_id, reason=reason, actor=CLI_ACTOR)
    _console().print(saga_view(result))


@cli.command()
@click.argument("saga_id")
@click.option("--reason", help="Why: kept in the saga's history.")
@app_option
def retry(saga_id: str, reason: str | None, app_spec: str) -> None:
    """Resume a FAILED saga (a compensation that gave up, or steps after the pivot)."""
    engine = load_engine(app_spec)
    with _console(stderr=True).status(f"retrying {saga_id}..."):
        result = _engine_method(engine, "retry")(saga_id, actor=CLI_ACTOR, reason=reason)
    _console().print(saga_view(result))


@cli.command()
@click.option("--older-than", required=True, metavar="AGE", help="30d, 12h, 2w...")
@click.option(
    "--status",
    "statuses",
    multiple=True,
    type=click.Choice([s.value for s in SagaStatus if s.is_terminal], case_sensitive=False),
    help="Repeatable. Default: COMPLETED and COMPENSATED (FAILED only when named).",
)
@click.option("--batch", type=click.IntRange(min=1), default=BATCH, show_default=True)
@click.option("--dry-run", is_flag=True, help="Count what would go, delete nothing.")
def purge(older_than: str, statuses: tuple[str, ...], batch: int, dry_run: bool) -> None:
    """Delete finished sagas older than AGE, with their steps and history, in small batches.
    Unfinished sagas are never deleted."""
    age = parse_age(older_than)
    chosen = finished_statuses(statuses or None)
    with _reading_store() as store:
        if dry_run:
            count = count_purgeable(store, older_than=age, statuses=chosen)
            _console().print(f"{count} sagas ({', '.join(chosen)}) would be deleted")
            return
        report = purge_sagas(store, older_than=age, statuses=chosen, batch=batch)
    _console().print(
        f"[green]✔[/] deleted {report.sagas} sagas ({', '.join(chosen)}) older than "
        f"{escape(older_than)} in {report.batches} batches, {report.seconds:g} s"
    )


@cli.command()
@app_option
def sweep(app_spec: str) -> None:
    """One recovery pass: re-publish lost work, resume stalled sagas, enforce deadlines."""
    engine = load_engine(app_spec)
    with _console(stderr=True).status("sweeping unfinished sagas..."):
        report = _engine_method(engine, "sweep")()
    table = Table("what", "count", title="sweep")
    for field in fields(report):
        table.add_row(field.name.replace("_", " "), str(getattr(report, field.name)))
    _console().print(table)


@cli.command()
@click.argument("saga")
@click.option(
    "--input", "raw_input", default="{}", help="A JSON object, or @FILE holding one (@- is stdin)."
)
@click.option("--timeout", type=float, default=30.0, show_default=True, help="Seconds per run.")
@app_option
def verify(saga: str, raw_input: str, timeout: float, app_spec: str) -> None:
    """Run SAGA on the embedded default with a failure injected at every step in turn, and
    check that exactly the completed steps are compensated, in reverse order."""
    from sagaq.verify import verify_saga

    data = _parse_input(raw_input)
    definition = load_engine(app_spec).saga(saga)
    with _console(stderr=True).status(f"verifying {saga}: one run per step..."):
        report = verify_saga(definition, data, timeout=timeout)
    _console().print(report.render())
    sys.exit(0 if report.ok else 1)


@cli.command()
@click.argument("saga")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="ascii", show_default=True)
@click.option("--compensation", is_flag=True, help="Draw the compensation (undo) plan instead.")
@click.option("--run", "saga_id", metavar="SAGA_ID", help="Mark each step with its status in it.")
@app_option
def graph(saga: str, fmt: str, compensation: bool, saga_id: str | None, app_spec: str) -> None:
    """Draw the step graph of SAGA (ascii, mermaid or dot)."""
    engine = load_engine(app_spec)
    definition = engine.saga(saga)
    statuses = None
    if saga_id is not None:
        run = engine.status(saga_id)
        if run.saga != saga:
            raise UserError(f"saga {saga_id} is a {run.saga!r} saga, not {saga!r}")
        statuses = {s.name: s.status.value for s in run.steps}
    click.echo(render(definition, fmt, compensation=compensation, statuses=statuses), nl=False)


@cli.command(context_settings={"ignore_unknown_options": True})
@click.option("-Q", "--queues", help="Comma-separated. Default: every queue the sagas use.")
@click.option("-c", "--concurrency", type=click.IntRange(min=1), help="Worker processes/threads.")
@click.option("--pool", type=click.Choice(["prefork", "threads", "solo", "eventlet", "gevent"]))
@click.option("-l", "--loglevel", default="INFO", show_default=True)
@click.option("--dry-run", is_flag=True, help="Print the celery command instead of running it.")
@app_option
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
def worker(
    queues: str | None,
    concurrency: int | None,
    pool: str | None,
    loglevel: str,
    dry_run: bool,
    app_spec: str,
    celery_args: tuple[str, ...],
) -> None:
    """Run `celery worker` for the engine's app; extra arguments go to celery."""
    engine = load_engine(app_spec)
    _warn_if_memory_broker(engine)
    argv = [
        *_celery_program(),
        *("-A", _celery_app_spec(app_spec, engine), "worker"),
        *("-Q", queues or ",".join(engine.queues()), "--loglevel", loglevel),
        *(("--concurrency", str(concurrency)) if concurrency else ()),
        *(("--pool", pool) if pool else ()),
        *celery_args,
    ]
    if dry_run:
        click.echo(shlex.join(argv))
        return
    sys.stdout.flush()
    os.execv(argv[0], argv)


def _celery_program() -> list[str]:
    """The celery of this environment: its console script, else `python -m celery`."""
    script = Path(sys.executable).parent / "celery"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "celery"]


def _celery_app_spec(app_spec: str | None, engine: SagaQ) -> str:
    module_name = (app_spec or Settings().app or "").partition(":")[0]
    found = (k for k, v in vars(sys.modules[module_name]).items() if v is engine.app)
    name = next(found, None)
    return f"{module_name}:{name}" if name else module_name


@cli.group()
def db() -> None:
    """The store's schema (alembic migrations shipped with sagaq)."""


@db.command("upgrade")
@click.option("--url", help="Store URL. Default: $SAGAQ_STORE_URL.")
def db_upgrade(url: str | None) -> None:
    """Create or migrate the tables to this version's schema."""
    from sagaq.store.migrate import upgrade

    target = url or Settings().store_url
    shown = make_url(target).render_as_string(hide_password=True)
    with _console(stderr=True).status(f"migrating {shown}..."):
        done = upgrade(target)
    if done.stamped:
        message = f"existing tables adopted as revision {done.after}"
    elif done.before == done.after:
        message = f"already at revision {done.after}, nothing to do"
    else:
        message = f"upgraded from {done.before or 'an empty database'} to revision {done.after}"
    _console().print(f"[green]✔[/] {escape(shown)}: {message}", soft_wrap=True)


def main() -> None:
    cli(prog_name="sagaq")
