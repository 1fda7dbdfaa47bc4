"""What every sagaq task shares: the Runtime (app, store, event bus, registered sagas, how to
publish, leases), what a task body decides (an Outcome), and publishing with a little patience
for broker hiccups.

Task bodies are plain functions of (Runtime, Delivery) returning an Outcome; the Celery tasks in
tasks.py only translate outcomes into Celery's terms. The deterministic simulation
(tests/simulation) runs the same bodies under a simulated broker and clock."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from celery import Celery
from celery.canvas import Signature
from kombu.exceptions import OperationalError as BrokerError

from sagaq.definition.saga import Saga
from sagaq.errors import BrokerUnavailableError
from sagaq.observability.events import EventBus, EventType, SagaEvent
from sagaq.runtime.heartbeat import Heartbeats
from sagaq.store import SagaStore

# How often a running attempt renews its lease; it is presumed lost after LEASE_BEATS of them.
DEFAULT_HEARTBEAT = 10.0
LEASE_BEATS = 3


def publish(sig: Signature, attempts: int = 3) -> None:
    """Send a canvas, retrying briefly when the broker hiccups, and give up with
    BrokerUnavailableError once the app's publish budget (SAGAQ_PUBLISH_TIMEOUT, set by SagaQ
    together with bounded kombu and Redis retry policies) is spent."""
    app = sig.app
    budget = float(app.conf.get("sagaq_publish_timeout") or 2.0) if app is not None else 2.0
    began = time.monotonic()
    for attempt in range(1, attempts + 1):
        tried = time.monotonic()
        try:
            _stop_listening(sig.apply_async())
            return
        except (BrokerError, RuntimeError, OSError) as exc:
            # RuntimeError: Celery's Redis result backend, which subscribes to each task sent,
            # gave up reconnecting: Redis is down. OSError: a socket error kombu let through.
            pause = 0.2 * attempt
            now = time.monotonic()
            # Another attempt is expected to take as long as this one did.
            over_budget = now + pause + (now - tried) - began > budget
            if attempt == attempts or over_budget:
                raise BrokerUnavailableError(
                    f"cannot publish to the broker ({_reason(exc)}); nothing was started, "
                    "try again when the broker is back"
                ) from exc
            time.sleep(pause)


def _stop_listening(result: Any) -> None:
    """sagaq reads outcomes from SQL, never from the result backend, but Celery's Redis backend
    subscribes the sending process to each task it sends. Unsubscribe now: otherwise the
    subscriptions pile up in a long-lived web process, and a short-lived one prints
    `AsyncResult.__del__` tracebacks at exit, when Python can no longer talk to Redis."""
    consumer = getattr(getattr(result, "backend", None), "result_consumer", None)
    cancel = getattr(consumer, "cancel_for", None)
    if cancel is None:
        return
    pending = [result]
    while pending:
        node = pending.pop()
        if node is None:
            continue
        if getattr(node, "id", None):
            cancel(node.id)
        pending.extend(getattr(node, "results", None) or ())  # a group's parts
        pending.append(getattr(node, "parent", None))


def _reason(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


@dataclass
class Runtime:
    """What every sagaq task needs: where to publish, where state lives, who listens."""

    app: Celery
    store: SagaStore
    events: EventBus
    sagas: Mapping[str, Saga]
    send: Callable[[Signature], None] = publish
    heartbeat: float = DEFAULT_HEARTBEAT
    hostname: str = field(default_factory=socket.gethostname)
    heartbeats: Heartbeats | None = None
    sweep_cursor: tuple[float, str] | None = None

    def __post_init__(self) -> None:
        if self.heartbeats is None:
            self.heartbeats = Heartbeats(self.store, self.heartbeat)
        if self.store.worker is None:
            self.store.worker = self.hostname

    @property
    def lease(self) -> float:
        """A running attempt whose last heartbeat is older than this is presumed lost."""
        return self.heartbeat * LEASE_BEATS

    @property
    def skip_result_backend(self) -> bool:
        """Step results live in SQL. With Redis, chords count their parts in Redis lists, so
        step tasks need not write their result to the backend: two Redis writes fewer per
        step. Other backends join chords by reading each part's stored result."""
        return str(self.app.conf.result_backend or "").startswith(("redis://", "rediss://"))

    def emit(self, type: EventType, saga_id: str, saga: str, **details: Any) -> None:
        self.events.emit(SagaEvent(type, saga_id, saga, **details))


@dataclass(frozen=True)
class Delivery:
    """Which message runs: its Celery task id and how many times it was retried. A retry we
    schedule is told apart from a duplicate of the running attempt by `token`."""

    task_id: str
    retries: int = 0

    @property
    def token(self) -> str:
        return f"{self.task_id}#{self.retries}"

    @property
    def next_token(self) -> str:
        """The token of the retry this attempt schedules."""
        return f"{self.task_id}#{self.retries + 1}"


# -- outcomes: what a task body decided -------------------------------------------------------


@dataclass(frozen=True)
class Proceed:
    """Done (or already done): the canvas goes on."""

    value: Any = None


@dataclass(frozen=True)
class Retry:
    """Come back in `delay` seconds (same task id, retries + 1)."""

    delay: float
    error: Exception | None = None


@dataclass(frozen=True)
class Halt:
    """Nothing (more) to do here, and the canvas must not go on: ack, no callbacks."""


@dataclass(frozen=True)
class Fail:
    """Failed for good: the chain stops and the step's errback runs."""

    error: Exception


Outcome = Proceed | Retry | Halt | Fail
