"""Events, metrics and tracing hooks."""

from sagaq.observability.events import EventBus, EventType, Publisher, SagaEvent

__all__ = ["EventBus", "EventType", "Publisher", "SagaEvent"]
