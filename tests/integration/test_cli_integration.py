"""The `sagaq` command against sagas that really ran: a real in-process worker (the embedded
harness), and the installed console script driving a real `celery worker` over Redis."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import update

from sagaq import SagaQ, SagaStatus
from sagaq.cli import cli
from sagaq.store.schema import saga as saga_table
from tests.harness import REDIS_URL, Harness, harness, require

ENGINE: SagaQ | None = None  # the harness engine, for `--app tests.integration...:ENGINE`
APP = f"{__name__}:ENGINE"
SCRIPT = Path(sys.executable).parent / "sagaq"


@pytest.fixture(scope="module")
def hm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    """The embedded harness for this module only (torn down when its tests are done)."""
    global ENGINE
    with harness("embedded", tmp_path_factory.mktemp("cli")) as running:
        ENGINE = running.engine
        yield running
        ENGINE = None


def sagaq(h: Harness, *args: str) -> Result:
    env = {"SAGAQ_STORE_URL": h.engine.store.url, "COLUMNS": "200"}
    return CliRunner().invoke(cli, list(args), env=env)


def row(output: str, first_cell: str) -> str:
    """The table line whose first cell is `first_cell` (boxed or borderless table)."""
    for line in output.splitlines():
        cells = line.split("│")[1:2] if "│" in line else line.split()[:1]
        if cells and cells[0].strip() == first_cell:
            return line
    raise AssertionError(f"no row {first_cell!r} in:\n{output}")


def header(output: str, name: str) -> str:
    found = re.search(rf"^{name}\s{{2,}}(.*?)\s*$", output, re.MULTILINE)
    assert found, f"no {name!r} in:\n{output}"
    return found[1]


def wait_for_step(h: Harness, saga_id: str, step: str, status: str) -> None:
    deadline = time.monotonic() + 20
    while h.engine.status(saga_id).step(step).status != status:
        assert time.monotonic() < deadline, f"{step} never became {status}"
        time.sleep(0.02)


def test_status_shows_the_steps_of_a_saga_that_completed(hm: Harness) -> None:
    done = hm.run("diamond", {})

    result = sagaq(hm, "status", done.id)

    assert result.exit_code == 0, result.output
    assert header(result.stdout, "status") == "COMPLETED"
    for step in ("a", "b", "c", "d"):
        assert "COMPLETED" in row(result.stdout, step)


def test_status_shows_what_was_compensated_after_a_failure(hm: Harness) -> None:
    failed = hm.run("line", {"fail_at": "s3"})

    result = sagaq(hm, "status", failed.id)

    out = result.stdout
    assert header(out, "status") == "COMPENSATED"
    assert header(out, "failed step") == "s3"
    assert "injected failure at s3" in header(out, "error")
    for undone in ("s1", "s2"):
        assert "COMPENSATED" in row(out, undone)  # the step's own status, as in --json
    assert "FAILED" in row(out, "s3") and "injected failure at s3" in row(out, "s3")
    assert "SKIPPED" in row(out, "s4") and "SKIPPED" in row(out, "s5")


def test_list_shows_real_runs_by_status(hm: Harness) -> None:
    ok = hm.run("diamond", {})
    failed = hm.run("line", {"fail_at": "s1"})

    compensated = sagaq(hm, "list", "--status", "COMPENSATED", "--limit", "100")
    everything = sagaq(hm, "list", "--limit", "100")

    assert failed.id in compensated.stdout and ok.id not in compensated.stdout
    assert "diamond" in row(everything.stdout, ok.id) and "COMPLETED" in row(
        everything.stdout, ok.id
    )
    assert "s1" in row(everything.stdout, failed.id)


def test_start_wait_watches_the_saga_to_the_end(hm: Harness) -> None:
    result = sagaq(hm, "start", "diamond", "--wait", "--app", APP)

    assert result.exit_code == 0, result.output
    saga_id = result.stdout.splitlines()[0]
    assert hm.engine.status(saga_id).status == SagaStatus.COMPLETED
    assert header(result.stdout, "status") == "COMPLETED"
    assert "COMPLETED" in row(result.stdout, "d")


def test_start_wait_exits_1_when_the_saga_was_compensated(hm: Harness) -> None:
    result = sagaq(hm, "start", "line", "--input", '{"fail_at": "s2"}', "--wait", "--app", APP)

    assert result.exit_code == 1
    assert header(result.stdout, "status") == "COMPENSATED"
    assert row(result.stdout, "s1").split()[1:3] == ["COMPENSATED", "1"]
    assert "COMPENSATED" in row(result.stdout, "s1")


def test_graph_marks_the_steps_of_a_real_run(hm: Harness) -> None:
    failed = hm.run("diamond", {"fail_at": "d"})

    result = sagaq(hm, "graph", "diamond", "--run", failed.id, "--format", "mermaid", "--app", APP)

    assert result.exit_code == 0
    assert '    s_d["d<br/>FAILED"]' in result.stdout.splitlines()
    assert '    s_a["a<br/>COMPENSATED"]' in result.stdout.splitlines()


@pytest.mark.skipif(not hasattr(SagaQ, "cancel"), reason="this sagaq has no SagaQ.cancel yet")
def test_cancel_stops_a_running_saga_and_compensates_it(hm: Harness) -> None:
    saga_id = hm.engine.start("gated", {"gate": "g1"}).id
    wait_for_step(hm, saga_id, "g1", "RUNNING")

    result = sagaq(hm, "cancel", saga_id, "--reason", "customer changed their mind", "--app", APP)
    hm.ledger.gate(saga_id).set()
    final = hm.engine.wait(saga_id, timeout=20)

    assert result.exit_code == 0, result.output
    assert header(result.stdout, "status") == "COMPENSATING"
    assert "customer changed their mind" in header(result.stdout, "error")
    assert final.status == SagaStatus.COMPENSATED
    assert "SKIPPED" in row(sagaq(hm, "status", saga_id).stdout, "g2")


@pytest.mark.skipif(not hasattr(SagaQ, "cancel"), reason="this sagaq has no SagaQ.cancel yet")
def test_cancelling_a_finished_saga_is_one_line_error(hm: Harness) -> None:
    done = hm.run("diamond", {})

    result = sagaq(hm, "cancel", done.id, "--app", APP)

    assert result.exit_code == 1
    assert result.stderr.startswith("error: ") and len(result.stderr.splitlines()) == 1
    assert "COMPLETED" in result.stderr


@pytest.mark.skipif(not hasattr(SagaQ, "retry"), reason="this sagaq has no SagaQ.retry yet")
def test_retry_finishes_a_compensation_that_had_given_up(hm: Harness) -> None:
    stuck = hm.run("brittle", {"fail_at": "b3"})
    assert stuck.status == SagaStatus.FAILED
    hm.ledger.gate(f"fixed:{stuck.id}").set()  # the refund service is back

    result = sagaq(hm, "retry", stuck.id, "--app", APP)
    final = hm.engine.wait(stuck.id, timeout=20)

    assert result.exit_code == 0, result.output
    assert final.status == SagaStatus.COMPENSATED
    assert "COMPENSATED" in row(sagaq(hm, "status", stuck.id).stdout, "b2")


@pytest.mark.skipif(not hasattr(SagaQ, "sweep"), reason="this sagaq has no SagaQ.sweep yet")
def test_sweep_republishes_a_saga_whose_publish_was_lost(hm: Harness) -> None:
    # Given a saga recorded two minutes ago whose canvas never reached the broker
    saga_id, _ = hm.engine.store.create_saga("lost-1", "diamond", {}, ["a", "b", "c", "d"])
    with hm.engine.store.engine.begin() as conn:
        conn.execute(
            update(saga_table)
            .where(saga_table.c.id == saga_id)
            .values(created_at=time.time() - 120, updated_at=time.time() - 120)
        )

    result = sagaq(hm, "sweep", "--app", APP)

    assert result.exit_code == 0, result.output
    assert re.search(r"republished\s*│\s*1\b", result.stdout), result.stdout
    assert hm.engine.wait(saga_id, timeout=20).status == SagaStatus.COMPLETED


# -- the console script, in its own processes ----------------------------------------------


def test_demo_runs_two_orders_through_the_console_script() -> None:
    done = subprocess.run(
        [str(SCRIPT), "demo"], capture_output=True, text=True, timeout=120, cwd="/tmp"
    )

    assert done.returncode == 0, done.stdout + done.stderr
    assert "COMPLETED" in done.stdout and "COMPENSATED" in done.stdout


def test_worker_command_runs_a_celery_worker_that_finishes_sagas(tmp_path: Path) -> None:
    # Given `sagaq worker` (exec'ing celery) on Redis, with a SQLite store
    require(REDIS_URL)
    broker = REDIS_URL.rsplit("/", 1)[0] + "/14"  # a database of its own: no foreign workers
    env = {
        **os.environ,
        "SAGAQ_BROKER_URL": broker,
        "SAGAQ_RESULT_BACKEND": broker,
        "SAGAQ_STORE_URL": f"sqlite:///{tmp_path / 'sagaq.db'}",
        # The repository's reference deployment: not installed, so named and put on the path.
        "SAGAQ_APP": "workers.main:engine",
        "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
    }
    log = (tmp_path / "worker.log").open("w+")
    worker = subprocess.Popen(
        [str(SCRIPT), "worker", "--pool", "solo", "--without-mingle", "--without-gossip"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=tmp_path,
    )
    try:
        wait_until_ready(worker, tmp_path / "worker.log")

        # When a saga is started with the console script
        started = subprocess.run(
            [str(SCRIPT), "start", "travel", "--input", '{"trip_id": "t-1"}', "--wait"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            cwd=tmp_path,
        )
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=30)
        log.close()

    # Then the worker ran every step
    assert started.returncode == 0, started.stdout + started.stderr
    assert header(started.stdout, "status") == "COMPLETED"
    for step in ("book_flight", "book_hotel", "book_car", "pay"):
        assert "COMPLETED" in row(started.stdout, step)
    assert "warning" not in started.stderr


def wait_until_ready(worker: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while " ready." not in log.read_text():
        assert worker.poll() is None, f"the worker exited:\n{log.read_text()}"
        assert time.monotonic() < deadline, f"the worker never became ready:\n{log.read_text()}"
        time.sleep(0.2)
    for queue in ("default", "inventory", "payments"):  # every queue of the example sagas
        assert f".> {queue} " in log.read_text()
