"""Conditional steps, shared context and sub-sagas, through a real worker on every backend."""

from __future__ import annotations

from sagaq import SagaStatus, StepStatus
from tests.harness import Harness


def test_step_whose_condition_is_false_is_skipped_and_its_dependents_still_run(
    h: Harness,
) -> None:
    result = h.run("conditional", {"express": False})

    assert result.status == SagaStatus.COMPLETED
    assert result.step("c2").status == StepStatus.SKIPPED
    assert h.ledger.of(result.id, "do") == ["c1", "c3"]
    assert result.results["c3"]["saw"] == []  # the skipped dependency has no result


def test_skipped_step_is_not_compensated(h: Harness) -> None:
    result = h.run("conditional", {"express": False, "fail_at": "c3"})

    assert result.status == SagaStatus.COMPENSATED
    assert h.ledger.of(result.id, "undo") == ["c1"]
    assert result.step("c2").status == StepStatus.SKIPPED


def test_step_whose_condition_is_true_runs_and_is_compensated(h: Harness) -> None:
    result = h.run("conditional", {"express": True, "fail_at": "c3"})

    assert h.ledger.of(result.id, "undo") == ["c2", "c1"]


def test_ctx_data_reaches_later_steps_and_compensations_and_headers_every_step(
    h: Harness,
) -> None:
    ok = h.engine.start("shared", {}, headers={"correlation_id": "req-42"}).wait(30)
    failed = h.run("shared", {"fail_at": "x2"})

    assert ok.results["x2"] == {"saw": f"R-{ok.id}:x1", "correlation": "req-42"}
    assert failed.status == SagaStatus.COMPENSATED
    assert h.ledger.of(failed.id, f"undo:R-{failed.id}:x1") == ["x1"]


def test_sub_saga_completes_its_parent_step_with_the_child_results(h: Harness) -> None:
    result = h.run("parent", {})

    assert result.status == SagaStatus.COMPLETED
    child_id = result.results["child"]["saga_id"]
    child = h.engine.status(child_id)
    assert child.status == SagaStatus.COMPLETED
    assert set(result.results["child"]["results"]) == {"s1", "s2", "s3", "s4", "s5"}
    assert h.ledger.of(child_id, "do") == ["s1", "s2", "s3", "s4", "s5"]


def test_compensating_the_parent_compensates_the_completed_child(h: Harness) -> None:
    result = h.run("parent", {"fail_at": "after"})

    assert result.status == SagaStatus.COMPENSATED
    assert result.compensated_steps == ("child", "before")
    child = h.engine.status(result.step("child").result["saga_id"])
    assert child.status == SagaStatus.COMPENSATED
    assert child.error == f"cancelled: parent saga {result.id} is compensating"
    assert h.ledger.of(child.id, "undo") == ["s5", "s4", "s3", "s2", "s1"]
