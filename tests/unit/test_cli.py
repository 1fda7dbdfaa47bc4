"""The `sagaq` command as its user meets it: output, exit codes, one-line errors. No services:
SQLite stores, and an engine on the in-memory broker with no worker (sagas stay where they are)."""

from __future__ import annotations

import importlib
import json
import re
import shutil
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
from click.testing import CliRunner, Result
from pydantic import BaseModel, Field

from sagaq import Saga, SagaQ
from sagaq.cli import cli
from sagaq.embedded import embedded_app
from sagaq.store import SagaStore
from sagaq.store.migrate import head
from tests import drive

ENGINE: SagaQ | None = None  # the engine `--app tests.unit.test_cli:ENGINE` loads
APP = "tests.unit.test_cli:ENGINE"


class TicketIn(BaseModel):
    ticket_id: str = Field(min_length=1)


def build_engine(store_url: str) -> SagaQ:
    """hold -> pay -> issue, on a queue no worker consumes."""
    saga = Saga("ticket", input=TicketIn, queue=f"cli-test-{uuid.uuid4().hex[:8]}")
    hold = saga.step(name="hold")(lambda ctx: {"held": True})
    hold.compensate(lambda ctx, result: None)
    pay = saga.step(name="pay", depends_on=[hold])(lambda ctx: {"paid": True})
    saga.step(name="issue", depends_on=[pay])(lambda ctx: None)
    engine = SagaQ(embedded_app("cli-tests"), store=store_url)
    engine.register(saga)
    return engine


@pytest.fixture
def store_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    url = f"sqlite:///{tmp_path / 'sagaq.db'}"
    monkeypatch.setenv("SAGAQ_STORE_URL", url)
    return url


@pytest.fixture
def engine(store_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[SagaQ]:
    built = build_engine(store_url)
    built.store.create_tables()  # as a worker would on its first task
    monkeypatch.setattr(sys.modules[__name__], "ENGINE", built)
    yield built
    built.store.dispose()


@pytest.fixture
def example_app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """workers.main, named by SAGAQ_APP, importing with its store in a temporary file."""
    monkeypatch.setenv("SAGAQ_STORE_URL", f"sqlite:///{tmp_path / 'workers.db'}")
    monkeypatch.setenv("SAGAQ_APP", "workers.main:engine")
    return importlib.import_module("workers.main")


def sagaq(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), env={"COLUMNS": "200"})


def row(output: str, first_cell: str) -> str:
    """The table line whose first cell is `first_cell` (boxed or borderless table)."""
    for line in output.splitlines():
        cells = line.split("│")[1:2] if "│" in line else line.split()[:1]
        if cells and cells[0].strip() == first_cell:
            return line
    raise AssertionError(f"no row {first_cell!r} in:\n{output}")


def header(output: str, name: str) -> str:
    """The value of a `name  value` line of the saga header."""
    found = re.search(rf"^{name}\s{{2,}}(.*?)\s*$", output, re.MULTILINE)
    assert found, f"no {name!r} in:\n{output}"
    return found[1]


def assert_one_line_error(result: Result, text: str) -> None:
    assert result.exit_code == 1, result.output
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert result.stderr.startswith("error: ") and text in result.stderr, result.stderr
    assert "Traceback" not in result.output


def failed_ticket(store: SagaStore) -> str:
    """A ticket saga whose payment failed and whose `hold` could not be undone."""
    saga_id, _ = store.create_saga(
        str(uuid.uuid4()),
        "ticket",
        {"ticket_id": "t-1"},
        ["hold", "pay", "issue"],
        undoable=["hold"],
    )
    store.mark_published(saga_id)
    drive.complete(store, saga_id, "hold", {"held": True})
    drive.fail(store, saga_id, "pay", "card declined", deps=["hold"])
    store.begin_compensation(saga_id, cause="failure", failed_step="pay")
    attempt = drive.claim_undo(store, saga_id, "hold")
    store.fail_compensation(saga_id, "hold", attempt, "seat service unavailable")
    return saga_id


# -- the command itself --------------------------------------------------------------------


def test_help_lists_every_command() -> None:
    result = sagaq("--help")

    assert result.exit_code == 0
    for command in ("demo", "start", "status", "list", "cancel", "retry", "sweep", "graph"):
        assert f"  {command} " in result.output
    assert "  db " in result.output and "  worker " in result.output


def test_an_unknown_command_is_a_usage_error() -> None:
    result = sagaq("stat")

    assert result.exit_code == 2
    assert "No such command 'stat'" in result.stderr


# -- status ---------------------------------------------------------------------------------


def test_status_shows_the_saga_header_and_every_step(engine: SagaQ) -> None:
    saga_id = failed_ticket(engine.store)

    result = sagaq("status", saga_id)

    assert result.exit_code == 0, result.output
    out = result.stdout
    assert f"ticket {saga_id}" in out
    assert header(out, "status") == "FAILED"
    assert header(out, "failed step") == "pay"
    assert header(out, "error") == "compensation of step 'hold' failed: seat service unavailable"
    hold = row(out, "hold")
    assert "COMPENSATION_FAILED" in hold and "COMPLETED" not in hold  # as in --json
    assert "undo: seat service unavailable" in hold
    pay = row(out, "pay")
    assert "FAILED" in pay and "card declined" in pay
    assert "SKIPPED" in row(out, "issue")


def test_status_json_is_the_saga_result(engine: SagaQ) -> None:
    saga_id = failed_ticket(engine.store)

    result = sagaq("status", saga_id, "--json")

    assert result.exit_code == 0
    data = json.loads(result.stdout)
    assert data["id"] == saga_id
    assert data["status"] == "FAILED"
    assert data["failed_step"] == "pay"
    assert {s["name"]: s["status"] for s in data["steps"]} == {
        "hold": "COMPENSATION_FAILED",
        "pay": "FAILED",
        "issue": "SKIPPED",
    }
    assert data["steps"][0]["compensation"]["error"] == "seat service unavailable"


def test_status_of_an_unknown_id_is_one_line_error(engine: SagaQ) -> None:
    result = sagaq("status", "no-such-id")

    assert_one_line_error(result, "no saga with id 'no-such-id'")


def test_status_without_a_store_says_where_it_looked(tmp_path: Path) -> None:
    missing = f"sqlite:///{tmp_path / 'nothing-here.db'}"

    result = CliRunner().invoke(cli, ["status", "x"], env={"SAGAQ_STORE_URL": missing})

    assert_one_line_error(result, f"no saga store at {missing} (set SAGAQ_STORE_URL)")
    assert not (tmp_path / "nothing-here.db").exists()


def test_status_of_a_database_without_tables_says_how_to_create_them(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    sqlite3.connect(tmp_path / "empty.db").close()

    result = CliRunner().invoke(cli, ["list"], env={"SAGAQ_STORE_URL": url})

    assert_one_line_error(result, f"the store {url} has no saga tables: run `sagaq db upgrade`")


# -- list -----------------------------------------------------------------------------------


def test_list_shows_newest_first_and_filters(engine: SagaQ) -> None:
    done = failed_ticket(engine.store)
    first = engine.start("ticket", {"ticket_id": "t-2"}).id
    second = engine.start("ticket", {"ticket_id": "t-3"}).id

    everything = sagaq("list")
    failed = sagaq("list", "--status", "failed")
    running = sagaq("list", "--status", "RUNNING", "--limit", "1")
    other = sagaq("list", "--saga", "order")

    assert everything.exit_code == 0
    ids = [line.split()[0] for line in everything.stdout.splitlines() if "ticket" in line]
    assert ids == [second, first, done]
    assert "FAILED" in row(everything.stdout, done) and "pay" in row(everything.stdout, done)
    assert done in failed.stdout and first not in failed.stdout
    assert second in running.stdout and first not in running.stdout and done not in running.stdout
    assert "no sagas match" in other.stdout


def test_list_since_takes_durations_and_dates(engine: SagaQ) -> None:
    saga_id = engine.start("ticket", {"ticket_id": "t-1"}).id

    recent = sagaq("list", "--since", "10m")
    future = sagaq("list", "--since", "2999-01-01")
    bad = sagaq("list", "--since", "yesterday")

    assert saga_id in recent.stdout
    assert saga_id not in future.stdout
    assert bad.exit_code == 2
    assert "'yesterday' is neither a duration" in bad.stderr


def test_list_json_is_one_object_per_saga(engine: SagaQ) -> None:
    saga_id = engine.start("ticket", {"ticket_id": "t-1"}).id

    result = sagaq("list", "--json")

    data = json.loads(result.stdout)
    assert [(d["id"], d["saga"], d["status"]) for d in data["sagas"]] == [
        (saga_id, "ticket", "RUNNING")
    ]


# -- start ----------------------------------------------------------------------------------


def test_start_prints_the_id_of_a_saga_now_in_the_store(engine: SagaQ) -> None:
    result = sagaq("start", "ticket", "--input", '{"ticket_id": "t-9"}', "--app", APP)

    assert result.exit_code == 0, result.output
    saga_id = result.stdout.strip()
    shown = sagaq("status", saga_id)
    assert header(shown.stdout, "status") == "RUNNING"
    assert "PENDING" in row(shown.stdout, "hold")
    assert engine.status(saga_id).input == {"ticket_id": "t-9"}


def test_start_reads_input_from_a_file_and_honours_the_idempotency_key(
    engine: SagaQ, tmp_path: Path
) -> None:
    (tmp_path / "in.json").write_text('{"ticket_id": "t-file"}')
    args = ["start", "ticket", "--input", f"@{tmp_path / 'in.json'}", "--app", APP]

    first = sagaq(*args, "--idempotency-key", "k-1")
    again = sagaq(*args, "--idempotency-key", "k-1")

    assert first.exit_code == again.exit_code == 0
    assert first.stdout == again.stdout
    assert "exists already: not started again" in again.stderr
    assert engine.status(first.stdout.strip()).input == {"ticket_id": "t-file"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["ticket", "--input", "{ticket"], "invalid JSON input: Expecting property name"),
        (["ticket", "--input", '{"ticket_id": ""}'], "invalid input for saga 'ticket'"),
        (["ticket", "--input", "@/no/such/file.json"], "cannot read input file"),
        (["parade"], "unknown saga 'parade' (registered sagas: ticket)"),
    ],
)
def test_start_refuses_bad_input_with_one_line_and_starts_nothing(
    engine: SagaQ, args: list[str], message: str
) -> None:
    result = sagaq("start", *args, "--app", APP)

    assert_one_line_error(result, message)
    assert result.stdout == ""
    assert engine.list() == []


@pytest.mark.parametrize(
    ("app", "message"),
    [
        ("no_such_module:engine", "cannot import 'no_such_module'"),
        ("tests.unit.test_cli:APP", "tests.unit.test_cli:APP is not a SagaQ engine (got str)"),
        ("workers.main", "--app must look like module:attribute"),
    ],
)
def test_a_wrong_app_is_one_line_error(engine: SagaQ, app: str, message: str) -> None:
    result = sagaq("start", "ticket", "--app", app)

    assert_one_line_error(result, message)


# -- graph ----------------------------------------------------------------------------------


def test_graph_draws_an_example_saga_of_the_default_app(example_app: ModuleType) -> None:
    ascii_ = sagaq("graph", "travel")
    mermaid = sagaq("graph", "travel", "--format", "mermaid", "--compensation")
    dot = sagaq("graph", "order", "--format", "dot")

    assert ascii_.exit_code == mermaid.exit_code == dot.exit_code == 0
    assert ascii_.stdout.splitlines()[:4] == [
        "travel: steps",
        " 1  book_flight",
        "      --> book_hotel",
        "      --> book_car",
    ]
    assert "    s_book_hotel --> s_book_flight" in mermaid.stdout.splitlines()
    assert '    "reserve_inventory" -> "charge_payment";' in dot.stdout.splitlines()


def test_graph_marks_steps_with_their_status_in_one_run(engine: SagaQ) -> None:
    saga_id = failed_ticket(engine.store)

    result = sagaq("graph", "ticket", "--run", saga_id, "--app", APP)

    assert result.exit_code == 0, result.output
    assert " 1  hold  [COMPENSATION_FAILED]" in result.stdout
    assert " 2  pay  [FAILED]" in result.stdout


def test_graph_of_an_unknown_saga_or_format(example_app: ModuleType) -> None:
    assert_one_line_error(sagaq("graph", "cruise"), "unknown saga 'cruise'")
    assert sagaq("graph", "travel", "--format", "png").exit_code == 2


# -- worker ---------------------------------------------------------------------------------


def test_worker_runs_celery_on_every_queue_of_the_registered_sagas(
    example_app: ModuleType,
) -> None:
    result = sagaq("worker", "--dry-run")

    assert result.exit_code == 0, result.output
    command = result.stdout.split()
    assert Path(command[0]).name == "celery"
    assert command[1:] == [
        *("-A", "workers.main:app", "worker"),
        *("-Q", "default,inventory,payments", "--loglevel", "INFO"),
    ]


def test_worker_passes_queues_concurrency_pool_and_extra_arguments(
    example_app: ModuleType,
) -> None:
    result = sagaq(
        "worker", "-Q", "payments", "-c", "4", "--pool", "threads", "--dry-run", "--without-gossip"
    )

    assert result.exit_code == 0, result.output
    assert result.stdout.split()[-9:] == [
        *("-Q", "payments", "--loglevel", "INFO"),
        *("--concurrency", "4", "--pool", "threads", "--without-gossip"),
    ]


# -- db upgrade -----------------------------------------------------------------------------


def test_db_upgrade_creates_then_leaves_alone(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'fresh.db'}"

    first = sagaq("db", "upgrade", "--url", url)
    second = sagaq("db", "upgrade", "--url", url)

    assert first.exit_code == 0, first.output
    assert f"upgraded from an empty database to revision {head()}" in first.stdout
    assert f"already at revision {head()}, nothing to do" in second.stdout


def test_db_upgrade_adopts_tables_the_store_created(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'made-by-store.db'}"
    store = SagaStore(url)
    store.create_tables()  # what the store does on its first use
    store.dispose()

    result = sagaq("db", "upgrade", "--url", url)

    assert result.exit_code == 0, result.output
    assert f"existing tables adopted as revision {head()}" in result.stdout


def test_db_upgrade_refuses_to_adopt_tables_of_another_shape(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE saga (id VARCHAR(36) PRIMARY KEY, name VARCHAR(200))")

    result = sagaq("db", "upgrade", "--url", f"sqlite:///{path}")

    assert_one_line_error(result, "have no migration history and differ from this sagaq")
    assert "add_column saga.status" in result.stderr
    assert "add_table saga_step" in result.stderr


def test_db_upgrade_of_an_unsupported_url_is_one_line_error() -> None:
    result = sagaq("db", "upgrade", "--url", "mysql://db/sagas")

    assert_one_line_error(result, "unsupported store URL 'mysql://db/sagas'")


# -- the installed console script -----------------------------------------------------------


def console_script() -> str:
    found = Path(sys.executable).parent / "sagaq"
    return str(found) if found.is_file() else shutil.which("sagaq") or "sagaq"


def test_console_script_migrates_and_reports_errors_on_one_line(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    env = {"PATH": "/usr/bin:/bin", "SAGAQ_STORE_URL": url}

    upgraded = subprocess.run(
        [console_script(), "db", "upgrade"], env=env, capture_output=True, text=True, timeout=60
    )
    missing = subprocess.run(
        [console_script(), "status", "ghost"], env=env, capture_output=True, text=True, timeout=60
    )

    assert upgraded.returncode == 0, upgraded.stderr
    assert f"upgraded from an empty database to revision {head()}\n" in upgraded.stdout
    assert missing.returncode == 1
    assert missing.stderr.strip() == "error: no saga with id 'ghost'"
    assert missing.stdout == ""
