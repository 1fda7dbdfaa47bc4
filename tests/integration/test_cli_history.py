"""`sagaq list` (search, cursor pages, counts), `sagaq status --history` and `sagaq purge`
against sagas that really ran on the embedded harness (a real in-process worker)."""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Iterator

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import update

from sagaq import SagaQ, SagaStatus
from sagaq.cli import cli
from sagaq.errors import InvalidInputError
from sagaq.retention import purge_schedule
from sagaq.store.history import SagaHistory
from sagaq.store.schema import saga as saga_table
from tests.harness import Harness, harness

ENGINE: SagaQ | None = None  # the harness engine, for `--app tests.integration...:ENGINE`
APP = f"{__name__}:ENGINE"
DAY = 86400.0


@pytest.fixture(scope="module")
def hm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    global ENGINE
    with harness("embedded", tmp_path_factory.mktemp("cli-history")) as running:
        ENGINE = running.engine
        yield running
        ENGINE = None


def sagaq(h: Harness, *args: str) -> Result:
    env = {"SAGAQ_STORE_URL": h.engine.store.url, "COLUMNS": "220"}
    return CliRunner().invoke(cli, list(args), env=env)


def run_with_key(h: Harness, saga: str, key: str, **input: object) -> str:
    handle = h.engine.start(saga, input, idempotency_key=key)
    h.engine.wait(handle.id, 30)
    return handle.id


def age(h: Harness, saga_id: str, seconds: float) -> None:
    """Make a finished saga look `seconds` old (as if it ran back then)."""
    with h.engine.store.engine.begin() as conn:
        conn.execute(
            update(saga_table)
            .where(saga_table.c.id == saga_id)
            .values(
                created_at=saga_table.c.created_at - seconds,
                finished_at=saga_table.c.finished_at - seconds,
            )
        )


def test_list_finds_a_saga_by_its_key_and_by_the_start_of_its_id(hm: Harness) -> None:
    key = f"order-{uuid.uuid4().hex[:6]}"
    wanted = run_with_key(hm, "line", key)
    run_with_key(hm, "line", f"{key}-b")

    by_key = sagaq(hm, "list", "--key", key)
    by_id = sagaq(hm, "list", "--id", wanted[:6], "--json")

    assert by_key.exit_code == 0, by_key.output
    lines = [line for line in by_key.stdout.splitlines() if "line" in line.split()]
    assert len(lines) == 1 and lines[0].split()[0] == wanted and key in lines[0]
    assert wanted in [s["id"] for s in json.loads(by_id.stdout)["sagas"]]


def test_list_pages_with_the_cursor_it_prints(hm: Harness) -> None:
    ids = [hm.engine.start("diamond", {}).id for _ in range(5)]
    for saga_id in ids:
        hm.engine.wait(saga_id, 30)

    seen: list[str] = []
    args = ["list", "--saga", "diamond", "--since", "10m", "--limit", "2", "--json"]
    cursor: list[str] = []
    for _ in range(10):
        page = sagaq(hm, *args, *cursor)
        assert page.exit_code == 0, page.output
        shown = json.loads(page.stdout)  # the API's shape: {"sagas": [...], "next_cursor": ...}
        seen += [s["id"] for s in shown["sagas"]]
        if shown["next_cursor"] is None:
            break
        cursor = ["--cursor", shown["next_cursor"]]

    assert seen[: len(ids)] == ids[::-1]
    assert len(seen) == len(set(seen))


def test_list_counts_per_status_and_filters_by_time_range(hm: Harness) -> None:
    since = time.time()
    done = hm.run("conditional", {})
    undone = hm.run("conditional", {"fail_at": "c1"})

    shown = sagaq(hm, "list", "--saga", "conditional", "--counts", "--since", "1m")
    before = sagaq(hm, "list", "--saga", "conditional", "--until", "2000-01-01")

    assert shown.exit_code == 0, shown.output
    assert done.id in shown.stdout and undone.id in shown.stdout
    assert re.search(r"COMPLETED: [1-9]", shown.stdout) and re.search(
        r"COMPENSATED: [1-9]", shown.stdout
    )
    assert "no sagas match" in before.stdout
    assert since <= done.created_at


def test_status_history_shows_the_timeline_with_who_and_why(hm: Harness) -> None:
    result = hm.run("line", {"fail_at": "s2"})
    history = SagaHistory(hm.engine.store)
    history.record(result.id, "step", step="s2", status="FAILED", attempt=1, error="boom 42")
    history.record(result.id, "operator", status="RETRY", actor="alice", reason="fixed the card")

    shown = sagaq(hm, "status", result.id, "--history")
    as_json = json.loads(sagaq(hm, "status", result.id, "--history", "--json").stdout)

    assert shown.exit_code == 0, shown.output
    assert "history" in shown.stdout
    assert "boom 42" in shown.stdout and "by alice" in shown.stdout
    assert "fixed the card" in shown.stdout
    recorded = [(e["kind"], e["status"]) for e in as_json["history"]]
    assert ("step", "FAILED") in recorded and ("operator", "RETRY") in recorded


def test_status_history_of_a_real_saga_shows_each_step_transition(hm: Harness) -> None:
    """Waits for the store's event writes (integrator)."""
    result = hm.run("line", {})

    history = json.loads(sagaq(hm, "status", result.id, "--history", "--json").stdout)["history"]

    done = [e["step"] for e in history if e["kind"] == "step" and e["status"] == "COMPLETED"]
    assert done == ["s1", "s2", "s3", "s4", "s5"]
    assert [e["status"] for e in history if e["kind"] == "saga"][-1] == "COMPLETED"


def test_cli_cancel_is_recorded_with_the_cli_as_actor(hm: Harness) -> None:
    """Waits for the store's event writes (integrator)."""
    handle = hm.engine.start("gated", {"gate": "g1"})
    deadline = time.monotonic() + 20
    while hm.engine.status(handle.id).step("g1").status != "RUNNING":
        assert time.monotonic() < deadline
        time.sleep(0.02)

    cancelled = sagaq(hm, "cancel", handle.id, "--reason", "duplicate order", "--app", APP)
    hm.ledger.gate(handle.id).set()
    hm.engine.wait(handle.id, 30)

    assert cancelled.exit_code == 0, cancelled.output
    operator = [e for e in SagaHistory(hm.engine.store).events(handle.id) if e.kind == "operator"]
    assert [(e.status, e.actor, e.reason) for e in operator] == [
        ("CANCEL", "cli", "duplicate order")
    ]


def test_purge_deletes_old_finished_sagas_and_never_unfinished_ones(hm: Harness) -> None:
    old_done = hm.run("line", {})
    old_undone = hm.run("line", {"fail_at": "s1"})
    recent = hm.run("line", {})
    old_failed = hm.run("brittle", {"fail_at": "b3"})
    hm.ledger.gate(f"fixed:{old_failed.id}")  # stays broken: FAILED
    running = hm.engine.start("gated", {"gate": "g1"}).id
    for saga_id in (old_done.id, old_undone.id, old_failed.id, running):
        age(hm, saga_id, 40 * DAY)

    dry = sagaq(hm, "purge", "--older-than", "30d", "--dry-run")
    purged = sagaq(hm, "purge", "--older-than", "30d", "--batch", "1")
    refused = sagaq(hm, "purge", "--older-than", "30d", "--status", "RUNNING")
    hm.ledger.gate(running).set()

    assert dry.exit_code == 0 and "2 sagas" in dry.stdout, dry.output
    assert purged.exit_code == 0, purged.output
    assert "deleted 2 sagas" in purged.stdout and "in 2 batches" in purged.stdout
    store = hm.engine.store
    assert store.get(old_done.id) is None and store.get(old_undone.id) is None
    assert store.get(recent.id) is not None
    assert store.get(old_failed.id) is not None  # FAILED only when asked for
    assert store.get(running) is not None
    assert refused.exit_code == 2 and "RUNNING" in refused.stderr
    assert store.get(old_failed.id).status == SagaStatus.FAILED  # type: ignore[union-attr]


def test_the_beat_task_purges_like_the_command(hm: Harness) -> None:
    old = hm.run("line", {})
    age(hm, old.id, 40 * DAY)
    task = hm.app.tasks["sagaq.purge"]  # every engine has it, like sagaq.sweep
    schedule = purge_schedule("30d", every=600)

    entry = schedule["sagaq-purge"]
    done = task.apply_async(kwargs=entry["kwargs"], queue=hm.queue).get(timeout=20)

    assert entry["task"] == task.name == "sagaq.purge" and entry["schedule"] == 600
    assert done["sagas"] >= 1
    assert hm.engine.store.get(old.id) is None
    with pytest.raises(InvalidInputError, match="never purged"):
        purge_schedule("30d", statuses=["COMPENSATING"])
