"""Saga lifecycle events. The runtime emits them; publishers (log, Redis stream, metrics...)
subscribe. A publisher that raises is logged and never fails the step that emitted."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum

log = logging.getLogger("sagaq.events")


class EventType(StrEnum):
    SAGA_STARTED = "SAGA_STARTED"
    STEP_STARTED = "STEP_STARTED"
    STEP_COMPLETED = "STEP_COMPLETED"
    STEP_RETRYING = "STEP_RETRYING"
    STEP_FAILED = "STEP_FAILED"
    COMPENSATION_STARTED = "COMPENSATION_STARTED"
    COMPENSATION_RETRYING = "COMPENSATION_RETRYING"
    COMPENSATION_COMPLETED = "COMPENSATION_COMPLETED"
    COMPENSATION_FAILED = "COMPENSATION_FAILED"
    SAGA_COMPLETED = "SAGA_COMPLETED"
    SAGA_COMPENSATED = "SAGA_COMPENSATED"
    SAGA_FAILED = "SAGA_FAILED"


@dataclass(frozen=True)
class SagaEvent:
    type: EventType
    saga_id: str
    saga: str
    step: str | None = None
    attempt: int | None = None
    duration_ms: float | None = None
    error: str | None = None
    at: float = field(default_factory=time.time)


Publisher = Callable[[SagaEvent], None]


class EventBus:
    def __init__(self) -> None:
        self._publishers: list[Publisher] = []

    def subscribe(self, publisher: Publisher) -> None:
        self._publishers.append(publisher)

    def emit(self, event: SagaEvent) -> None:
        for publisher in self._publishers:
            try:
                publisher(event)
            except Exception:
                log.exception("event publisher %r failed on %s", publisher, event.type)
