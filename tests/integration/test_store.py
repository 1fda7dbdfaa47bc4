"""SagaStore transitions on SQLite and PostgreSQL: each is one conditional write, so duplicates
and races cannot corrupt state."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from sagaq import SagaStatus, StepStatus, StoreUnavailableError
from sagaq.store import Claim, SagaStore
from tests.harness import PG_URL, pg_schema_url, require

STEPS = ["a", "b", "c"]


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SagaStore]:
    if request.param == "sqlite":
        s = SagaStore(f"sqlite:///{tmp_path / 'store.db'}")
        yield s
        s.dispose()
        return
    require(PG_URL)
    with pg_schema_url() as url:
        s = SagaStore(url)
        yield s
        s.dispose()


def new_saga(store: SagaStore, key: str | None = None) -> str:
    saga_id, created = store.create_saga(str(uuid.uuid4()), "t", {"x": 1}, STEPS, key)
    assert created
    store.mark_published(saga_id)
    return saga_id


def run(store: SagaStore, saga_id: str, step: str, result: object) -> None:
    claim = store.claim_step(saga_id, step, [])
    assert claim.outcome is Claim.RUN
    assert store.complete_step(saga_id, step, result) == (True, False)


def test_create_writes_saga_and_pending_steps_and_honours_idempotency_key(
    store: SagaStore,
) -> None:
    first = new_saga(store, key="k-1")
    again, created = store.create_saga(str(uuid.uuid4()), "t", {"x": 2}, STEPS, "k-1")

    assert (again, created) == (first, False)
    record = store.get(first)
    assert record is not None and record.status == SagaStatus.RUNNING
    assert record.input == {"x": 1}
    assert [(s.name, s.status) for s in record.steps] == [(n, StepStatus.PENDING) for n in STEPS]


def test_redelivered_completed_step_gets_its_stored_result_instead_of_running(
    store: SagaStore,
) -> None:
    saga_id = new_saga(store)
    run(store, saga_id, "a", {"reservation": 7})

    claim = store.claim_step(saga_id, "a", [])

    assert (claim.outcome, claim.result) == (Claim.DONE, {"reservation": 7})


def test_claim_hands_over_input_and_dependency_results(store: SagaStore) -> None:
    saga_id = new_saga(store)
    run(store, saga_id, "a", {"id": "A"})

    claim = store.claim_step(saga_id, "b", ["a"])

    assert claim.outcome is Claim.RUN and claim.attempts == 1
    assert (claim.input, claim.results) == ({"x": 1}, {"a": {"id": "A"}})
    assert store.claim_step(saga_id, "b", ["a"]).attempts == 2  # a redelivery counts


def test_only_one_caller_starts_compensation(store: SagaStore) -> None:
    saga_id = new_saga(store)
    run(store, saga_id, "a", 1)
    store.claim_step(saga_id, "b", ["a"])
    store.fail_step(saga_id, "b", "boom")
    winners: list[object] = []

    def errback() -> None:
        winners.append(store.begin_compensation(saga_id, failed_step="b"))

    threads = [threading.Thread(target=errback) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    plans = [w for w in winners if w is not None]
    assert plans == [{"a": StepStatus.COMPLETED}]
    record = store.get(saga_id)
    assert record is not None
    assert (record.status, record.failed_step, record.error) == (
        SagaStatus.COMPENSATING,
        "b",
        "boom",
    )
    assert record.steps[2].status == StepStatus.SKIPPED  # c can no longer start
    assert store.claim_step(saga_id, "c", ["b"]).outcome is Claim.SKIP


def test_step_between_retries_when_compensation_starts_is_failed_not_run(
    store: SagaStore,
) -> None:
    saga_id = new_saga(store)
    store.claim_step(saga_id, "a", [])  # running; its retry message is still on the way
    store.begin_compensation(saga_id, failed_step="b")

    claim = store.claim_step(saga_id, "a", [], outcome_unknown=False)

    assert claim.outcome is Claim.SKIP
    record = store.get(saga_id)
    assert record is not None and record.step("a").status == StepStatus.FAILED


def test_step_redelivered_after_its_worker_died_is_compensated_in_case_it_applied(
    store: SagaStore,
) -> None:
    saga_id = new_saga(store)
    store.claim_step(saga_id, "a", [])  # its worker dies midway; the broker redelivers
    store.begin_compensation(saga_id, failed_step="b")

    assert store.claim_step(saga_id, "a", [], outcome_unknown=True).outcome is Claim.SKIP

    record = store.get(saga_id)
    assert record is not None and record.step("a").status == StepStatus.COMPLETED
    assert "outcome unknown" in (record.step("a").error or "")
    claim = store.claim_compensation(saga_id, "a", [])
    assert (claim.outcome, claim.result) == (Claim.RUN, None)


def test_compensation_waits_for_a_running_step_then_runs_once(store: SagaStore) -> None:
    saga_id = new_saga(store)
    store.claim_step(saga_id, "a", [])
    store.begin_compensation(saga_id, failed_step="b")

    assert store.claim_compensation(saga_id, "a", []).outcome is Claim.WAIT
    assert store.complete_step(saga_id, "a", {"late": True}) == (True, False)
    claim = store.claim_compensation(saga_id, "a", [])
    assert (claim.outcome, claim.result) == (Claim.RUN, {"late": True})
    assert store.complete_compensation(saga_id, "a") == (True, False)
    assert store.claim_compensation(saga_id, "a", []).outcome is Claim.DONE
    assert store.finish_compensation(saga_id)
    assert not store.finish_compensation(saga_id)


def test_saga_completes_only_when_every_step_completed(store: SagaStore) -> None:
    saga_id = new_saga(store)
    run(store, saga_id, "a", 1)
    run(store, saga_id, "b", 2)

    assert not store.finish_saga(saga_id)
    run(store, saga_id, "c", 3)
    assert store.finish_saga(saga_id)
    record = store.get(saga_id)
    assert record is not None and record.status == SagaStatus.COMPLETED
    assert record.finished_at is not None


def test_failed_compensation_fails_the_saga_with_the_step_named(store: SagaStore) -> None:
    saga_id = new_saga(store)
    run(store, saga_id, "a", 1)
    store.begin_compensation(saga_id, failed_step="b")
    store.claim_compensation(saga_id, "a", [])

    store.fail_compensation(saga_id, "a", "refund API down")

    record = store.get(saga_id)
    assert record is not None and record.status == SagaStatus.FAILED
    assert record.error == "compensation of step 'a' failed: refund API down"
    assert record.steps[0].status == StepStatus.COMPENSATION_FAILED
    assert store.claim_compensation(saga_id, "a", []).outcome is Claim.HALT


def test_list_filters_by_status_and_name(store: SagaStore) -> None:
    done = new_saga(store)
    for step in STEPS:
        run(store, done, step, None)
    store.finish_saga(done)
    new_saga(store)

    completed = store.list_sagas(status=SagaStatus.COMPLETED)
    assert [r.id for r in completed] == [done]
    assert len(store.list_sagas(name="t")) == 2
    assert store.list_sagas(name="other") == []


def test_unreachable_database_is_a_clear_error() -> None:
    with pytest.raises(StoreUnavailableError, match=r"saga store .*127.0.0.1:1.* is unavailable"):
        SagaStore("postgresql://postgres@127.0.0.1:1/none")
