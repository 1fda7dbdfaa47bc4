"""The base of SagaStore: engines (created on first use), transactions, the clock, and the
history rows every transition writes in its own transaction."""

from __future__ import annotations

import os
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any

from sqlalchemy import Connection, Engine, and_, bindparam, insert
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, OperationalError

from sagaq.errors import StoreUnavailableError
from sagaq.store.connect import first_line, forget_connections, make_engine
from sagaq.store.schema import metadata, saga_event, saga_step

Clock = Callable[[], float]


class StoreBase:
    """Engine, transactions, clock. Nothing connects until the first query, so importing an app
    module while the database is down does not crash; the first use says which store is down."""

    def __init__(self, url: str, *, create_tables: bool = True, clock: Clock = time.time) -> None:
        self.url = url
        self.clock = clock
        self._create_tables = create_tables
        self._engine: Engine | None = None
        # Who writes history rows from this process (the worker's hostname; see Runtime).
        self.worker: str | None = None
        self._lock = threading.Lock()
        self.is_sqlite = make_url(url).get_backend_name() == "sqlite"  # a bad URL fails here

    def __repr__(self) -> str:
        return f"SagaStore({self.safe_url})"

    @property
    def safe_url(self) -> str:
        return make_url(self.url).render_as_string(hide_password=True)

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            with self._lock:
                if self._engine is None:
                    engine = make_engine(self.url)
                    # Celery's prefork pool forks after this process used the pool: a child
                    # must open its own connections, or siblings share one socket.
                    os.register_at_fork(
                        after_in_child=partial(forget_connections, weakref.ref(engine))
                    )
                    if self._create_tables:
                        self._create_all(engine)
                    self._engine = engine
        return self._engine

    def _create_all(self, engine: Engine) -> None:
        try:
            with engine.begin() as conn:
                self._create_schema(conn)
        except OperationalError as exc:
            engine.dispose()
            raise self._unavailable(exc) from exc

    def _create_schema(self, conn: Connection) -> None:
        """The tables that are missing (PostgresStore adds its functions)."""
        metadata.create_all(conn, checkfirst=True)

    def create_tables(self) -> None:
        self._create_all(self.engine)

    def dispose(self) -> None:
        if self._engine is not None:
            self._engine.dispose()

    def _unavailable(self, exc: DBAPIError) -> StoreUnavailableError:
        return StoreUnavailableError(
            f"saga store {self.safe_url} is unavailable: {first_line(exc.orig or exc)}"
        )

    @contextmanager
    def _begin(self) -> Iterator[Connection]:
        """One transaction. A database that is down becomes StoreUnavailableError."""
        try:
            with self.engine.begin() as conn:
                yield conn
        except OperationalError as exc:
            raise self._unavailable(exc) from exc

    @contextmanager
    def finish_signal(self, saga_id: str) -> Iterator[threading.Event | None]:
        """An Event set when the saga becomes terminal, where the database can push it
        (PostgreSQL); None: poll."""
        yield None

    def _finished(self, conn: Connection, saga_id: str) -> None:
        """The saga became terminal in this transaction: tell the waiters (at commit)."""

    def _lock_saga(self, conn: Connection, saga_id: str) -> None:
        """Transactions that may finish the saga take its lock first, so that they run one
        after the other and each sees what the previous one committed. SQLite runs writers
        one at a time already; PostgresStore takes the saga's row lock."""

    def _event(self, conn: Connection, saga_id: str, kind: str, now: float, **fields: Any) -> None:
        """Append one history row, inside the transaction of the change it records."""
        if kind in ("step", "compensation", "attempt"):
            fields.setdefault("worker", self.worker)
        conn.execute(
            _ADD_EVENT, _NO_EVENT_FIELDS | fields | {"saga_id": saga_id, "kind": kind, "at": now}
        )


# Built once, every column bound: one compiled statement whatever the event's fields.
_ADD_EVENT = insert(saga_event)
_NO_EVENT_FIELDS = {c.name: None for c in saga_event.columns if not c.primary_key}


def step_key(saga_id: Any, step: Any) -> Any:
    return and_(saga_step.c.saga_id == saga_id, saga_step.c.name == step)


# step_key for statements built once: the values are bound as `sid` and `step`.
STEP_KEY = step_key(bindparam("sid"), bindparam("step"))


def task_of(token: str) -> str:
    """The Celery task id in a delivery token ("<task id>#<retries>")."""
    return token.split("#", 1)[0]
