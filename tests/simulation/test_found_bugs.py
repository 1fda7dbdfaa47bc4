"""Regression tests for the bugs the simulator found, as hand-written schedules (scripted.py):
each names the interleaving that broke, and checks the outcome against the ledger."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from sagaq import Saga
from sagaq.runtime.launch import retry
from sagaq.status import SagaStatus, StepStatus
from tests.simulation.runner import World, deterministic
from tests.simulation.scripted import add_step, run, scripted


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
