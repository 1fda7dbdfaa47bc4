"""Notices when a shared service goes away while we measure.

Other jobs on this machine restart Redis and RabbitMQ on purpose (the chaos tests): a restart
loses queued messages, unacked messages and chord counters, so a measurement that spans one is
void and is run again."""

from __future__ import annotations

import socket
import threading
import time
from urllib.parse import urlparse

DEFAULT_PORTS = {"redis": 6379, "amqp": 5672, "postgresql": 5432}


class DisruptedError(RuntimeError):
    """A service went down during the measurement."""


Target = tuple[str, int]


class ServiceWatch:
    """Probes each service's TCP port every `interval` seconds in a daemon thread and counts,
    per service, how often it stopped answering."""

    def __init__(self, urls: list[str], interval: float = 0.25) -> None:
        self.targets = sorted({_host_port(u) for u in urls})
        self.interval = interval
        self.outages: dict[Target, int] = dict.fromkeys(self.targets, 0)
        self.down: set[Target] = set()
        self.relevant: list[Target] = list(self.targets)  # what the current measurement uses
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-service-watch", daemon=True)

    def use(self, urls: list[str]) -> None:
        """Only these services matter from now on (the backend being measured)."""
        self.relevant = [t for t in (_host_port(u) for u in urls) if t in self.outages]

    @property
    def generation(self) -> int:
        """Outages so far among the relevant services."""
        return sum(self.outages[t] for t in self.relevant)

    def start(self) -> ServiceWatch:
        if self.targets:
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            for target in self.targets:
                up = _answers(target)
                if not up and target not in self.down:
                    self.down.add(target)
                    self.outages[target] += 1
                elif up:
                    self.down.discard(target)

    def guard(self, generation: int) -> None:
        if self.generation != generation:
            raise DisruptedError(f"a service restarted ({self.describe()})")

    def describe(self) -> str:
        return ", ".join(f"{h}:{p} down" for h, p in sorted(self.down)) or "all up again"

    def wait_up(self, timeout: float = 90.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(_answers(t) for t in self.relevant):
                return True
            time.sleep(0.5)
        return False


def _host_port(url: str) -> tuple[str, int]:
    parsed = urlparse(url)
    scheme = parsed.scheme.split("+")[0]
    return parsed.hostname or "127.0.0.1", parsed.port or DEFAULT_PORTS[scheme]


def _answers(target: tuple[str, int]) -> bool:
    try:
        socket.create_connection(target, timeout=0.5).close()
    except OSError:
        return False
    return True
