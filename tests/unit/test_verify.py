"""verify_saga makes every step fail in turn on the embedded default and reports what was
compensated; assert_compensates_correctly turns a bad report into a readable AssertionError."""

from __future__ import annotations

from typing import Any

import pytest

from sagaq import Saga, SagaStatus, StepContext
from sagaq.tcc import Tcc
from sagaq.verify import InjectionRun, VerifyReport, assert_compensates_correctly, verify_saga


def act(ctx: StepContext) -> dict[str, Any]:
    return {"step": ctx.step}


def undo(ctx: StepContext, result: dict[str, Any]) -> None:
    assert result == {"step": ctx.step}


def diamond() -> Saga:
    """check (read-only, no compensation) -> a -> {b, c} -> d."""
    saga = Saga("verify_diamond")
    saga.step(name="check")(act)
    for name, deps in (("a", ["check"]), ("b", ["a"]), ("c", ["a"]), ("d", ["b", "c"])):
        saga.step(name=name, depends_on=deps, retry=2, backoff=1.0)(act).compensate(undo)
    return saga


def run_at(report: VerifyReport, step: str | None) -> InjectionRun:
    return next(r for r in report.runs if r.failed_at == step)


def test_a_correct_saga_is_ok_at_every_injection_point() -> None:
    saga = diamond()
    functions = {name: step.fn for name, step in saga.steps.items()}

    report = verify_saga(saga, {})

    assert report.ok, report.text()
    assert [r.failed_at for r in report.runs] == [None, "check", "a", "b", "c", "d"]
    assert run_at(report, None).status == SagaStatus.COMPLETED
    at_d = run_at(report, "d")
    assert at_d.status == SagaStatus.COMPENSATED
    assert at_d.completed == ("check", "a", "b", "c")
    assert sorted(at_d.compensated[:2]) == ["b", "c"] and at_d.compensated[2] == "a"
    assert at_d.compensated_exactly and at_d.order_respected
    assert run_at(report, "check").compensated == ()
    # the user's saga is untouched
    assert {name: step.fn for name, step in saga.steps.items()} == functions
    assert {step.backoff for step in saga.steps.values()} == {0.5, 1.0}


def test_a_completed_step_without_compensation_is_a_warning_not_a_failure() -> None:
    report = verify_saga(diamond(), {})

    assert report.ok
    assert report.warnings == [
        "check completed without a compensation: nothing undoes it when a later step fails "
        "(fine if it changes nothing)"
    ]
    assert "warning: check completed without a compensation" in report.text()


def test_a_compensation_that_raises_is_reported_and_fails_the_assertion() -> None:
    saga = Saga("verify_broken", compensation_retry=1)
    saga.step(name="reserve")(act).compensate(undo)
    charge = saga.step(name="charge", depends_on=["reserve"])(act)
    saga.step(name="ship", depends_on=["charge"])(act).compensate(undo)

    @charge.compensate
    def refund(ctx: StepContext, result: Any) -> None:
        raise RuntimeError("refund API rejects the charge id")

    with pytest.raises(AssertionError) as failure:
        assert_compensates_correctly(saga, {})

    message = str(failure.value)
    assert "saga 'verify_broken' does not compensate correctly" in message
    assert "- ship: ended FAILED, expected COMPENSATED" in message
    assert "- ship: compensation of charge failed: RuntimeError: refund API rejects" in message
    assert "- ship: completed but not compensated: reserve" in message
    assert "charge" in message and "│" in message  # the rendered table follows


def test_a_tcc_transaction_cancels_its_holds_and_never_undoes_a_confirm() -> None:
    trip = Tcc("verify_trip", confirm_retry=1, cancel_retry=1)
    for name in ("flight", "hotel"):
        trip.participant(name, try_=act, confirm=lambda ctx, held: held, cancel=lambda c, r: None)

    report = verify_saga(trip.saga, {})

    assert report.ok, report.text()
    assert report.warnings == []
    at_decide = run_at(report, "decide")
    assert at_decide.status == SagaStatus.COMPENSATED
    assert sorted(at_decide.compensated) == ["try_flight", "try_hotel"]
    at_confirm = run_at(report, "confirm_hotel")
    assert (at_confirm.status, at_confirm.expected_status) == (SagaStatus.FAILED,) * 2
    assert at_confirm.compensated == ()
    assert "after the pivot step" in (at_confirm.error or "")
