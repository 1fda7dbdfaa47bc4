"""The simulated clock, lease renewer and broker queue."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from sagaq.store import SagaStore
from tests.simulation.canvas import Message

Attempt = tuple[str, str, int, bool]  # saga id, step, attempt, compensation?


@dataclass
class SimClock:
    now: float = 1_000_000.0

    def __call__(self) -> float:
        return self.now


class SimHeartbeats:
    """The lease renewer. `hold` registers an attempt as alive while its body runs (or is
    parked mid-way); `beat` renews every live attempt, which the scheduler calls whenever the
    clock moves (a real renewer beats many times during a long jump; once after it is the same
    for everyone who looks afterwards). A crashed attempt's `with` block has exited, so it no
    longer beats."""

    def __init__(self, store: SagaStore) -> None:
        self.store = store
        self.alive: dict[Attempt, int] = {}

    @contextmanager
    def hold(self, saga_id: str, step: str, attempt: int, *, compensation: bool) -> Iterator[None]:
        key = (saga_id, step, attempt, compensation)
        self.alive[key] = self.alive.get(key, 0) + 1
        try:
            yield
        finally:
            self.alive[key] -= 1
            if not self.alive[key]:
                del self.alive[key]

    def beat(self) -> None:
        for saga_id, step, attempt, compensation in list(self.alive):
            self.store.heartbeat(saga_id, step, attempt, compensation=compensation)


@dataclass
class Queue:
    """Messages waiting for a worker, each due at its `eta`."""

    messages: list[Message] = field(default_factory=list)
    seq: int = 0

    def put(self, message: Message) -> None:
        self.seq += 1
        message.seq = self.seq
        self.messages.append(message)

    def ready(self, now: float) -> list[Message]:
        return [m for m in self.messages if m.eta <= now]

    def take(self, message: Message) -> None:
        self.messages.remove(message)

    def next_eta(self) -> float | None:
        return min((m.eta for m in self.messages), default=None)
