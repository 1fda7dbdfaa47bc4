"""Small, deterministic reproductions of failure modes the chaos suite found, so they stay
fixed even in runs where the chaos does not happen to hit them."""

from __future__ import annotations

import subprocess
import sys
import uuid

import pytest

from sagaq import SagaStatus, StepStatus
from tests import drive
from tests.chaos.pool import ROOT
from tests.harness import PG_URL, Harness, pg_schema_url, require

pytestmark = pytest.mark.chaos

LINE = ["s1", "s2", "s3", "s4", "s5"]


def test_sweeper_compensates_a_saga_whose_failed_step_lost_its_errback(h: Harness) -> None:
    # s3 failed for good, then the broker lost the errback message: the saga stays RUNNING
    # with s3 FAILED. The sweeper used to re-publish s4 and s5 (they ran after a failed step)
    # and the saga then stayed RUNNING for ever.
    store = h.engine.store
    saga_id, _ = store.create_saga(str(uuid.uuid4()), "line", {}, LINE, undoable=LINE)
    drive.complete(store, saga_id, "s1", {"step": "s1", "saw": []})
    drive.complete(store, saga_id, "s2", {"step": "s2", "saw": []}, deps=["s1"])
    drive.fail(store, saga_id, "s3", "ConnectionError: card service down", deps=["s2"])

    report = h.engine.sweep(stall_after=0)

    assert report.failures == 1 and report.resumed == 0
    result = h.engine.wait(saga_id, 30)
    assert result.status == SagaStatus.COMPENSATED
    assert result.failed_step == "s3"
    assert h.ledger.of(saga_id, "do") == []  # s4, s5 never ran
    assert h.ledger.of(saga_id, "undo") == ["s2", "s1"]
    assert result.step("s4").status == StepStatus.SKIPPED


# Run in a fresh interpreter: forking the test process, whose other threads (in-process
# workers) may hold locks, could hang the child.
FORK_CHECK = """
import os, signal, sys, uuid
from sagaq.store import SagaStore
store = SagaStore(sys.argv[1])  # uses (and pools) a connection in this, the parent, process
ids = [store.create_saga(str(uuid.uuid4()), "x", {"i": i}, ["a"])[0] for i in range(2)]
children = []
for i, saga_id in enumerate(ids):
    pid = os.fork()
    if pid == 0:  # the child: exit code = number of wrong or failed reads
        signal.alarm(20)  # two processes on one socket may also wait for ever
        wrong = 0
        for _ in range(200):
            try:
                record = store.get(saga_id)
                wrong += record is None or record.input != {"i": i}
            except Exception:
                wrong += 1
        os._exit(min(wrong, 100))
    children.append(pid)
print([os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in children])  # -14: hung
"""


def test_a_forked_process_does_not_share_the_store_connections_of_its_parent() -> None:
    # Celery's prefork pool forks after the worker's main process created the tables: the
    # children used to share its pooled PostgreSQL connection and read each other's rows.
    require(PG_URL)
    with pg_schema_url() as url:
        done = subprocess.run(
            [sys.executable, "-c", FORK_CHECK, url],
            cwd=ROOT, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[0, 0]", f"wrong reads: {done.stdout}"


def test_a_worker_keeps_consuming_after_redis_restarts_under_a_running_task() -> None:
    # Celery 5.7 / kombu 5.7: a worker holding an unacked message while it waits in BRPOP used
    # to exit ("'NoneType' object has no attribute 'hostname'") when Redis restarted; sagaq's
    # kombu_fix keeps it alive. Its own redis-server: the machine's is never restarted.
    from tests.chaos.repro_kombu_restart import run

    assert run(fixed=True), "the worker did not survive the Redis restart (see its log above)"
