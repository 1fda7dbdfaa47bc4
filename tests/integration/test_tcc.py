"""TCC transactions on Redis + PostgreSQL with a real worker: confirms after every try, cancels
for exactly the tries that succeeded, confirm retried forward, a cancel that gives up."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery
from pydantic import BaseModel

from sagaq import NonRetryableError, SagaQ, SagaResult, SagaStatus, StepContext, StepStatus
from sagaq.embedded import in_process_worker
from sagaq.tcc import Tcc
from tests.harness import PG_URL, REDIS_URL, Ledger, pg_schema_url, require

pytestmark = pytest.mark.redis


class TripIn(BaseModel):
    fail_try: str | None = None  # this participant's try fails for good
    confirm_failures: dict[str, int] = {}  # participant -> how many confirm attempts fail
    broken_cancel: str | None = None  # this participant's cancel always fails


def participant(ctx: StepContext) -> str:
    return ctx.step.removeprefix("try_").removeprefix("confirm_")


def build_trip(ledger: Ledger, queue: str) -> Tcc:
    """flight and hotel are held in parallel; payment once both are held."""

    def try_(ctx: StepContext) -> dict[str, str]:
        if ctx.input.fail_try == participant(ctx):
            ledger.record("try-failed", ctx)
            raise NonRetryableError(f"no {participant(ctx)} available")
        ledger.record("try", ctx)
        return {"hold": f"{participant(ctx)}:{ctx.saga_id}"}

    def confirm(ctx: StepContext, held: dict[str, str]) -> None:
        assert held == {"hold": f"{participant(ctx)}:{ctx.saga_id}"}
        if ctx.attempt <= ctx.input.confirm_failures.get(participant(ctx), 0):
            raise ConnectionError(f"confirm attempt {ctx.attempt} timed out")
        ledger.record("confirm", ctx)

    def cancel(ctx: StepContext, held: dict[str, str]) -> None:
        assert held == {"hold": f"{participant(ctx)}:{ctx.saga_id}"}
        if ctx.input.broken_cancel == participant(ctx):
            raise ConnectionError(f"{participant(ctx)} service unavailable")
        ledger.record("cancel", ctx)

    trip = Tcc(
        "tcc_trip",
        input=TripIn,
        queue=queue,
        confirm_retry=3,
        confirm_backoff=0.01,
        cancel_retry=2,
        cancel_backoff=0.01,
    )
    for name, deps in (("flight", []), ("hotel", []), ("payment", ["flight", "hotel"])):
        trip.participant(name, try_=try_, confirm=confirm, cancel=cancel, depends_on=deps)
    return trip


@pytest.fixture(scope="module")
def running() -> Iterator[tuple[SagaQ, Ledger]]:
    """An engine with the TCC registered and a real worker on Redis; store on PostgreSQL."""
    require(PG_URL, REDIS_URL)
    app = Celery("sagaq-tcc-tests", set_as_current=False)
    app.config_from_object("celeryconfig")
    app.conf.update(broker_url=REDIS_URL, result_backend=REDIS_URL, worker_send_task_events=False)
    ledger = Ledger()
    with pg_schema_url() as store_url:
        engine = SagaQ(app, store=store_url)
        engine.register(build_trip(ledger, f"sagaq-tcc-{uuid.uuid4().hex[:8]}").saga)
        try:
            with in_process_worker(app, engine.queues(), concurrency=4):
                yield engine, ledger
        finally:
            engine.store.dispose()


def run(running: tuple[SagaQ, Ledger], **input: Any) -> tuple[SagaResult, Ledger]:
    engine, ledger = running
    return engine.start("tcc_trip", input).wait(30), ledger


def who(ledger: Ledger, result: SagaResult, kind: str) -> set[str]:
    steps = ledger.of(result.id, kind)
    return {s.removeprefix("try_").removeprefix("confirm_") for s in steps}


def test_when_every_try_succeeds_every_participant_confirms(
    running: tuple[SagaQ, Ledger],
) -> None:
    result, ledger = run(running)

    assert result.status == SagaStatus.COMPLETED
    assert who(ledger, result, "try") == {"flight", "hotel", "payment"}
    assert who(ledger, result, "confirm") == {"flight", "hotel", "payment"}
    assert who(ledger, result, "cancel") == set()


def test_a_failed_try_cancels_exactly_the_tries_that_succeeded(
    running: tuple[SagaQ, Ledger],
) -> None:
    result, ledger = run(running, fail_try="payment")

    assert result.status == SagaStatus.COMPENSATED
    assert result.failed_step == "try_payment"
    assert who(ledger, result, "cancel") == {"flight", "hotel"}
    assert set(result.compensated_steps) == {"try_flight", "try_hotel"}
    assert who(ledger, result, "confirm") == set()
    assert result.step("decide").status == StepStatus.SKIPPED


def test_a_failed_parallel_try_cancels_its_sibling_only_if_that_one_held(
    running: tuple[SagaQ, Ledger],
) -> None:
    for _ in range(3):
        result, ledger = run(running, fail_try="hotel")

        assert result.status == SagaStatus.COMPENSATED
        assert who(ledger, result, "cancel") == who(ledger, result, "try")
        assert "payment" not in who(ledger, result, "try")
        assert who(ledger, result, "confirm") == set()


def test_a_confirm_that_fails_transiently_is_retried_and_completes(
    running: tuple[SagaQ, Ledger],
) -> None:
    result, ledger = run(running, confirm_failures={"hotel": 2})

    assert result.status == SagaStatus.COMPLETED
    assert result.step("confirm_hotel").attempts == 3
    assert who(ledger, result, "confirm") == {"flight", "hotel", "payment"}
    assert who(ledger, result, "cancel") == set()


def test_a_confirm_that_keeps_failing_fails_the_transaction_without_cancelling(
    running: tuple[SagaQ, Ledger],
) -> None:
    result, ledger = run(running, confirm_failures={"hotel": 99})

    assert result.status == SagaStatus.FAILED
    assert result.failed_step == "confirm_hotel"
    assert result.step("confirm_hotel").attempts == 4  # confirm_retry=3
    assert "after the pivot step" in (result.error or "")
    assert who(ledger, result, "cancel") == set()


def test_a_cancel_that_keeps_failing_fails_the_transaction_with_the_reason(
    running: tuple[SagaQ, Ledger],
) -> None:
    result, ledger = run(running, fail_try="payment", broken_cancel="flight")

    assert result.status == SagaStatus.FAILED
    assert result.error is not None
    assert result.error.startswith("compensation of step 'try_flight' failed: ConnectionError")
    assert "flight service unavailable" in result.error
    flight = result.step("try_flight")
    assert flight.status == StepStatus.COMPENSATION_FAILED
    assert flight.compensation_attempts == 3  # cancel_retry=2
    assert "flight" not in who(ledger, result, "cancel")
