"""Regression tests for the bugs the simulator found, as hand-written schedules (scripted.py):
each names the interleaving that broke, and checks the outcome against the ledger."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from sagaq import Saga
from sagaq.definition import FailurePolicy
from sagaq.runtime.launch import retry
from sagaq.status import SagaStatus, StepStatus
from tests.simulation.runner import World, deterministic
from tests.simulation.scheduler import STALL_AFTER
from tests.simulation.scripted import add_step, operator_retry, run, scripted


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    logging.disable(logging.CRITICAL)
    try:
        yield World(tmp_path_factory.mktemp("found"))
    finally:
        logging.disable(logging.NOTSET)


def test_pivot_whose_workers_were_lost_is_failed_for_an_operator_not_compensated(
    world: World,
) -> None:
    """Given a pivot whose worker dies after its effect, again and again until sagaq gives up,
    then the saga is FAILED for an operator: the pivot may have applied, so neither it nor
    what comes before it is undone (it was COMPENSATED, leaving the pivot's effect standing);
    and once the cause is fixed, an operator retry completes it."""
    crashes = {("pay", "after effect", attempt): "crash" for attempt in range(1, 10)}
    sim = scripted(world, checkpoints=crashes)
    saga = Saga("pivoted")
    add_step(sim, saga, "reserve")
    add_step(sim, saga, "pay", ["reserve"], pivot=True, undoable=False)
    add_step(sim, saga, "ship", ["pay"], undoable=False)

    saga_id = run(sim, saga, {})

    record = world.store.get(saga_id)
    assert record is not None
    assert record.status == SagaStatus.FAILED, record
    assert record.failed_step == "pay" and record.error
    assert sim.ledger.of(f"{saga_id}:pay").applied
    assert sim.ledger.of(f"{saga_id}:reserve").applied  # nothing before the pivot undone
    assert sim.ledger.of(f"{saga_id}:reserve").undos == 0

    sim.healed = True
    sim.checkpoints.clear()
    with deterministic(sim.rng):
        retry(sim.rt, saga, saga_id)
        assert sim.run_until_quiet()
    record = world.store.get(saga_id)
    assert record is not None and record.status == SagaStatus.COMPLETED
    assert sim.ledger.of(f"{saga_id}:ship").applied


def test_failed_step_redelivered_before_its_errback_left_still_compensates(world: World) -> None:
    """Given a step that fails for good and whose worker dies before the ack, before Celery
    sent its errback, when the message is redelivered, then the redelivery sends the errback
    again: the saga compensates without waiting for a sweep (it stayed RUNNING)."""
    sim = scripted(world, acks={"line.charge": [(True, False)]})
    saga = Saga("line")
    add_step(sim, saga, "reserve")
    add_step(sim, saga, "charge", ["reserve"])

    saga_id = run(sim, saga, {"charge": {"fail": "permanent"}})

    record = world.store.get(saga_id)
    assert record is not None
    assert record.status == SagaStatus.COMPENSATED, "\n".join(sim.trace)
    assert record.failed_step == "charge"
    assert record.step("reserve").status == StepStatus.COMPENSATED
    assert not sim.ledger.of(f"{saga_id}:reserve").applied


def test_skipped_step_redelivered_before_its_chain_went_on_still_completes(world: World) -> None:
    """Given a step whose `when` is false (SKIPPED) and whose worker dies before the ack,
    before Celery sent the next task of the chain, when the message is redelivered, then the
    chain goes on: the saga completes without a sweep (it stayed RUNNING)."""
    sim = scripted(world, acks={"maybe.gift": [(True, False)]})
    saga = Saga("maybe")
    add_step(sim, saga, "gift", when=lambda ctx: False)
    add_step(sim, saga, "ship", ["gift"])

    saga_id = run(sim, saga, {})

    record = world.store.get(saga_id)
    assert record is not None
    assert record.status == SagaStatus.COMPLETED, "\n".join(sim.trace)
    assert record.step("gift").status == StepStatus.SKIPPED
    assert sim.ledger.of(f"{saga_id}:ship").applied
    assert sim.ledger.of(f"{saga_id}:gift").dos == 0


# -- found, not fixed yet where marked xfail (the store or the plan needs a change; known.py) --


def test_running_step_without_compensation_whose_worker_died_does_not_block_compensation(
    world: World,
) -> None:
    """Given a step without a compensation whose worker died (its message lost) while a
    sibling fails for good, then once its lease ran out the saga is COMPENSATED. (Issue 9
    §1.6a, which the simulator found too; fixed on main: every given step now gets its
    compensation task. Its ancestor's undo used to poll every 100 ms for ever.)"""
    sim = scripted(
        world,
        checkpoints={("notify", "before effect", 1): "crash"},
        redeliveries={"mute.notify": None},
    )
    saga = Saga("mute")
    add_step(sim, saga, "reserve")
    add_step(sim, saga, "notify", ["reserve"], undoable=False)
    add_step(sim, saga, "charge", ["reserve"])

    saga_id = run(sim, saga, {"charge": {"fail": "permanent"}})

    record = world.store.get(saga_id)
    assert record is not None and record.status == SagaStatus.COMPENSATED, record
    assert not sim.ledger.of(f"{saga_id}:reserve").applied


def test_pivot_whose_worker_died_is_not_stuck_once_the_deadline_passed(world: World) -> None:
    """Given a pivot whose worker dies before its effect, redelivered only after the deadline
    passed, then the saga still ends (the pivot started before the deadline: it is run again,
    or the saga is FAILED for an operator). It used to stay RUNNING for ever: each claim said
    EXPIRED and the compensation it started was refused because the pivot had started."""
    sim = scripted(
        world,
        checkpoints={("pay", "before effect", 1): "crash"},
        redeliveries={"late.pay": 5.0},
    )
    saga = Saga("late", deadline=2.0)
    add_step(sim, saga, "reserve")
    add_step(sim, saga, "pay", ["reserve"], pivot=True, undoable=False)

    saga_id = run(sim, saga, {})

    record = world.store.get(saga_id)
    assert record is not None and record.status == SagaStatus.COMPLETED, record.status
    assert sim.ledger.of(f"{saga_id}:pay").applied
    assert sim.ledger.of(f"{saga_id}:reserve").undos == 0


def test_operator_retry_after_the_pivot_leaves_steps_before_it_alone(world: World) -> None:
    """Given a saga that FAILED after its pivot, with a step before the pivot that its `when`
    skipped, when an operator retries it after the deadline passed, then it completes. The
    retry used to put the skipped step back to PENDING; its claim then said EXPIRED (it is
    before the pivot) and compensation was refused (the pivot completed): RUNNING for ever."""
    sim = scripted(world)
    saga = Saga("resumed", deadline=2.0, forward_retry=0)
    add_step(sim, saga, "gift", when=lambda ctx: False)
    add_step(sim, saga, "pay", ["gift"], pivot=True, undoable=False)
    add_step(sim, saga, "ship", ["pay"], undoable=False)
    saga_id = run(sim, saga, {"ship": {"fail": "permanent"}})
    record = world.store.get(saga_id)
    assert record is not None and record.status == SagaStatus.FAILED

    sim.advance(sim.clock.now + 10.0)  # the deadline passes while the operator fixes things
    operator_retry(sim, saga, saga_id)

    record = world.store.get(saga_id)
    assert record is not None and record.status == SagaStatus.COMPLETED, record


def test_operator_retry_runs_again_a_step_whose_worker_died(world: World) -> None:
    """Given a saga past its pivot where one branch's worker died (message lost, the step
    stays RUNNING) and the other branch failed for good (FAILED for an operator), when an
    operator retries it, then it completes without a sweep. The retry used to re-publish only
    the PENDING and FAILED steps: the dead branch's dependent polled every 100 ms for ever."""
    sim = scripted(
        world,
        checkpoints={("pack", "before effect", 1): "crash"},
        redeliveries={"branches.pack": None},
    )
    saga = Saga("branches", forward_retry=0)
    add_step(sim, saga, "pay", pivot=True, undoable=False)
    add_step(sim, saga, "pack", ["pay"], undoable=False)
    add_step(sim, saga, "ship", ["pack"], undoable=False)
    add_step(sim, saga, "invoice", ["pay"], undoable=False)
    saga_id = run(sim, saga, {"invoice": {"fail": "permanent"}})
    record = world.store.get(saga_id)
    assert record is not None and record.status == SagaStatus.FAILED

    sim.advance(sim.clock.now + 10.0)  # the dead worker's lease ran out meanwhile
    operator_retry(sim, saga, saga_id)

    record = world.store.get(saga_id)
    assert record is not None and record.status == SagaStatus.COMPLETED, record
    assert sim.ledger.of(f"{saga_id}:ship").applied


@pytest.mark.xfail(strict=True, reason="a child past its pivot counts as a plain failure")
def test_sub_saga_failed_after_its_pivot_does_not_let_the_parent_compensate(world: World) -> None:
    """Given a sub-saga whose child FAILED after its own pivot (its irreversible steps
    happened), then the parent is not COMPENSATED as if the child had done nothing: it is
    FAILED for an operator. The parent treated the child's FAILED as "did not complete",
    compensated itself, and left the child's effects standing."""
    sim = scripted(world)
    child = Saga("kid", forward_retry=0)
    add_step(sim, child, "commit", pivot=True, undoable=False)
    add_step(sim, child, "notify", ["commit"], undoable=False)
    parent = Saga("parent")
    add_step(sim, parent, "reserve")
    parent.sub_saga("delegate", "kid", input=lambda ctx: ctx.input["child"], depends_on=["reserve"])
    kid_input = {"plan": {"notify": {"fail": "permanent"}}, "when": {}}

    saga_id = run(sim, parent, {}, children=[child], child=kid_input)

    record = world.store.get(saga_id)
    assert record is not None
    assert record.status != SagaStatus.COMPENSATED, "the child's pivot stands, undone nothing"


def test_operator_retry_of_a_compensation_keeps_the_reason_it_compensated(world: World) -> None:
    """Given a saga whose compensation gave up (FAILED), when an operator retries it and it
    ends COMPENSATED, then it still says why it compensated (the failed step's error); since
    fda6641 on main it said nothing (error None)."""
    sim = scripted(world)
    saga = Saga("refund", compensation_retry=0)
    add_step(sim, saga, "reserve")
    add_step(sim, saga, "charge", ["reserve"])
    saga_id = run(sim, saga, {"reserve": {"undo": "permanent"}, "charge": {"fail": "permanent"}})
    record = world.store.get(saga_id)
    assert record is not None and record.status == SagaStatus.FAILED

    operator_retry(sim, saga, saga_id)

    record = world.store.get(saga_id)
    assert record is not None and record.status == SagaStatus.COMPENSATED
    assert record.failed_step == "charge"
    assert record.error, "COMPENSATED without a reason"


def test_wait_all_with_its_errback_and_a_siblings_message_lost_is_recovered_by_sweeps(
    world: World,
) -> None:
    """Given wait-all, a step failed for good while a sibling branch's next message was lost,
    and the errback's message was lost too, when sweeps run, then the sibling runs and the
    saga compensates. The sweeper called the errback's body, which said "wait for the
    sibling", dropped that answer, and never re-published the sibling: RUNNING for ever."""
    sim = scripted(
        world,
        acks={"patient.pack": [(True, False)], "sagaq.step_failed": [(True, False)]},
        redeliveries={"patient.pack": None, "sagaq.step_failed": None},
    )
    saga = Saga("patient", failure_policy=FailurePolicy.WAIT_ALL)
    add_step(sim, saga, "reserve")
    add_step(sim, saga, "charge", ["reserve"])
    add_step(sim, saga, "pack", ["reserve"])
    add_step(sim, saga, "label", ["pack"])
    saga_id = run(sim, saga, {"charge": {"fail": "fatal"}})
    record = world.store.get(saga_id)
    assert record is not None and record.status == SagaStatus.RUNNING  # the losses left it

    with deterministic(sim.rng):
        for _ in range(3):
            sim.advance(sim.clock.now + STALL_AFTER + 1)
            sim.act("sweep", sim.sweep)
            sim.run_until_quiet()

    record = world.store.get(saga_id)
    assert record is not None and record.status == SagaStatus.COMPENSATED, "\n".join(sim.trace)
    assert sim.ledger.of(f"{saga_id}:label").dos == 1  # the sibling ran before the undo
    assert not any(sim.ledger.of(f"{saga_id}:{s}").applied for s in ("reserve", "pack", "label"))
