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
    """Send a canvas, retrying briefly when the broker hiccups."""
    for attempt in range(1, attempts + 1):
        try:
            sig.apply_async()
            return
        except (BrokerError, RuntimeError) as exc:
            # RuntimeError: Celery's Redis result backend, which subscribes to each task sent,
            # gave up reconnecting (after its own ~20 s of retries): Redis is down.
            if attempt == attempts or isinstance(exc, RuntimeError):
                raise BrokerUnavailableError(f"cannot publish to the broker: {exc}") from exc
            time.sleep(0.2 * attempt)


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
