"""What the API returns for history, search and counts (pydantic models for OpenAPI)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from sagaq.api.schemas import SagaSummary
from sagaq.status import SagaStatus
from sagaq.store.history import EventRecord, SagaPage, StatusCounts
from sagaq.store.history import SagaSummary as SagaRow


class SagaListItem(SagaSummary):
    idempotency_key: str | None = Field(default=None, description="The caller's business key")
    cause: str | None = Field(
        default=None, description="Why compensation began: failure, cancel or deadline"
    )

    @classmethod
    def of(cls, row: SagaRow) -> SagaListItem:
        return cls(
            id=row.id,
            saga=row.name,
            status=row.status,
            failed_step=row.failed_step,
            error=row.error,
            duration_ms=row.duration_ms,
            created_at=row.created_at,
            idempotency_key=row.idempotency_key,
            cause=row.cause,
        )


class StatusCount(BaseModel):
    status: SagaStatus
    count: int
    at_least: bool = Field(description="True when counting stopped at the cap")


class SagaPageOut(BaseModel):
    sagas: list[SagaListItem] = Field(description="Newest first")
    next_cursor: str | None = Field(description="Pass as ?cursor= for the next page; null: last")
    counts: list[StatusCount] | None = Field(
        default=None, description="Sagas per status matching the other filters (?counts=true)"
    )

    @classmethod
    def of(cls, page: SagaPage, counts: StatusCounts | None) -> SagaPageOut:
        return cls(
            sagas=[SagaListItem.of(row) for row in page.sagas],
            next_cursor=page.next_cursor,
            counts=None if counts is None else status_counts(counts),
        )


def status_counts(counts: StatusCounts) -> list[StatusCount]:
    found = {s: counts.counts.get(s, 0) for s in SagaStatus}
    return [StatusCount(status=s, count=n, at_least=n >= counts.cap) for s, n in found.items()]


class EventOut(BaseModel):
    """One entry of a saga's history. kind: saga, step, compensation, sweeper, operator."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    at: float = Field(description="Unix time, seconds")
    kind: str
    step: str | None = None
    status: str | None = None
    attempt: int | None = None
    worker: str | None = None
    task_id: str | None = None
    error: str | None = None
    duration_ms: float | None = None
    actor: str | None = None
    reason: str | None = None

    @classmethod
    def of(cls, event: EventRecord) -> EventOut:
        return cls.model_validate(event)


class EventList(BaseModel):
    saga_id: str
    events: list[EventOut] = Field(description="Oldest first")


class OperatorAction(BaseModel):
    reason: str | None = Field(default=None, description="Why: kept in the saga's history")
