"""What `sagaq` prints for programs and pipes: the API's JSON shape, tables that are not folded
at 80 columns, a final newline after `start --wait`, errors without absolute paths."""

from __future__ import annotations

import json
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from fastapi.testclient import TestClient

from sagaq import NonRetryableError, Saga, SagaQ, StepContext
from sagaq.api.app import create_app
from sagaq.cli import cli
from sagaq.embedded import embedded_app, in_process_worker
from sagaq.runtime.invoke import describe

ENGINE: SagaQ | None = None  # what `--app tests.unit.test_cli_output:ENGINE` loads
APP = "tests.unit.test_cli_output:ENGINE"
LONG_ERROR = "the payment provider refused the card because " + "it is far too long " * 8


def reserve(ctx: StepContext) -> dict[str, bool]:
    return {"held": True}


def release(ctx: StepContext, result: dict[str, bool]) -> None:
    return None


def charge(ctx: StepContext) -> None:
    if ctx.input.get("decline"):
        raise NonRetryableError(LONG_ERROR)


@pytest.fixture
def engine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[SagaQ]:
    """A booking saga on the embedded broker, with a worker running it."""
    url = f"sqlite:///{tmp_path / 'sagaq.db'}"
    monkeypatch.setenv("SAGAQ_STORE_URL", url)
    saga = Saga("booking", queue=f"cli-out-{uuid.uuid4().hex[:8]}")
    saga.step(name="reserve")(reserve).compensate(release)
    saga.step(name="charge", depends_on=["reserve"])(charge)
    app = embedded_app("cli-output")
    built = SagaQ(app, store=url)
    built.register(saga)
    monkeypatch.setattr(sys.modules[__name__], "ENGINE", built)
    with in_process_worker(app, built.queues()):
        yield built
    built.store.dispose()


def sagaq(*args: str, columns: str | None = None) -> Result:
    """Output to a pipe (CliRunner), with $COLUMNS unset unless given."""
    return CliRunner().invoke(cli, list(args), env={"COLUMNS": columns})


def test_status_and_list_json_are_the_apis_json(engine: SagaQ) -> None:
    declined = engine.start("booking", {"decline": True}).wait(20)

    with TestClient(create_app(engine)) as api:
        api_saga = api.get(f"/sagas/{declined.id}").json()
        api_list = api.get("/sagas").json()
    cli_saga = json.loads(sagaq("status", declined.id, "--json").stdout)
    cli_list = json.loads(sagaq("list", "--json").stdout)

    assert cli_saga == api_saga
    assert cli_list == api_list
    assert cli_saga["compensated_steps"] == ["reserve"]
    statuses = {s["name"]: s["status"] for s in cli_saga["steps"]}
    assert statuses == {"reserve": "COMPENSATED", "charge": "FAILED"}


def test_the_status_table_shows_the_same_step_status_as_the_json(engine: SagaQ) -> None:
    declined = engine.start("booking", {"decline": True}).wait(20)

    table = sagaq("status", declined.id, columns="200").stdout

    reserve_row = next(line for line in table.splitlines() if line.strip().startswith("reserve"))
    assert "COMPENSATED" in reserve_row and "COMPLETED" not in reserve_row


def test_piped_tables_are_not_folded_at_80_columns(engine: SagaQ) -> None:
    declined = engine.start("booking", {"decline": True}).wait(20)

    out = sagaq("status", declined.id).stdout

    assert any(LONG_ERROR.strip() in line for line in out.splitlines()), out
    assert any(declined.id in line for line in sagaq("list").stdout.splitlines())


def test_start_wait_ends_with_a_newline_and_prints_the_full_id(engine: SagaQ) -> None:
    result = sagaq("start", "booking", "--wait", "--app", APP)

    assert result.exit_code == 0, result.output
    assert result.stdout.endswith("\n")
    saga_id = result.stdout.splitlines()[0]
    assert engine.status(saga_id).status == "COMPLETED"  # the printed id is the whole id


def test_step_errors_name_the_file_without_its_directory() -> None:
    try:
        raise ValueError("boom")
    except ValueError as exc:
        text = describe(exc)

    assert text.startswith("ValueError: boom (at test_cli_output.py:")
    assert "/" not in text
