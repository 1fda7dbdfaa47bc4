"""The base of SagaStore: engine, transactions, conditional updates. Every state transition is
one conditional UPDATE, so concurrent and redelivered tasks cannot corrupt state."""

from __future__ import annotations

import os
import time
import weakref
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from functools import partial
from typing import Any

from sqlalchemy import (
    Connection,
    and_,
    update,
)
from sqlalchemy.exc import OperationalError

from sagaq.errors import StoreUnavailableError
from sagaq.status import SagaStatus, StepStatus
from sagaq.store import statements as sql
from sagaq.store.connect import first_line, forget_connections, make_engine
from sagaq.store.schema import metadata, saga, saga_step

# A saga is "active" until compensation starts; PENDING means its canvas may not be published yet.
ACTIVE = sql.ACTIVE
LOST_STEP_ERROR = "the step's task failed without reporting why (worker lost or hard time limit)"


class StoreBase:
    """Engine, transactions and the two generic conditional updates."""

    def __init__(self, url: str, *, create_tables: bool = True) -> None:
        self.url = url
        self.engine = make_engine(url)
        self.is_sqlite = self.engine.dialect.name == "sqlite"
        self._autocommit = self.engine if self.is_sqlite else make_engine(url, autocommit=True)
        # Celery's prefork pool forks after this process used the pool: a child must open its
        # own connections, or siblings share one socket and read each other's results.
        for engine in {self.engine, self._autocommit}:
            os.register_at_fork(after_in_child=partial(forget_connections, weakref.ref(engine)))
        if create_tables:
            self.create_tables()

    def __repr__(self) -> str:
        return f"SagaStore({self.safe_url})"

    @property
    def safe_url(self) -> str:
        return self.engine.url.render_as_string(hide_password=True)

    def create_tables(self) -> None:
        with self._begin() as conn:
            if not self.is_sqlite:  # several workers may start at once
                conn.exec_driver_sql("SELECT pg_advisory_xact_lock(7400111)")
            metadata.create_all(conn, checkfirst=True)

    def dispose(self) -> None:
        for engine in {self.engine, self._autocommit}:
            engine.dispose()

    @contextmanager
    def _begin(self) -> Iterator[Connection]:
        try:
            with self.engine.begin() as conn:
                yield conn
        except OperationalError as exc:
            raise StoreUnavailableError(
                f"saga store {self.safe_url} is unavailable: {first_line(exc.orig or exc)}"
            ) from exc

    @contextmanager
    def _single_statement(self) -> Iterator[Connection]:
        """PostgreSQL hot path: one statement is one transaction (autocommit), so a claim or a
        completion is a single round trip, without BEGIN and COMMIT round trips around it."""
        try:
            with self._autocommit.connect() as conn:
                yield conn
        except OperationalError as exc:
            raise StoreUnavailableError(
                f"saga store {self.safe_url} is unavailable: {first_line(exc.orig or exc)}"
            ) from exc

    # -- helpers --------------------------------------------------------------------------

    def _one_write(self) -> AbstractContextManager[Connection]:
        """For a single statement: autocommit on PostgreSQL (no BEGIN/COMMIT round trips)."""
        return self._begin() if self.is_sqlite else self._single_statement()

    def _set_saga_status(
        self, saga_id: str, status: SagaStatus, allowed: Sequence[SagaStatus]
    ) -> bool:
        with self._one_write() as conn:
            done = conn.execute(
                update(saga)
                .where(saga.c.id == saga_id, saga.c.status.in_(allowed))
                .values(status=status, updated_at=time.time())
            )
        return done.rowcount == 1

    def _update_step(
        self, saga_id: str, step: str, allowed: Sequence[StepStatus], **values: Any
    ) -> bool:
        with self._one_write() as conn:
            done = conn.execute(
                update(saga_step)
                .where(_step_key(saga_id, step), saga_step.c.status.in_(allowed))
                .values(**values)
            )
        return done.rowcount == 1


def _step_key(saga_id: str, step: str) -> Any:
    return and_(saga_step.c.saga_id == saga_id, saga_step.c.name == step)
