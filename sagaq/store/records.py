"""What the store hands out: records of sagas and steps, and claims (may a task go ahead?)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from enum import Enum
from typing import Any

from sagaq.status import SagaStatus, StepStatus


@dataclass(frozen=True)
class StepRecord:
    name: str
    status: StepStatus
    attempts: int
    result: Any
    error: str | None
    started_at: float | None
    finished_at: float | None
    compensation_attempts: int
    compensation_error: str | None
    compensation_started_at: float | None
    compensated_at: float | None
    task_id: str | None = None
    heartbeat_at: float | None = None
    applied: bool = False
    undoable: bool = False


@dataclass(frozen=True)
class SagaRecord:
    id: str
    name: str
    status: SagaStatus
    input: dict[str, Any]
    idempotency_key: str | None
    failed_step: str | None
    error: str | None
    created_at: float
    updated_at: float
    finished_at: float | None
    deadline_at: float | None
    headers: dict[str, str]
    parent_id: str | None
    steps: tuple[StepRecord, ...]
    parent_step: str | None = None
    cause: str | None = None

    def step(self, name: str) -> StepRecord:
        return next(s for s in self.steps if s.name == name)


class Claim(Enum):
    RUN = "run"  # go ahead: this attempt holds the step
    DONE = "done"  # already done (or nothing to undo): let the canvas go on
    WAIT = "wait"  # another attempt holds it, or what must come first has not: come back
    STOP = "stop"  # the saga moved on: do nothing, and do not let the canvas go on
    HALT = "halt"  # (compensation) the saga FAILED: stop here
    EXPIRED = "expired"  # the saga is past its deadline: compensate instead


@dataclass(frozen=True)
class StepClaim:
    outcome: Claim
    attempts: int = 0
    input: dict[str, Any] | None = None
    results: dict[str, Any] | None = None
    data: dict[str, Any] | None = None
    headers: dict[str, str] | None = None
    result: Any = None  # the step's stored result (DONE, and compensation RUN)
    retry_in: float = 0.0  # WAIT: when to come back (seconds)
    resumed: bool = False  # RUN: the attempt's own poll resumed it (not a new attempt)


def run_claim(
    rows: Sequence[Any],
    deps: Sequence[str],
    attempts: int,
    result: Any = None,
    *,
    resumed: bool = False,
) -> StepClaim:
    results: dict[str, Any] = {}
    data: dict[str, Any] = {}
    for row in rows:
        if row.name is None or row.status == StepStatus.SKIPPED:
            continue
        if row.name in deps:
            results[row.name] = row.result
        data.update(row.data or {})
    return StepClaim(
        Claim.RUN,
        attempts=attempts,
        input=rows[0].input,
        headers=rows[0].headers or {},
        results=results,
        data=data,
        result=result,
        resumed=resumed,
    )


def _fields(cls: type, row: Any) -> dict[str, Any]:
    """The columns of `row` that `cls` (a record dataclass) has a field for."""
    values = row._mapping
    return {f.name: values[f.name] for f in fields(cls) if f.name in values}


def saga_record(head: Any, steps: Sequence[Any]) -> SagaRecord:
    step_records = tuple(
        StepRecord(**{**_fields(StepRecord, s), "status": StepStatus(s.status)}) for s in steps
    )
    return SagaRecord(
        **{
            **_fields(SagaRecord, head),
            "status": SagaStatus(head.status),
            "headers": head.headers or {},
            "steps": step_records,
        }
    )
