"""Deadlines, cancel, failure policies, compensation failure, pivots, recovery, bad input —
through a real worker on every backend."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable

import pytest
from kombu import Connection

from sagaq import InvalidInputError, SagaStatus, StepStatus
from sagaq.errors import InvalidStateError
from tests import drive
from tests.harness import Harness

SagaState = dict[str, StepStatus]


def wait_for(condition: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def step_status(h: Harness, saga_id: str, step: str) -> StepStatus:
    return h.engine.status(saga_id).step(step).status


def test_saga_past_its_deadline_is_compensated_with_the_reason(h: Harness) -> None:
    handle = h.engine.start("gated", {"gate": "g1"}, deadline=0.3)
    wait_for(lambda: step_status(h, handle.id, "g1") == StepStatus.RUNNING)
    time.sleep(0.4)
    h.ledger.gate(handle.id).set()  # g1 finishes late; g2 must not start

    result = handle.wait(30)

    assert result.status == SagaStatus.COMPENSATED
    assert result.error == "deadline exceeded"
    assert h.ledger.of(handle.id, "undo") == ["g1"]
    assert result.step("g2").status == StepStatus.SKIPPED


def test_sweeper_enforces_the_deadline_of_a_saga_stuck_in_a_step(h: Harness) -> None:
    handle = h.engine.start("gated", {"gate": "g1"}, deadline=0.2)
    wait_for(lambda: step_status(h, handle.id, "g1") == StepStatus.RUNNING)
    time.sleep(0.3)

    report = h.engine.sweep(stall_after=0)

    assert report.deadlines == 1
    assert h.engine.status(handle.id).status == SagaStatus.COMPENSATING
    h.ledger.gate(handle.id).set()
    result = handle.wait(30)
    assert result.status == SagaStatus.COMPENSATED and result.error == "deadline exceeded"
    assert h.ledger.of(handle.id, "undo") == ["g1"]


def test_cancel_stops_a_running_saga_and_compensates_what_completed(h: Harness) -> None:
    handle = h.engine.start("gated", {"gate": "g2"})
    wait_for(lambda: step_status(h, handle.id, "g2") == StepStatus.RUNNING)

    h.engine.cancel(handle.id, reason="customer changed their mind")
    h.ledger.gate(handle.id).set()
    result = handle.wait(30)

    assert result.status == SagaStatus.COMPENSATED
    assert result.error == "cancelled: customer changed their mind"
    assert h.ledger.of(handle.id, "undo") == ["g2", "g1"]
    with pytest.raises(InvalidStateError, match="is COMPENSATED: there is nothing to cancel"):
        h.engine.cancel(handle.id)


def test_cancel_before_a_step_starts_means_it_never_runs(h: Harness) -> None:
    handle = h.engine.start("gated", {"gate": "g1"})
    wait_for(lambda: step_status(h, handle.id, "g1") == StepStatus.RUNNING)

    h.engine.cancel(handle.id, reason="stop")
    h.ledger.gate(handle.id).set()
    result = handle.wait(30)

    assert h.ledger.of(handle.id, "do") == ["g1"]  # g2 never ran
    assert result.step("g2").status == StepStatus.SKIPPED


def test_failed_compensation_fails_the_saga_and_retry_resumes_it(h: Harness) -> None:
    result = h.run("brittle", {"fail_at": "b3"})

    assert result.status == SagaStatus.FAILED
    assert result.error is not None and "compensation of step 'b2' failed" in result.error
    assert "refund service unavailable" in result.error
    assert h.ledger.of(result.id, "undo-try") == ["b2"] * 3  # first try + 2 retries, no more
    assert result.step("b2").status == StepStatus.COMPENSATION_FAILED
    assert result.step("b1").status == StepStatus.COMPLETED  # not undone before b2 is

    h.ledger.gate(f"fixed:{result.id}").set()
    h.engine.retry(result.id)
    retried = h.engine.wait(result.id, 30)

    assert retried.status == SagaStatus.COMPENSATED
    assert h.ledger.of(result.id, "undo") == ["b2", "b1"]


def test_failure_after_the_pivot_is_retried_forward_not_compensated(h: Harness) -> None:
    result = h.run("pivoted", {"failures": 2})

    assert result.status == SagaStatus.COMPLETED
    assert result.step("p3").attempts == 3
    assert h.ledger.of(result.id, "undo") == []


def test_failure_after_the_pivot_that_persists_needs_an_operator(h: Harness) -> None:
    result = h.run("pivoted", {"failures": 99})

    assert result.status == SagaStatus.FAILED
    assert result.failed_step == "p3"
    assert result.error is not None and "after the pivot step" in result.error
    assert h.ledger.of(result.id, "undo") == []  # nothing compensated
    assert h.ledger.of(result.id, "try") == ["p3"] * 4  # first try + forward_retry=3

    h.ledger.gate(f"fixed:{result.id}").set()
    h.engine.retry(result.id)
    assert h.engine.wait(result.id, 30).status == SagaStatus.COMPLETED


def par_input(**extra: object) -> dict[str, object]:
    return {"fail_at": "boom", "gate": "slow1", "after": {"boom": "slow1"}, **extra}


def test_fail_fast_with_grace_waits_for_running_siblings_and_skips_the_rest(h: Harness) -> None:
    handle = h.engine.start("par-fail-fast-with-grace", par_input())
    wait_for(lambda: h.engine.status(handle.id).status == SagaStatus.COMPENSATING)
    time.sleep(0.2)
    assert h.ledger.of(handle.id, "undo") == []  # root waits for the running slow1

    h.ledger.gate(handle.id).set()
    result = handle.wait(30)

    assert result.status == SagaStatus.COMPENSATED
    assert h.ledger.of(handle.id, "undo") == ["slow1", "root"]
    assert result.step("slow2").status == StepStatus.SKIPPED


def test_wait_all_lets_siblings_finish_then_compensates_everything(h: Harness) -> None:
    handle = h.engine.start("par-wait-all", par_input())
    wait_for(lambda: step_status(h, handle.id, "boom") == StepStatus.FAILED)
    time.sleep(0.2)
    assert h.engine.status(handle.id).status == SagaStatus.RUNNING  # waiting for siblings

    h.ledger.gate(handle.id).set()
    result = handle.wait(30)

    assert result.status == SagaStatus.COMPENSATED
    assert h.ledger.of(handle.id, "do") == ["root", "slow1", "slow2"]
    assert h.ledger.of(handle.id, "undo") == ["slow2", "slow1", "root"]


def test_fail_fast_never_undoes_an_ancestor_before_a_running_dependent(h: Harness) -> None:
    """fail-fast does not wait for siblings before their own branches are undone, but reverse
    order holds under every policy: root is undone only after slow1 (which depends on it) is."""
    handle = h.engine.start("par-fail-fast", par_input())
    wait_for(lambda: h.engine.status(handle.id).status == SagaStatus.COMPENSATING)
    time.sleep(0.2)
    assert h.ledger.of(handle.id, "undo") == []  # root waits for the running slow1

    h.ledger.gate(handle.id).set()  # slow1 finishes after all
    result = handle.wait(30)

    assert result.status == SagaStatus.COMPENSATED
    assert h.ledger.of(handle.id, "undo") == ["slow1", "root"]
    assert result.step("slow2").status == StepStatus.SKIPPED


def test_unserializable_result_fails_the_step_clearly_and_compensates(h: Harness) -> None:
    result = h.run("odd", {})

    assert result.status == SagaStatus.COMPENSATED
    assert result.failed_step == "unstorable"
    assert result.error is not None and "cannot be stored as JSON" in result.error
    assert h.ledger.of(result.id, "undo") == ["o1"]


def test_oversized_input_is_refused_and_nothing_is_written(h: Harness) -> None:
    before = len(h.engine.list(limit=100000))

    with pytest.raises(InvalidInputError, match="bytes; the limit is 262144"):
        h.engine.start("line", {"blob": "x" * 300_000})

    assert len(h.engine.list(limit=100000)) == before


def test_sweeper_republishes_a_saga_whose_publish_was_lost(h: Harness) -> None:
    # As if the web process died between the commit and the publish.
    saga_id, _ = h.engine.store.create_saga(
        str(uuid.uuid4()), "line", {}, ["s1", "s2", "s3", "s4", "s5"]
    )

    report = h.engine.sweep(stall_after=0)

    assert report.republished >= 1
    result = h.engine.wait(saga_id, 30)
    assert result.status == SagaStatus.COMPLETED
    assert h.ledger.of(saga_id, "do") == ["s1", "s2", "s3", "s4", "s5"]


def test_sweeper_resumes_a_chain_whose_next_message_was_lost_without_rerunning(
    h: Harness,
) -> None:
    # s1 completed, then the message for s2 vanished.
    store = h.engine.store
    saga_id, _ = store.create_saga(str(uuid.uuid4()), "line", {}, ["s1", "s2", "s3", "s4", "s5"])
    store.mark_published(saga_id)
    drive.complete(store, saga_id, "s1", {"step": "s1", "saw": []})

    report = h.engine.sweep(stall_after=0)

    assert report.resumed >= 1
    result = h.engine.wait(saga_id, 30)
    assert result.status == SagaStatus.COMPLETED
    assert h.ledger.of(saga_id, "do") == ["s2", "s3", "s4", "s5"]  # s1 not run again


def test_malformed_messages_are_rejected_and_the_worker_keeps_going(h: Harness) -> None:
    with Connection(h.app.conf.broker_url) as conn:
        producer = conn.Producer(serializer="json")
        queue = h.app.amqp.queues[h.queue]
        for body, headers in [
            ("{not json", {"task": "line.s1", "id": str(uuid.uuid4())}),
            ([[], {"saga_id": "no-such-saga"}, {}], {"task": "line.s1", "id": str(uuid.uuid4())}),
            ([[], {}, {}], {"task": "line.s2", "id": str(uuid.uuid4())}),
            ([[], {}, {}], {"task": "no.such.task", "id": str(uuid.uuid4())}),
        ]:
            producer.publish(
                body if isinstance(body, str) else json.dumps(body),
                exchange=queue.exchange,
                routing_key=queue.routing_key,
                declare=[queue],
                headers=headers,
                content_type="application/json",
                content_encoding="utf-8",
            )

    assert h.run("line", {}).status == SagaStatus.COMPLETED
