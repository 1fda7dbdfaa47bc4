"""What the HTTP API returns, as pydantic models (they make the OpenAPI schema)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from sagaq.client import SagaResult, StepResult
from sagaq.status import SagaStatus, StepStatus

_COMPENSATION_STATES = (
    StepStatus.COMPENSATING,
    StepStatus.COMPENSATED,
    StepStatus.COMPENSATION_FAILED,
)


class Compensation(BaseModel):
    """How undoing a step went: COMPENSATING, COMPENSATED or COMPENSATION_FAILED."""

    status: StepStatus
    attempts: int
    error: str | None


class StepOut(BaseModel):
    name: str
    status: StepStatus
    attempts: int
    result: Any = None
    error: str | None = None
    duration_ms: float | None = None
    compensation: Compensation | None = None

    @classmethod
    def of(cls, step: StepResult) -> StepOut:
        compensation = None
        if step.status in _COMPENSATION_STATES:
            compensation = Compensation(
                status=step.status,
                attempts=step.compensation_attempts,
                error=step.compensation_error,
            )
        return cls(
            name=step.name,
            status=step.status,
            attempts=step.attempts,
            result=step.result,
            error=step.error,
            duration_ms=step.duration_ms,
            compensation=compensation,
        )


class SagaSummary(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    saga: str
    status: SagaStatus
    failed_step: str | None = None
    error: str | None = None
    duration_ms: float | None = None
    created_at: float = Field(description="Unix time, seconds")


class SagaOut(SagaSummary):
    input: dict[str, Any]
    steps: list[StepOut]
    compensated_steps: list[str] = Field(description="In the order their compensations finished")

    @classmethod
    def of(cls, result: SagaResult) -> SagaOut:
        steps = [StepOut.of(s) for s in result.steps]
        return cls(
            **summary(result).model_dump(),
            input=result.input,
            steps=steps,
            compensated_steps=list(result.compensated_steps),
        )


def summary(result: SagaResult) -> SagaSummary:
    return SagaSummary.model_validate(result, from_attributes=True)


class Started(BaseModel):
    id: str
    status: SagaStatus
    status_url: str
    created: bool = Field(description="False when the Idempotency-Key matched an earlier saga")


class Problem(BaseModel):
    """The body of every error the API answers: 401, 404, 409, 422, 503 alike."""

    error: str = Field(description="What refused: a sagaq exception class or Unauthorized")
    detail: str = Field(description="One line for a human")
    status: int = Field(description="The HTTP status, repeated")
    problems: list[dict[str, Any]] | None = Field(
        default=None, description="422 only: each invalid field (loc, msg, type)"
    )


class Health(BaseModel):
    """Liveness: the process answers. Never names URLs or credentials."""

    status: str


class Readiness(BaseModel):
    """Whether this API can start sagas now: the broker and the store each answer."""

    status: str = Field(description="ready or unavailable")
    broker: str = Field(description="ok or unavailable")
    store: str = Field(description="ok or unavailable")
