"""Regression tests for the confirmed bugs of issue 9 (failure semantics on every path). Each
test is named after the bug it pins; they run on the embedded default with a real in-process
Celery worker, short heartbeats (0.2 s, so a lease is 0.6 s) and the ledger of effects."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from sagaq import (
    InvalidStateError,
    NonRetryableError,
    Saga,
    SagaQ,
    SagaStatus,
    StepContext,
    StepStatus,
)
from sagaq.definition import FailurePolicy
from sagaq.embedded import embedded_app, in_process_worker
from sagaq.runtime import sweep
from sagaq.tcc import Tcc
from tests.harness import Ledger

QUEUE = "semantics"


def build(ledger: Ledger) -> list[Any]:
    def act(ctx: StepContext) -> dict[str, str]:
        ledger.gate(f"started:{ctx.saga_id}:{ctx.step}").set()
        if ctx.step in ctx.input.get("wait", []):
            ledger.gate(f"{ctx.saga_id}:{ctx.step}").wait(20)
        fixed = ledger.gate(f"fixed:{ctx.saga_id}").is_set() or (
            ledger.gate(f"fixed:{ctx.input.get('tag')}").is_set()
        )
        if ctx.step in ctx.input.get("fail", []) and not fixed:
            ledger.record("fail", ctx)
            raise NonRetryableError(f"injected failure at {ctx.step}")
        ledger.record("do", ctx)
        return {"step": ctx.step}

    def undo(ctx: StepContext, result: Any) -> None:
        if ctx.step in ctx.input.get("slow_undo", []):
            ledger.gate(f"{ctx.saga_id}:undo:{ctx.step}").wait(20)
        ledger.record("undo", ctx)

    def saga(name: str, steps: dict[str, list[str]], **options: Any) -> Saga:
        built = Saga(name, queue=QUEUE, **options)
        for step, deps in steps.items():
            built.step(name=step, depends_on=deps)(act).compensate(undo)
        return built

    line = saga("sem_line", {"a": [], "b": ["a"], "c": ["b"]})
    pivoted = Saga("sem_pivoted", queue=QUEUE, forward_retry=0)
    pivoted.step(name="a")(act).compensate(undo)
    pivoted.step(name="p", depends_on=["a"], pivot=True)(act)
    pivoted.step(name="c", depends_on=["p"])(act).compensate(undo)

    trip = Tcc("sem_trip", queue=QUEUE, confirm_backoff=0.01)
    for who in ("flight", "hotel"):
        trip.participant(who, try_=act, confirm=lambda ctx, held: act(ctx), cancel=undo)

    kid = saga("sem_kid", {"k1": [], "k2": ["k1"]})
    mom = Saga("sem_mom", queue=QUEUE, failure_policy=FailurePolicy.FAIL_FAST)
    mom.step(name="m1")(act).compensate(undo)
    mom.sub_saga("kid", "sem_kid", input=lambda ctx: ctx.input["kid"], depends_on=["m1"])
    mom.step(name="boom", depends_on=["m1"])(act).compensate(undo)
    later = Saga("sem_later", queue=QUEUE, forward_retry=0)
    later.step(name="p", pivot=True)(act)
    later.sub_saga("kid", "sem_kid", input=lambda ctx: ctx.input["kid"], depends_on=["p"])

    timed = Saga("sem_timed", queue=QUEUE)
    timed.step(name="t1")(act).compensate(undo)

    @timed.step(name="t2", depends_on=["t1"], timeout=0.2)
    def slow_charge(ctx: StepContext) -> dict[str, str]:
        time.sleep(0.6)
        ledger.record("do", ctx)  # the effect lands after the timeout
        return {"charge": "ch-1"}

    slow_charge.compensate(undo)

    odd = Saga("sem_odd", queue=QUEUE)
    odd.step(name="o1")(act).compensate(undo)

    @odd.step(name="o2", depends_on=["o1"])
    def unstorable(ctx: StepContext) -> object:
        ledger.record("do", ctx)
        return object()

    unstorable.compensate(undo)

    # a -> c, b -> c, b -> d: not series-parallel, compiled in layers [a, b], [c, d].
    layered = saga(
        "sem_layered",
        {"a": [], "b": [], "c": ["a", "b"], "d": ["b"]},
        failure_policy=FailurePolicy.WAIT_ALL,
    )
    return [line, pivoted, trip, kid, mom, later, timed, odd, layered]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[SagaQ, Ledger]]:
    app = embedded_app("sagaq-semantics")
    engine = SagaQ(app, store=f"sqlite:///{tmp_path_factory.mktemp('sem') / 's.db'}", heartbeat=0.2)
    ledger = Ledger()
    engine.register(*build(ledger))
    with in_process_worker(app, engine.queues(), concurrency=6):
        yield engine, ledger
    engine.store.dispose()


def wait_for(check: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


def step_status(engine: SagaQ, saga_id: str, step: str) -> StepStatus:
    return engine.status(saga_id).step(step).status


# -- 1. the pivot ------------------------------------------------------------------------------


def test_cancel_after_the_tcc_decided_is_refused_and_no_confirm_is_cancelled(env: Any) -> None:
    engine, ledger = env
    handle = engine.start("sem_trip", {"wait": ["confirm_flight"]})
    wait_for(lambda: step_status(engine, handle.id, "decide") == StepStatus.COMPLETED)

    with pytest.raises(InvalidStateError, match="past its pivot step 'decide'"):
        engine.cancel(handle.id, reason="customer changed their mind")

    ledger.gate(f"{handle.id}:confirm_flight").set()
    result = handle.wait(20)
    assert result.status == SagaStatus.COMPLETED
    assert ledger.of(handle.id, "undo") == []
    assert sorted(ledger.of(handle.id, "do")) == [
        "confirm_flight", "confirm_hotel", "try_flight", "try_hotel",
    ]  # fmt: skip


def test_a_deadline_passing_after_the_pivot_undoes_nothing(env: Any) -> None:
    engine, ledger = env
    handle = engine.start("sem_pivoted", {"wait": ["c"]}, deadline=0.5)
    wait_for(lambda: step_status(engine, handle.id, "c") == StepStatus.RUNNING)
    time.sleep(0.6)  # past the deadline, while c runs

    engine.sweep(stall_after=0)
    ledger.gate(f"{handle.id}:c").set()
    result = handle.wait(20)

    assert result.status == SagaStatus.COMPLETED
    assert ledger.of(handle.id, "undo") == []


def test_retry_after_the_pivot_once_the_deadline_passed_runs_forward(env: Any) -> None:
    engine, ledger = env
    handle = engine.start("sem_pivoted", {"fail": ["c"]}, deadline=0.5)
    failed = handle.wait(20)
    assert failed.status == SagaStatus.FAILED and failed.failed_step == "c"
    time.sleep(0.6)

    ledger.gate(f"fixed:{handle.id}").set()
    engine.retry(handle.id)
    result = handle.wait(20)

    assert result.status == SagaStatus.COMPLETED
    assert ledger.of(handle.id, "undo") == []


# -- 2. sub-sagas ------------------------------------------------------------------------------


def test_cancelling_a_parent_cancels_its_running_child(env: Any) -> None:
    engine, ledger = env
    marker = str(uuid.uuid4())
    handle = engine.start("sem_mom", {"kid": {"wait": ["k1"], "tag": marker}})
    wait_for(lambda: step_status(engine, handle.id, "kid") == StepStatus.RUNNING)
    wait_for(lambda: len([r for r in engine.list(saga="sem_kid") if marker in str(r.input)]) == 1)
    child = next(r for r in engine.list(saga="sem_kid") if marker in str(r.input))
    wait_for(lambda: step_status(engine, child.id, "k1") == StepStatus.RUNNING)
    wait_for(lambda: step_status(engine, handle.id, "boom") == StepStatus.COMPLETED)

    engine.cancel(handle.id, reason="customer cancelled")
    wait_for(lambda: engine.status(child.id).status == SagaStatus.COMPENSATING)
    ledger.gate(f"{child.id}:k1").set()  # the child's running step ends after the cancel
    result = handle.wait(20)

    assert result.status == SagaStatus.COMPENSATED
    kid = engine.wait(child.id, 20)
    assert kid.status == SagaStatus.COMPENSATED
    assert ledger.of(child.id, "undo") == ["k1"] and ledger.of(child.id, "do") == ["k1"]
    assert ledger.of(handle.id, "undo") == ["boom", "m1"]


def test_a_parent_failing_elsewhere_under_fail_fast_compensates_its_running_child(
    env: Any,
) -> None:
    engine, ledger = env
    marker = str(uuid.uuid4())
    handle = engine.start(
        "sem_mom", {"kid": {"wait": ["k2"], "tag": marker}, "fail": ["boom"], "wait": ["boom"]}
    )
    wait_for(lambda: len([r for r in engine.list(saga="sem_kid") if marker in str(r.input)]) == 1)
    child = next(r for r in engine.list(saga="sem_kid") if marker in str(r.input))
    wait_for(lambda: step_status(engine, child.id, "k2") == StepStatus.RUNNING)

    ledger.gate(f"{handle.id}:boom").set()  # boom fails while the child runs
    wait_for(lambda: engine.status(handle.id).status != SagaStatus.RUNNING)
    ledger.gate(f"{child.id}:k2").set()
    result = handle.wait(20)

    assert result.status == SagaStatus.COMPENSATED and result.failed_step == "boom"
    assert engine.wait(child.id, 20).status == SagaStatus.COMPENSATED
    assert ledger.of(child.id, "undo") == ["k2", "k1"]


def test_a_forward_retry_of_a_sub_saga_step_starts_a_fresh_child(env: Any) -> None:
    engine, ledger = env
    marker = str(uuid.uuid4())
    handle = engine.start("sem_later", {"kid": {"fail": ["k2"], "tag": marker}})
    failed = handle.wait(20)
    assert failed.status == SagaStatus.FAILED and failed.failed_step == "kid"
    first = next(r for r in engine.list(saga="sem_kid") if marker in str(r.input))
    assert first.status == SagaStatus.COMPENSATED

    ledger.gate(f"fixed:{marker}").set()  # the cause is fixed: the retry runs a fresh child
    engine.retry(handle.id)
    result = handle.wait(20)

    kids = [r for r in engine.list(saga="sem_kid") if marker in str(r.input)]
    assert result.status == SagaStatus.COMPLETED
    assert sorted(k.status for k in kids) == [SagaStatus.COMPENSATED, SagaStatus.COMPLETED]


# -- 4. the sweeper never duplicates work in flight --------------------------------------------


def test_the_sweeper_never_resends_a_compensation_that_is_still_running(env: Any) -> None:
    engine, ledger = env
    handle = engine.start("sem_line", {"fail": ["c"], "slow_undo": ["b"]})
    wait_for(lambda: step_status(engine, handle.id, "b") == StepStatus.COMPENSATING)

    for _ in range(5):  # a slow refund, and sweeps that think it stalled
        engine.sweep(stall_after=0)
        time.sleep(0.1)
    assert ledger.of(handle.id, "undo") == []
    ledger.gate(f"{handle.id}:undo:b").set()
    result = handle.wait(20)

    assert result.status == SagaStatus.COMPENSATED
    assert ledger.of(handle.id, "undo") == ["b", "a"]  # once each, in reverse order


def test_a_queue_backlog_is_not_taken_for_lost_work(env: Any) -> None:
    engine, ledger = env
    handle = engine.start("sem_line", {"wait": ["b"]})
    wait_for(lambda: step_status(engine, handle.id, "b") == StepStatus.RUNNING)

    for _ in range(5):
        engine.sweep(stall_after=0)  # re-publishes b (and c): harmless duplicates
        time.sleep(0.1)
    ledger.gate(f"{handle.id}:b").set()
    result = handle.wait(20)

    assert result.status == SagaStatus.COMPLETED
    assert ledger.of(handle.id, "do") == ["a", "b", "c"]  # b never ran twice


def test_a_step_lost_with_its_worker_is_resumed_after_three_missed_heartbeats(env: Any) -> None:
    """Issue 13: whatever its timeout, a dead worker's step is taken over once its lease (three
    heartbeats, 0.6 s here) ran out - not after a 660 s lease."""
    engine, ledger = env
    store = engine.store
    saga_id, _ = store.create_saga(
        str(uuid.uuid4()), "sem_line", {}, ["a", "b", "c"], undoable=["a", "b", "c"]
    )
    store.mark_published(saga_id)
    lost = store.claim_step(saga_id, "a", deps=[], wanted=[], token="dead-worker#0", lease=0.6)
    assert lost.attempts == 1  # ... and its worker died: no heartbeat, no completion

    assert engine.sweep().resumed == 0  # within its lease: left alone
    time.sleep(0.7)
    report = engine.sweep()

    assert report.resumed == 1 and report.lost_steps == 1
    result = engine.wait(saga_id, 20)
    assert result.status == SagaStatus.COMPLETED and result.step("a").attempts == 2
    assert ledger.of(saga_id, "do") == ["a", "b", "c"]


# -- 5. effects that happened are compensated ---------------------------------------------------


def test_a_step_that_timed_out_is_compensated_after_its_effect_landed(env: Any) -> None:
    engine, ledger = env
    result = engine.start("sem_timed", {}).wait(20)

    assert result.status == SagaStatus.COMPENSATED and result.failed_step == "t2"
    assert "did not finish within 0.2s" in (result.error or "")
    events = [(k, s) for k, sid, s in ledger.events if sid == result.id]
    assert events == [("do", "t1"), ("do", "t2"), ("undo", "t2"), ("undo", "t1")]


def test_a_step_whose_result_is_not_json_is_compensated(env: Any) -> None:
    engine, ledger = env
    result = engine.start("sem_odd", {}).wait(20)

    assert result.status == SagaStatus.COMPENSATED and result.failed_step == "o2"
    assert ledger.of(result.id, "undo") == ["o2", "o1"]


# -- 8. the sweeper is robust --------------------------------------------------------------------


def test_one_saga_whose_recovery_raises_does_not_abort_the_sweep(env: Any) -> None:
    engine, _ = env
    store = engine.store
    broken, _ = store.create_saga(str(uuid.uuid4()), "sem_line", {}, ["a", "b", "c"])
    lost, _ = store.create_saga(str(uuid.uuid4()), "sem_line", {}, ["a", "b", "c"])
    send = engine.runtime.send

    def poisoned(sig: Any) -> None:  # one saga's canvas cannot be sent
        if broken in repr(sig):
            raise ValueError("cannot encode this one")
        send(sig)

    engine.runtime.send = poisoned
    try:
        report = sweep(engine.runtime, stall_after=0, page=10_000)
    finally:
        engine.runtime.send = send

    assert report.errors == 1 and report.republished >= 1
    assert engine.wait(lost, 20).status == SagaStatus.COMPLETED
    store.delete_saga(broken)


def test_start_leaves_nothing_behind_when_publishing_fails_with_any_error(env: Any) -> None:
    engine, _ = env
    before = len(engine.list(saga="sem_line", limit=100_000))

    def refuse(sig: Any) -> None:
        raise ValueError("kombu could not encode the message")

    send, engine.runtime.send = engine.runtime.send, refuse
    try:
        with pytest.raises(ValueError, match="could not encode"):
            engine.start("sem_line", {})
    finally:
        engine.runtime.send = send
    assert len(engine.list(saga="sem_line", limit=100_000)) == before


def test_stuck_sagas_do_not_starve_a_lost_publish(env: Any) -> None:
    engine, ledger = env
    stuck = [engine.start("sem_line", {"wait": ["a"]}).id for _ in range(4)]
    for saga_id in stuck:
        wait_for(lambda s=saga_id: step_status(engine, s, "a") == StepStatus.RUNNING)
    lost, _ = engine.store.create_saga(str(uuid.uuid4()), "sem_line", {}, ["a", "b", "c"])

    engine.runtime.sweep_cursor = None
    for _ in range(12):  # pages of 2: every unfinished saga is reached within a few passes
        sweep(engine.runtime, stall_after=0, page=2)

    assert engine.wait(lost, 20).status == SagaStatus.COMPLETED
    for saga_id in stuck:
        ledger.gate(f"{saga_id}:a").set()
        assert engine.wait(saga_id, 20).status == SagaStatus.COMPLETED


# -- 9. wait-all on a DAG that is not series-parallel -------------------------------------------


def test_wait_all_on_a_layered_dag_does_not_wait_for_a_step_the_canvas_never_runs(
    env: Any,
) -> None:
    engine, ledger = env
    started = time.monotonic()
    result = engine.start("sem_layered", {"fail": ["a"]}).wait(30)

    assert result.status == SagaStatus.COMPENSATED and result.failed_step == "a"
    assert time.monotonic() - started < 10  # not the 60 s grace
    assert ledger.of(result.id, "undo") == ["b"]
    assert result.step("d").status == StepStatus.SKIPPED
