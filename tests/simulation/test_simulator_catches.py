"""The simulator has teeth: with a bug planted in the runtime, some schedule breaks an
invariant and says which (a checker that never fails proves nothing)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest

import sagaq.runtime.sweeper as sweeper
import sagaq.runtime.undo as undo
import tests.simulation.scheduler as scheduler
from sagaq.definition.plan import SagaPlan
from sagaq.definition.saga import Saga
from sagaq.runtime.base import Halt, Outcome, Runtime
from tests.simulation.runner import World, run_schedule, shrink


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    logging.disable(logging.CRITICAL)
    try:
        yield World(tmp_path_factory.mktemp("teeth"))
    finally:
        logging.disable(logging.NOTSET)


def first_problem(world: World, needle: str, seeds: int = 200) -> str | None:
    for seed in range(seeds):
        for problem in run_schedule(world, seed).problems:
            if needle in problem:
                return problem
    return None


def test_undoing_in_forward_order_is_caught(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """Planted: compensations run in forward order and the store no longer checks."""

    def forward(plan: SagaPlan, steps: Any) -> Any:
        chosen = set(steps)
        return plan.forward_shape(chosen) if chosen else None

    monkeypatch.setattr(SagaPlan, "compensation_shape", forward)
    monkeypatch.setattr(undo, "_dependents", lambda saga, step: set())
    assert first_problem(world, "before its dependent")


def test_a_lost_errback_is_caught(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """Planted: the errback does nothing, so a failed saga never compensates by itself."""

    def ignore(rt: Runtime, saga: Saga, saga_id: str, step: str) -> Outcome:
        return Halt()

    monkeypatch.setattr(scheduler, "on_step_failed", ignore)  # the errback task's body
    monkeypatch.setattr(sweeper, "on_step_failed", ignore)
    assert first_problem(world, "not terminal without a sweep")


def test_a_compensation_that_undoes_nothing_is_caught(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Planted: compensation tasks record COMPENSATED without calling the user's function."""
    monkeypatch.setattr(undo, "call_user", lambda fn, args, timeout: None)
    assert first_problem(world, "effect stands")


def test_a_failing_schedule_shrinks_to_a_shorter_one_that_still_fails(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Given a planted bug and a long failing schedule, shrinking switches faults off and
    keeps a schedule that still fails, with a trace no longer, that replays as printed."""
    monkeypatch.setattr(undo, "call_user", lambda fn, args, timeout: None)
    failed = next(
        o
        for o in (run_schedule(world, seed) for seed in range(200))
        if not o.ok and len(o.trace) > 40
    )

    smaller = shrink(world, failed)

    assert not smaller.ok and len(smaller.trace) <= len(failed.trace)
    assert run_schedule(world, smaller.seed, smaller.without).trace == smaller.trace
    assert f"SAGAQ_SIM_SEED={failed.seed}" in smaller.replay
