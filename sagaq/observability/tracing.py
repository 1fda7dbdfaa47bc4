"""Optional OpenTelemetry tracing: one span per step attempt and per compensation attempt.

    install_tracing(engine)   # in the worker module; a no-op without `opentelemetry`

The span starts when the step's task claims the step and is the current span while the step's
function runs, so spans made by the step's own calls (HTTP, SQL...) nest under it. It is a child
of whatever span is current in the task, which is the Celery task's span when
opentelemetry-instrumentation-celery is installed (`CeleryInstrumentor().instrument()`).
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sagaq.observability.events import EventType, SagaEvent

if TYPE_CHECKING:
    from opentelemetry.trace import Span, Tracer, TracerProvider

    from sagaq.client import SagaQ

_STARTS = {EventType.STEP_STARTED: "step", EventType.COMPENSATION_STARTED: "compensate"}
_ENDS = {
    EventType.STEP_COMPLETED: ("step", None),
    EventType.STEP_RETRYING: ("step", "attempt failed, will retry"),
    EventType.STEP_FAILED: ("step", "step failed"),
    EventType.COMPENSATION_COMPLETED: ("compensate", None),
    EventType.COMPENSATION_FAILED: ("compensate", "compensation failed"),
}


def install_tracing(engine: SagaQ, tracer_provider: TracerProvider | None = None) -> bool:
    """Trace `engine`'s steps if OpenTelemetry is installed; returns whether it is. Once per
    engine: SagaQ calls it when SAGAQ_TRACING is set, and a worker module may call it too."""
    try:
        from opentelemetry import trace
    except ImportError:
        return False
    if engine in _traced:
        return True
    _traced.add(engine)
    engine.events.subscribe(StepSpans(trace.get_tracer("sagaq", tracer_provider=tracer_provider)))
    return True


_traced: weakref.WeakSet[SagaQ] = weakref.WeakSet()


@dataclass
class _OpenSpan:
    key: tuple[str, str, str]  # kind, saga id, step
    span: Span
    token: Any  # restores the context that was current before the span


class StepSpans:
    """An EventBus publisher turning STARTED ... COMPLETED/RETRYING/FAILED into spans."""

    def __init__(self, tracer: Tracer) -> None:
        self.tracer = tracer
        # A step's events are emitted by the thread that runs it, one step at a time.
        self._local = threading.local()

    def __call__(self, event: SagaEvent) -> None:
        if event.type in _STARTS:
            self._start(_STARTS[event.type], event)
        elif event.type in _ENDS:
            kind, failure = _ENDS[event.type]
            self._end((kind, event.saga_id, event.step or ""), event, failure)

    def _start(self, kind: str, event: SagaEvent) -> None:
        from opentelemetry import context, trace

        self._abandon()
        span = self.tracer.start_span(
            f"{kind} {event.saga}.{event.step}",
            attributes={
                "sagaq.saga": event.saga,
                "sagaq.saga_id": event.saga_id,
                "sagaq.step": event.step or "",
                "sagaq.attempt": event.attempt or 1,
            },
        )
        token = context.attach(trace.set_span_in_context(span))
        self._local.open = _OpenSpan((kind, event.saga_id, event.step or ""), span, token)

    def _end(self, key: tuple[str, str, str], event: SagaEvent, failure: str | None) -> None:
        from opentelemetry import context
        from opentelemetry.trace import Status, StatusCode

        current: _OpenSpan | None = getattr(self._local, "open", None)
        if current is None or current.key != key:
            return
        self._local.open = None
        context.detach(current.token)
        if failure is None:
            current.span.set_status(Status(StatusCode.OK))
        else:
            current.span.set_status(Status(StatusCode.ERROR, event.error or failure))
            current.span.set_attribute("sagaq.error", event.error or failure)
        current.span.end()

    def _abandon(self) -> None:
        """End a span whose outcome was never reported (a compensation attempt that is retried
        emits no event). Its context is detached only if it is still current: Celery's own
        instrumentation, when active, already restored the context it had before the task."""
        from opentelemetry import context, trace
        from opentelemetry.trace import Status, StatusCode

        stale: _OpenSpan | None = getattr(self._local, "open", None)
        if stale is None:
            return
        self._local.open = None
        if trace.get_current_span() is stale.span:
            context.detach(stale.token)
        stale.span.set_status(Status(StatusCode.ERROR, "no outcome reported"))
        stale.span.end()
