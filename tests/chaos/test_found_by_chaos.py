"""Small, deterministic reproductions of failure modes the chaos suite found, so they stay
fixed even in runs where the chaos does not happen to hit them."""

from __future__ import annotations

import os
import uuid

import pytest

from sagaq import SagaStatus, StepStatus
from sagaq.store import SagaStore
from tests.harness import PG_URL, Harness, pg_schema_url, require

pytestmark = pytest.mark.chaos

LINE = ["s1", "s2", "s3", "s4", "s5"]


def test_sweeper_compensates_a_saga_whose_failed_step_lost_its_errback(h: Harness) -> None:
    # s3 failed for good, then the broker lost the errback message: the saga stays RUNNING
    # with s3 FAILED. The sweeper used to re-publish s4 and s5 (they ran after a failed step)
    # and the saga then stayed RUNNING for ever.
    store = h.engine.store
    saga_id, _ = store.create_saga(str(uuid.uuid4()), "line", {}, LINE)
    store.mark_published(saga_id)
    for step in ("s1", "s2"):
        store.claim_step(saga_id, step, [])
        store.complete_step(saga_id, step, {"step": step, "saw": []})
    store.claim_step(saga_id, "s3", [])
    store.fail_step(saga_id, "s3", "ConnectionError: card service down")

    report = h.engine.sweep(stall_after=0)

    assert report.failures == 1 and report.resumed == 0
    result = h.engine.wait(saga_id, 30)
    assert result.status == SagaStatus.COMPENSATED
    assert result.failed_step == "s3"
    assert h.ledger.of(saga_id, "do") == []  # s4, s5 never ran
    assert h.ledger.of(saga_id, "undo") == ["s2", "s1"]
    assert result.step("s4").status == StepStatus.SKIPPED


def test_a_forked_process_does_not_share_the_store_connections_of_its_parent() -> None:
    # Celery's prefork pool forks after the worker's main process created the tables: the
    # children used to share its pooled PostgreSQL connection and read each other's rows.
    require(PG_URL)
    with pg_schema_url() as url:
        store = SagaStore(url)  # uses (and pools) a connection in this, the parent, process
        ids = [store.create_saga(str(uuid.uuid4()), "x", {"i": i}, ["a"])[0] for i in range(2)]
        children = []
        for i, saga_id in enumerate(ids):
            pid = os.fork()
            if pid == 0:  # the child: exit code = number of wrong or failed reads
                wrong = 0
                for _ in range(200):
                    try:
                        record = store.get(saga_id)
                        wrong += record is None or record.input != {"i": i}
                    except Exception:
                        wrong += 1
                os._exit(min(wrong, 100))
            children.append(pid)
        wrong_reads = [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in children]
        store.dispose()
    assert wrong_reads == [0, 0]
