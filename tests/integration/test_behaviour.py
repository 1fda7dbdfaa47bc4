"""What a user relies on, on every backend, through a real Celery worker."""

from __future__ import annotations

import time
import uuid

import pytest
from sqlalchemy import func, select

from sagaq import InvalidInputError, SagaResult, SagaStatus, StepStatus, UnknownSagaError
from sagaq.compiler import STEP_FAILED_TASK
from sagaq.store.schema import saga as saga_table
from tests.harness import Harness

LINE = ["s1", "s2", "s3", "s4", "s5"]
DIAMOND_PARENTS = {"a": [], "b": ["a"], "c": ["a"], "d": ["b", "c"]}


def statuses(result: SagaResult) -> dict[str, StepStatus]:
    return {s.name: s.status for s in result.steps}


def saga_count(h: Harness) -> int:
    with h.engine.store.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(saga_table)).scalar_one())


def test_line_happy_path_completes(h: Harness) -> None:
    result = h.run("line", {})

    assert result.status == SagaStatus.COMPLETED
    assert statuses(result) == {s: StepStatus.COMPLETED for s in LINE}
    assert h.ledger.of(result.id, "do") == LINE
    assert h.ledger.of(result.id, "undo") == []
    assert result.results["s3"] == {"step": "s3", "saw": ["s2"]}
    assert result.duration_ms is not None and result.duration_ms > 0


@pytest.mark.parametrize("fail_at", LINE)
def test_line_failure_compensates_exactly_the_completed_steps_in_reverse(
    h: Harness, fail_at: str
) -> None:
    index = LINE.index(fail_at)
    completed = LINE[:index]

    result = h.run("line", {"fail_at": fail_at})

    assert result.status == SagaStatus.COMPENSATED
    assert result.failed_step == fail_at
    assert result.error is not None and f"injected failure at {fail_at}" in result.error
    assert h.ledger.of(result.id, "do") == completed
    assert h.ledger.of(result.id, "undo") == completed[::-1]  # reverse order, each once
    assert list(result.compensated_steps) == completed[::-1]
    expected = {s: StepStatus.COMPENSATED for s in completed}
    expected[fail_at] = StepStatus.FAILED
    expected |= {s: StepStatus.SKIPPED for s in LINE[index + 1 :]}
    assert statuses(result) == expected


def test_diamond_happy_path_joins_both_branches(h: Harness) -> None:
    result = h.run("diamond", {})

    assert result.status == SagaStatus.COMPLETED
    assert set(h.ledger.of(result.id, "do")) == {"a", "b", "c", "d"}
    assert result.results["d"]["saw"] == ["b", "c"]  # the join sees both branches


@pytest.mark.parametrize("fail_at", ["a", "b", "c", "d"])
def test_diamond_failure_compensates_completed_steps_in_reverse_dependency_order(
    h: Harness, fail_at: str
) -> None:
    result = h.run("diamond", {"fail_at": fail_at})

    assert result.status == SagaStatus.COMPENSATED
    assert result.failed_step == fail_at
    done = h.ledger.of(result.id, "do")
    undone = h.ledger.of(result.id, "undo")
    # Exactly the steps that completed are undone, each once. (With a parallel sibling,
    # whether it completed before the failure is a race; whichever way, it is undone iff done.)
    assert sorted(undone) == sorted(done)
    assert fail_at not in done
    for step in undone:  # a step is undone only after every completed step that depends on it
        for child, parents in DIAMOND_PARENTS.items():
            if step in parents and child in undone:
                assert undone.index(child) < undone.index(step)
    rows = statuses(result)
    assert rows[fail_at] == StepStatus.FAILED
    assert {s for s, st in rows.items() if st == StepStatus.COMPENSATED} == set(done)
    if fail_at == "d":
        assert set(done) == {"a", "b", "c"} and undone[-1] == "a"


def test_step_that_fails_twice_then_succeeds_completes_without_compensation(h: Harness) -> None:
    result = h.run("flaky", {"failures": 2})

    assert result.status == SagaStatus.COMPLETED
    assert result.step("wobbly").attempts == 3
    assert result.results["wobbly"] == {"step": "wobbly", "attempt": 3}
    assert h.ledger.of(result.id, "try") == ["wobbly"] * 3
    assert h.ledger.of(result.id, "undo") == []


def test_step_that_keeps_failing_is_retried_then_compensated(h: Harness) -> None:
    result = h.run("flaky", {"failures": 99})

    assert result.status == SagaStatus.COMPENSATED
    assert result.failed_step == "wobbly"
    assert result.step("wobbly").attempts == 3  # first try + retry=2
    assert result.error is not None and "transient failure, attempt 3" in result.error
    assert h.ledger.of(result.id, "undo") == ["f1"]


def test_duplicate_errbacks_compensate_once(h: Harness) -> None:
    """Celery delivers g2's errback three times, two of them while g2 still runs: those wait
    for its attempt to end instead of writing it off, and the saga is compensated once."""
    handle = h.engine.start("gated", {"gate": "g2", "fail_at": "g2"})
    _wait_for(lambda: h.engine.status(handle.id).step("g2").status == StepStatus.RUNNING)
    errback = h.app.signature(
        STEP_FAILED_TASK,
        kwargs={"saga_id": handle.id, "saga": "gated", "step": "g2"},
        queue=h.queue,
    )
    errback.apply_async()
    errback.apply_async()
    time.sleep(0.3)
    assert h.engine.status(handle.id).status == SagaStatus.RUNNING  # g2's attempt is alive

    h.ledger.gate(handle.id).set()  # g2 goes on, and fails
    result = handle.wait(30)

    assert result.status == SagaStatus.COMPENSATED
    assert result.failed_step == "g2"
    assert h.ledger.of(handle.id, "undo") == ["g1"]
    assert statuses(result) == {"g1": StepStatus.COMPENSATED, "g2": StepStatus.FAILED}


def test_errback_for_a_step_that_did_not_fail_is_ignored(h: Harness) -> None:
    """Celery can call a chord body's errback although the body never ran: the store, not
    Celery's errback bookkeeping, decides whether anything failed."""
    handle = h.engine.start("gated", {"gate": "g1"})
    _wait_for(lambda: h.engine.status(handle.id).step("g1").status == StepStatus.RUNNING)
    h.app.signature(
        STEP_FAILED_TASK,
        kwargs={"saga_id": handle.id, "saga": "gated", "step": "g2"},  # g2 is still PENDING
        queue=h.queue,
    ).apply_async()
    time.sleep(0.3)
    h.ledger.gate(handle.id).set()

    assert handle.wait(30).status == SagaStatus.COMPLETED
    assert h.ledger.of(handle.id, "undo") == []


def test_errback_for_a_finished_saga_changes_nothing(h: Harness) -> None:
    result = h.run("line", {"fail_at": "s3"})
    h.app.signature(
        STEP_FAILED_TASK, kwargs={"saga_id": result.id, "saga": "line", "step": "s3"}, queue=h.queue
    ).apply_async()
    time.sleep(0.5)

    assert h.ledger.of(result.id, "undo") == ["s2", "s1"]
    assert h.engine.status(result.id).status == SagaStatus.COMPENSATED


def test_same_idempotency_key_returns_the_same_saga(h: Harness) -> None:
    key = f"order-{uuid.uuid4()}"
    first = h.engine.start("line", {}, idempotency_key=key)
    second = h.engine.start("line", {}, idempotency_key=key)

    assert second.id == first.id
    assert (first.created, second.created) == (True, False)
    first.wait(30)
    time.sleep(0.2)
    assert h.ledger.of(first.id, "do") == LINE  # ran once


def test_unknown_saga_name_is_a_clear_error_and_writes_nothing(h: Harness) -> None:
    before = saga_count(h)

    with pytest.raises(UnknownSagaError, match=r"unknown saga .nope.*line"):
        h.engine.start("nope", {})

    assert saga_count(h) == before


def test_invalid_input_is_a_clear_error_and_writes_nothing(h: Harness) -> None:
    before = saga_count(h)

    with pytest.raises(InvalidInputError, match="takes a JSON object"):
        h.engine.start("line", ["not", "an", "object"])

    assert saga_count(h) == before


def _wait_for(condition: object, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)
