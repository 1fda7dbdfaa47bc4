"""Heartbeats: while an attempt runs, one daemon thread per process renews its lease in the
store every `interval` seconds, off the step's own thread. The first beat comes one interval
after the attempt started, so short steps never write one."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sagaq.store import SagaStore

log = logging.getLogger("sagaq")

Attempt = tuple[str, str, int, bool]  # saga id, step, attempt number, compensation?


class Heartbeats:
    def __init__(self, store: SagaStore, interval: float) -> None:
        self.store = store
        self.interval = interval
        self._running: dict[Attempt, float] = {}  # attempt -> when it last beat (monotonic)
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._pid = 0

    @contextmanager
    def hold(self, saga_id: str, step: str, attempt: int, *, compensation: bool) -> Iterator[None]:
        key = (saga_id, step, attempt, compensation)
        with self._lock:
            self._running[key] = time.monotonic()
            self._ensure_thread()
        try:
            yield
        finally:
            with self._lock:
                self._running.pop(key, None)

    def _ensure_thread(self) -> None:
        # A forked pool process inherits the object but not the thread: start its own.
        if self._thread is None or self._pid != os.getpid() or not self._thread.is_alive():
            self._pid = os.getpid()
            self._thread = threading.Thread(target=self._beat, name="sagaq-heartbeat", daemon=True)
            self._thread.start()

    def _beat(self) -> None:
        while True:
            time.sleep(min(1.0, self.interval / 4))
            now = time.monotonic()
            with self._lock:
                due = [k for k, last in self._running.items() if now - last >= self.interval]
                for key in due:
                    self._running[key] = now
            for saga_id, step, attempt, compensation in due:
                try:
                    self.store.heartbeat(saga_id, step, attempt, compensation=compensation)
                except Exception:  # a store hiccup: the next beat tries again
                    log.warning("heartbeat of %s %s failed", saga_id, step, exc_info=True)
