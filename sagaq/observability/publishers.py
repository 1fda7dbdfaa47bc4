"""Event publishers: subscribe one to `engine.events` to see every saga lifecycle event.

engine.events.subscribe(LogPublisher())
engine.events.subscribe(RedisStreamPublisher.from_url("redis://localhost:6379/0"))
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from sagaq.observability.events import EventType, SagaEvent

if TYPE_CHECKING:
    from redis import Redis

FAILURES = frozenset({EventType.STEP_FAILED, EventType.COMPENSATION_FAILED, EventType.SAGA_FAILED})
_OPTIONAL_FIELDS = ("step", "attempt", "duration_ms", "error")


class LogPublisher:
    """Logs one line per event (`key=value`), failures at WARNING. The event's fields are also
    passed as typed `extra` fields (saga_id, saga, step, attempt, status, duration_ms, error,
    event), which JSON formatters keep as they are, and as strings in `sagaq_event`."""

    def __init__(self, logger: logging.Logger | None = None, level: int = logging.INFO) -> None:
        self.logger = logger or logging.getLogger("sagaq.events")
        self.level = level

    def __call__(self, event: SagaEvent) -> None:
        level = logging.WARNING if event.type in FAILURES else self.level
        if not self.logger.isEnabledFor(level):
            return
        fields = event_fields(event)
        line = " ".join(f"{key}={value}" for key, value in fields.items() if key != "at")
        self.logger.log(level, "%s", line, extra={**typed_fields(event), "sagaq_event": fields})


class RedisStreamPublisher:
    """Appends every event to a Redis stream (XADD), trimmed to about `maxlen` entries.
    Consumers read it with XREAD / XREADGROUP and rebuild events with `event_from_fields`."""

    def __init__(self, client: Redis, stream: str = "sagaq:events", maxlen: int = 100_000) -> None:
        self.client = client
        self.stream = stream
        self.maxlen = maxlen

    @classmethod
    def from_url(
        cls, url: str, stream: str = "sagaq:events", maxlen: int = 100_000
    ) -> RedisStreamPublisher:
        from redis import Redis

        return cls(Redis.from_url(url), stream, maxlen)

    def __call__(self, event: SagaEvent) -> None:
        fields: dict[Any, Any] = event_fields(event)
        self.client.xadd(self.stream, fields, maxlen=self.maxlen, approximate=True)


def typed_fields(event: SagaEvent) -> dict[str, Any]:
    """An event's fields with their own types (None left out): what a JSON log line holds.
    `status` is what the event says the saga or step became (COMPLETED, RETRYING...)."""
    fields: dict[str, Any] = {
        "event": str(event.type),
        "saga_id": event.saga_id,
        "saga": event.saga,
        "status": str(event.type).split("_", 1)[1],
    }
    for name in _OPTIONAL_FIELDS:
        value = getattr(event, name)
        if value is not None:
            fields[name] = value
    return fields


def event_fields(event: SagaEvent) -> dict[str, str]:
    """An event as flat string fields (what a Redis stream entry or a log line holds)."""
    fields = {"type": str(event.type), "saga_id": event.saga_id, "saga": event.saga}
    for name in _OPTIONAL_FIELDS:
        value = getattr(event, name)
        if value is not None:
            fields[name] = str(value)
    fields["at"] = repr(event.at)
    return fields


def event_from_fields(fields: dict[str, str] | dict[bytes, bytes]) -> SagaEvent:
    """The inverse of `event_fields`; accepts the bytes a Redis client returns."""
    text = {
        (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
        for k, v in fields.items()
    }
    attempt = text.get("attempt")
    duration = text.get("duration_ms")
    return SagaEvent(
        type=EventType(text["type"]),
        saga_id=text["saga_id"],
        saga=text["saga"],
        step=text.get("step"),
        attempt=int(attempt) if attempt is not None else None,
        duration_ms=float(duration) if duration is not None else None,
        error=text.get("error"),
        at=float(text["at"]),
    )
