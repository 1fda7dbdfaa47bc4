"""SagaStore transitions on SQLite and PostgreSQL: each is one conditional write checked against
the transition table, so duplicates, races and late attempts cannot corrupt state."""

from __future__ import annotations

import itertools
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from sagaq import SagaStatus, StepStatus, StoreUnavailableError
from sagaq.status import (
    SAGA_TRANSITIONS,
    STEP_TRANSITIONS,
    IllegalTransitionError,
    saga_move,
    step_move,
)
from sagaq.store import Claim, SagaStore
from tests.drive import LEASE, claim, claim_undo, complete, fail
from tests.harness import PG_URL, pg_schema_url, require

STEPS = ["a", "b", "c"]  # a -> b -> c
T_ = TypeVar("T_")


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path, clock: Clock) -> Iterator[SagaStore]:
    if request.param == "sqlite":
        s = SagaStore(f"sqlite:///{tmp_path / 'store.db'}", clock=clock)
        yield s
        s.dispose()
        return
    require(PG_URL)
    with pg_schema_url() as url:
        s = SagaStore(url, clock=clock)
        yield s
        s.dispose()


def new_saga(store: SagaStore, key: str | None = None, undoable: list[str] = STEPS) -> str:
    saga_id, created = store.create_saga(
        str(uuid.uuid4()), "t", {"x": 1}, STEPS, key, undoable=undoable
    )
    assert created
    store.mark_published(saga_id)
    return saga_id


def status(store: SagaStore, saga_id: str, step: str | None = None) -> str:
    record = store.get(saga_id)
    assert record is not None
    return record.status if step is None else record.step(step).status


def token() -> str:
    return f"{uuid.uuid4()}#0"


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
    complete(store, saga_id, "a", {"r": 1})

    again = store.claim_step(saga_id, "a", deps=[], wanted=[], token=token(), lease=LEASE)

    assert (again.outcome, again.result) == (Claim.DONE, {"r": 1})


def test_claim_hands_over_input_and_dependency_results(store: SagaStore) -> None:
    saga_id = new_saga(store)
    complete(store, saga_id, "a", {"r": "from-a"})

    got = store.claim_step(saga_id, "b", deps=["a"], wanted=["a"], token=token(), lease=LEASE)

    assert got.outcome is Claim.RUN
    assert got.input == {"x": 1} and got.results == {"a": {"r": "from-a"}}


def test_a_step_whose_dependency_is_not_done_waits_instead_of_running(store: SagaStore) -> None:
    saga_id = new_saga(store)

    got = store.claim_step(saga_id, "b", deps=["a"], wanted=["a"], token=token(), lease=LEASE)

    assert got.outcome is Claim.WAIT
    assert status(store, saga_id, "b") == StepStatus.PENDING


def test_duplicate_delivery_of_a_running_step_never_touches_its_attempt(
    store: SagaStore, clock: Clock
) -> None:
    """Issue 9 bug 3 (duplicate while compensation waits), store side: a duplicate of a step
    whose attempt is alive waits - before and after compensation began - and the attempt
    still completes with its real result, which is then undone."""
    saga_id = new_saga(store)
    attempt = claim(store, saga_id, "a")
    clock.now += LEASE / 2  # still within the lease

    duplicate = store.claim_step(saga_id, "a", deps=[], wanted=[], token=token(), lease=LEASE)
    assert duplicate.outcome is Claim.WAIT
    store.begin_compensation(saga_id, cause="cancel", reason="cancelled")
    again = store.claim_step(saga_id, "a", deps=[], wanted=[], token=token(), lease=LEASE)
    undo = store.claim_compensation(
        saga_id, "a", dependents=["b", "c"], wanted=[], lease=LEASE, token=token()
    )

    assert again.outcome is Claim.STOP and undo.outcome is Claim.WAIT
    assert status(store, saga_id, "a") == StepStatus.RUNNING
    assert store.complete_step(saga_id, "a", attempt, {"charge": "ch-1"}) == (True, False)
    undo = store.claim_compensation(
        saga_id, "a", dependents=["b", "c"], wanted=[], lease=LEASE, token=token()
    )
    assert undo.outcome is Claim.RUN and undo.result == {"charge": "ch-1"}


def test_a_step_whose_lease_expired_is_taken_over_by_a_new_attempt(
    store: SagaStore, clock: Clock
) -> None:
    saga_id = new_saga(store)
    first = claim(store, saga_id, "a")
    clock.now += LEASE + 1  # no heartbeat: its worker is gone

    second = store.claim_step(saga_id, "a", deps=[], wanted=[], token=token(), lease=LEASE)

    assert second.outcome is Claim.RUN and second.attempts == first + 1
    assert store.complete_step(saga_id, "a", first, "late") == (False, False)  # fenced off
    assert store.complete_step(saga_id, "a", second.attempts, "ok") == (True, False)


def test_a_heartbeat_keeps_a_long_step_from_being_taken_over(
    store: SagaStore, clock: Clock
) -> None:
    saga_id = new_saga(store)
    attempt = claim(store, saga_id, "a")
    for _ in range(5):
        clock.now += LEASE / 2
        assert store.heartbeat(saga_id, "a", attempt, compensation=False)

    duplicate = store.claim_step(saga_id, "a", deps=[], wanted=[], token=token(), lease=LEASE)

    assert duplicate.outcome is Claim.WAIT


def test_only_one_caller_starts_compensation(store: SagaStore) -> None:
    saga_id = new_saga(store)
    complete(store, saga_id, "a", "A")
    fail(store, saga_id, "b", "boom", deps=["a"])
    plans = []

    def begin() -> None:
        plans.append(store.begin_compensation(saga_id, cause="failure", failed_step="b").steps)

    threads = [threading.Thread(target=begin) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert sorted(plans, key=str) == [None, None, None, ["a"]]
    record = store.get(saga_id)
    assert record is not None
    assert (record.status, record.failed_step, record.cause) == ("COMPENSATING", "b", "failure")
    assert record.step("c").status == StepStatus.SKIPPED  # never starts now


def test_the_last_two_compensations_ending_at_once_finish_the_saga(store: SagaStore) -> None:
    # Each completion checks whether another step is still to be undone. Run at the same moment
    # without the saga's lock, each could see the other still COMPENSATING and neither would
    # finish the saga: it would stay COMPENSATING with nothing left to do.
    for _ in range(20):
        saga_id = new_saga(store)
        complete(store, saga_id, "a", "A")
        complete(store, saga_id, "b", "B")  # a and b are independent here; c never starts
        store.begin_compensation(saga_id, cause="cancel", reason="cancelled")
        attempts = {step: claim_undo(store, saga_id, step) for step in ("a", "b")}

        ended = at_once(
            lambda step, sid=saga_id, tried=attempts: store.complete_compensation(
                sid, step, tried[step]
            ),
            list(attempts),
        )

        assert sorted(ended) == [(True, False), (True, True)]  # exactly one finished it
        assert status(store, saga_id) == SagaStatus.COMPENSATED


def at_once(call: Callable[[str], T_], args: list[str]) -> list[T_]:
    """call(arg) for every arg, each in its own thread, released together."""
    together = threading.Barrier(len(args))
    results: list[T_] = []

    def run(arg: str) -> None:
        together.wait()
        results.append(call(arg))

    threads = [threading.Thread(target=run, args=(arg,)) for arg in args]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def test_a_claim_is_not_durable_but_leaves_its_connection_durable(tmp_path: Path) -> None:
    # A claim (of a step, or of a compensation) turns synchronous_commit off for its own
    # transaction only: a completion that follows on the same connection (or, behind PgBouncer,
    # anyone's) still waits for the WAL.
    require(PG_URL)
    with pg_schema_url() as url:
        store = SagaStore(url)
        saga_id = new_saga(store)

        def synchronous_commit() -> str:
            with store._raw() as conn:  # type: ignore[attr-defined]  # the PostgreSQL fast path
                return str(conn.execute("SHOW synchronous_commit").fetchone()[0])

        complete(store, saga_id, "a", "A")
        claim(store, saga_id, "b", deps=["a"])
        assert synchronous_commit() == "on"  # after a step's claim
        store.begin_compensation(saga_id, cause="cancel", reason="cancelled")
        claim_undo(store, saga_id, "a")
        assert synchronous_commit() == "on"  # after a compensation's claim
        store.dispose()


def test_the_errback_shortcut_begins_only_once_its_step_failed(store: SagaStore) -> None:
    # The errback's one-transaction path (only_if_failed) must leave a saga whose step is
    # still running (a lost attempt, a hard time limit) untouched for the slower path.
    saga_id = new_saga(store)
    complete(store, saga_id, "a", "A")
    attempt = claim(store, saga_id, "b", deps=["a"])
    refused = store.begin_compensation(
        saga_id, cause="failure", failed_step="b", only_if_failed=True
    )
    record = store.get(saga_id)
    assert record is not None
    assert (refused.steps, refused.status) == (None, SagaStatus.RUNNING)
    assert record.status == SagaStatus.RUNNING
    assert record.step("c").status == StepStatus.PENDING  # nothing skipped by the refusal
    assert [e["status"] for e in store.events(saga_id) if e["kind"] == "saga"] == ["RUNNING"]

    assert store.fail_step(saga_id, "b", attempt, "boom")
    begun = store.begin_compensation(saga_id, cause="failure", failed_step="b", only_if_failed=True)
    record = store.get(saga_id)
    assert record is not None
    assert begun.steps == ["a"]
    assert (record.status, record.failed_step, record.error) == ("COMPENSATING", "b", "boom")
    assert record.step("c").status == StepStatus.SKIPPED


def test_a_step_between_retries_when_compensation_starts_never_runs_again(
    store: SagaStore,
) -> None:
    saga_id = new_saga(store)
    attempt = claim(store, saga_id, "a")
    assert store.retry_step(saga_id, "a", attempt, "flaky", delay=5.0)
    store.begin_compensation(saga_id, cause="cancel", reason="cancelled")

    retry = store.claim_step(saga_id, "a", deps=[], wanted=[], token=token(), lease=LEASE)

    assert retry.outcome is Claim.STOP
    assert status(store, saga_id, "a") == StepStatus.SKIPPED
    assert status(store, saga_id) == SagaStatus.COMPENSATED  # nothing had applied


def test_a_step_lost_with_its_worker_is_undone_once_its_lease_expired(
    store: SagaStore, clock: Clock
) -> None:
    saga_id = new_saga(store)
    claim(store, saga_id, "a")
    store.begin_compensation(saga_id, cause="deadline", reason="deadline exceeded")
    clock.now += LEASE + 1

    undo = store.claim_compensation(
        saga_id, "a", dependents=[], wanted=[], lease=LEASE, token=token()
    )

    assert undo.outcome is Claim.RUN and undo.result is None  # outcome unknown: undo anyway
    record = store.get(saga_id)
    assert record is not None and record.step("a").applied


def test_reverse_order_holds_in_the_store_whatever_order_messages_arrive_in(
    store: SagaStore,
) -> None:
    saga_id = new_saga(store)
    complete(store, saga_id, "a", "A")
    complete(store, saga_id, "b", "B", deps=["a"])
    fail(store, saga_id, "c", "boom", deps=["b"])
    store.begin_compensation(saga_id, cause="failure", failed_step="c")

    early = store.claim_compensation(
        saga_id, "a", dependents=["b", "c"], wanted=[], lease=LEASE, token=token()
    )
    assert early.outcome is Claim.WAIT  # b is not undone yet
    b = claim_undo(store, saga_id, "b", dependents=["c"])
    assert store.complete_compensation(saga_id, "b", b) == (True, False)
    a = claim_undo(store, saga_id, "a", dependents=["b", "c"])
    assert store.complete_compensation(saga_id, "a", a) == (True, True)  # no finalizer needed


def test_a_compensation_still_running_is_never_run_twice(store: SagaStore, clock: Clock) -> None:
    """Issue 9 bug 4 (the sweeper re-sent compensations still running), store side."""
    saga_id = new_saga(store)
    complete(store, saga_id, "a", "A")
    store.begin_compensation(saga_id, cause="cancel", reason="cancelled")
    first = claim_undo(store, saga_id, "a")
    clock.now += LEASE / 2

    duplicate = store.claim_compensation(
        saga_id, "a", dependents=[], wanted=[], lease=LEASE, token=token()
    )

    assert duplicate.outcome is Claim.WAIT
    assert store.complete_compensation(saga_id, "a", first) == (True, True)


def test_the_saga_completes_with_its_last_step_whatever_order_they_end_in(
    store: SagaStore,
) -> None:
    saga_id, _ = store.create_saga(str(uuid.uuid4()), "t", {}, ["x", "y"])
    store.mark_published(saga_id)
    ay, ax = claim(store, saga_id, "y"), claim(store, saga_id, "x")

    assert store.complete_step(saga_id, "y", ay, 1) == (True, False)
    assert store.complete_step(saga_id, "x", ax, 2) == (True, True)
    assert status(store, saga_id) == SagaStatus.COMPLETED


def test_a_running_step_without_compensation_is_waited_for_then_the_saga_finishes(
    store: SagaStore,
) -> None:
    """Issue 9 bug 6: a running sibling without a compensation left the saga COMPENSATING."""
    saga_id = new_saga(store, undoable=["a"])
    complete(store, saga_id, "a", "A")
    running = claim(store, saga_id, "b", deps=["a"])
    begun = store.begin_compensation(saga_id, cause="cancel", reason="cancelled")
    assert sorted(begun.steps or []) == ["a", "b"]

    wait = store.claim_compensation(
        saga_id, "a", dependents=["b", "c"], wanted=[], lease=LEASE, token=token()
    )
    assert wait.outcome is Claim.WAIT  # a waits for b, still running
    store.complete_step(saga_id, "b", running, "B")
    nothing = store.claim_compensation(
        saga_id, "b", dependents=["c"], wanted=[], lease=LEASE, token=token()
    )
    assert nothing.outcome is Claim.DONE  # b has nothing to undo
    a = claim_undo(store, saga_id, "a", dependents=["b", "c"])
    assert store.complete_compensation(saga_id, "a", a) == (True, True)


def test_compensation_is_refused_once_the_pivot_started(store: SagaStore) -> None:
    saga_id = new_saga(store)
    complete(store, saga_id, "a", "A")
    claim(store, saga_id, "b", deps=["a"])  # b is the pivot: running

    refused = store.begin_compensation(saga_id, cause="cancel", reason="cancelled", pivot="b")

    assert refused.steps is None and refused.status == SagaStatus.RUNNING
    assert status(store, saga_id) == SagaStatus.RUNNING


def test_failed_compensation_fails_the_saga_with_the_step_named(store: SagaStore) -> None:
    saga_id = new_saga(store)
    complete(store, saga_id, "a", "A")
    fail(store, saga_id, "b", "boom", deps=["a"])
    store.begin_compensation(saga_id, cause="failure", failed_step="b")
    attempt = claim_undo(store, saga_id, "a")

    store.fail_compensation(saga_id, "a", attempt, "refund service down")

    record = store.get(saga_id)
    assert record is not None and record.status == SagaStatus.FAILED
    assert record.error == "compensation of step 'a' failed: refund service down"
    assert record.step("a").status == StepStatus.COMPENSATION_FAILED
    assert store.resume_compensation(saga_id, actor="ops") == ["a"]
    assert status(store, saga_id) == SagaStatus.COMPENSATING


def test_every_transition_in_the_history_is_allowed_by_the_table(store: SagaStore) -> None:
    """Walk sagas down each path, then check every status change the store recorded."""
    done = new_saga(store)
    for i, step in enumerate(STEPS):
        complete(store, done, step, i, deps=STEPS[:i])
    undone = new_saga(store)
    complete(store, undone, "a", "A")
    attempt = claim(store, undone, "b", deps=["a"])
    store.retry_step(undone, "b", attempt, "flaky", delay=0.0)
    fail(store, undone, "b", "boom", deps=["a"])
    store.begin_compensation(undone, cause="failure", failed_step="b")
    first = claim_undo(store, undone, "a")
    store.fail_compensation(undone, "a", first, "down")
    store.resume_compensation(undone)
    again = claim_undo(store, undone, "a")
    store.complete_compensation(undone, "a", again)

    for saga_id, final in ((done, SagaStatus.COMPLETED), (undone, SagaStatus.COMPENSATED)):
        assert status(store, saga_id) == final
        sagas: list[str] = []
        steps: dict[str, list[str]] = {}
        for event in store.events(saga_id):
            if event["kind"] == "saga":
                sagas.append(event["status"])
            elif event["kind"] in ("step", "compensation"):
                steps.setdefault(event["step"], [StepStatus.PENDING]).append(event["status"])
        for before, after in itertools.pairwise(sagas):
            assert SagaStatus(after) in SAGA_TRANSITIONS[SagaStatus(before)], (before, after)
        for name, seen in steps.items():
            for before, after in itertools.pairwise(seen):
                allowed = STEP_TRANSITIONS[StepStatus(before)]
                assert StepStatus(after) in allowed, (name, before, after)


def test_the_table_refuses_a_transition_it_does_not_allow() -> None:
    with pytest.raises(IllegalTransitionError, match="COMPENSATED -> RUNNING"):
        saga_move([SagaStatus.COMPENSATED], SagaStatus.RUNNING)
    with pytest.raises(IllegalTransitionError, match="COMPENSATED -> COMPLETED"):
        step_move([StepStatus.COMPENSATED], StepStatus.COMPLETED)


def test_the_sweeper_cursor_visits_every_unfinished_saga(store: SagaStore, clock: Clock) -> None:
    ids = set()
    for _ in range(7):
        ids.add(new_saga(store))
        clock.now += 1
    seen: set[str] = set()
    cursor = None
    for _ in range(3):
        page = store.unfinished(created_before=clock.now + 1, after=cursor, limit=3)
        seen |= {r.id for r in page}
        cursor = (page[-1].created_at, page[-1].id)
    assert seen == ids


def test_list_filters_by_status_and_name(store: SagaStore) -> None:
    done = new_saga(store)
    for i, step in enumerate(STEPS):
        complete(store, done, step, None, deps=STEPS[:i])
    new_saga(store)

    completed = store.list_sagas(status=SagaStatus.COMPLETED)
    assert [r.id for r in completed] == [done]
    assert len(store.list_sagas(name="t")) == 2
    assert store.list_sagas(name="other") == []


def test_unreachable_database_is_a_clear_error_on_first_use() -> None:
    store = SagaStore("postgresql://postgres:secret@127.0.0.1:1/none")  # no connection yet

    with pytest.raises(
        StoreUnavailableError, match=r"saga store .*127.0.0.1:1.* is unavailable"
    ) as e:
        store.get("x")
    assert "secret" not in str(e.value)
