"""`wait()` pushed, not polled (PostgreSQL): every transition that makes a saga terminal sends
`NOTIFY sagaq_finished, '<saga id>'` in its own transaction, and one listener connection per
process wakes the callers waiting for that saga. Polling stays as the fallback (a lost
connection, a notification sent while the listener reconnected)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg

CHANNEL = "sagaq_finished"

log = logging.getLogger("sagaq")


class FinishListener:
    def __init__(self, conninfo: str) -> None:
        self.conninfo = conninfo
        self._waiting: dict[str, list[threading.Event]] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()

    @contextmanager
    def signal(self, saga_id: str) -> Iterator[threading.Event]:
        """An Event set when `saga_id` becomes terminal (check the saga after registering)."""
        event = threading.Event()
        with self._lock:
            self._waiting.setdefault(saga_id, []).append(event)
            if self._thread is None or not self._thread.is_alive():
                self._ready.clear()
                self._thread = threading.Thread(
                    target=self._listen, name="sagaq-listener", daemon=True
                )
                self._thread.start()
        self._ready.wait(1.0)  # LISTEN is in place (or polling covers the gap)
        try:
            yield event
        finally:
            with self._lock:
                events = self._waiting.get(saga_id, [])
                if event in events:
                    events.remove(event)
                if not events:
                    self._waiting.pop(saga_id, None)

    def _listen(self) -> None:
        try:
            with psycopg.connect(self.conninfo, autocommit=True, connect_timeout=5) as conn:
                conn.execute(f"LISTEN {CHANNEL}")
                self._ready.set()
                # It stays (one connection per process): a wait() must not pay a connect.
                while True:
                    for note in conn.notifies(timeout=5.0):
                        with self._lock:
                            for event in self._waiting.get(note.payload, []):
                                event.set()
        except psycopg.Error as exc:
            log.debug("finish listener stopped (%s); wait() polls", exc)
        finally:
            self._ready.set()
