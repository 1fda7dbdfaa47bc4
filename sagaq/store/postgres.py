"""PostgreSQL's fast path: the statements every saga runs (start, claim, completion) are one
statement each - the history row and the saga's finish ride in the same statement as
data-modifying CTEs - sent as prepared statements on psycopg connections in autocommit, without
SQLAlchemy's per-call machinery. Claims are not durable writes (the claim statement turns
synchronous_commit off for its own transaction): a claim lost in a database crash only means the
redelivered task claims again, and a later durable commit (the completion) flushes the WAL that
holds it anyway.

Every condition here is the same as in the portable path (store.py), which SQLite runs and the
deterministic simulation checks; tests/integration/test_store.py runs both."""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import cached_property, partial
from types import SimpleNamespace
from typing import Any, NamedTuple

import psycopg
from psycopg.types.json import Jsonb
from sqlalchemy import Connection, Engine, event, func, select, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.pool import PoolProxiedConnection

from sagaq.errors import StoreUnavailableError
from sagaq.status import (
    SAGA_ACTIVE,
    SagaStatus,
    StepStatus,
    saga_move,
)
from sagaq.store.base import task_of
from sagaq.store.compensation import Begun, decide_compensation
from sagaq.store.connect import first_line, forget_connections, libpq_url, make_engine
from sagaq.store.notify import CHANNEL, FinishListener
from sagaq.store.pg_statements import (
    BEGIN_UNDO,
    CLAIM,
    CLAIM_UNDO,
    COMPLETE,
    COMPLETE_UNDO,
    CREATE,
    FAIL,
    FUNCTIONS,
    GET_SAGA,
    GET_STEPS,
    LOG_BEGIN,
    RECORD_CAUSE,
    SAGA_STATUS,
    SKIP_PENDING,
    STEP_ROWS,
)
from sagaq.store.records import SagaRecord, StepClaim, run_claim, saga_record
from sagaq.store.schema import SCHEMA_LOCK, saga
from sagaq.store.store import SagaStore, forward_failure

S, T = SagaStatus, StepStatus


class PostgresStore(SagaStore):
    """SagaStore on PostgreSQL (`SagaStore(url)` picks it for a postgresql:// URL)."""

    _fast: Engine | None = None

    def _pool(self) -> Engine:
        """The autocommit pool of the hot path. Its connections plan each prepared statement
        once (plan_cache_mode = force_generic_plan): every one finds its rows by primary key,
        but with a million sagas in the table PostgreSQL's cost estimates made it re-plan the
        claim on every execution, which doubled its time."""
        if self._fast is None:
            self.engine  # creates the tables on first use  # noqa: B018
            fast = make_engine(self.url, autocommit=True)

            @event.listens_for(fast, "connect")
            def _plan_once(dbapi_conn: Any, record: Any) -> None:
                dbapi_conn.execute("SET plan_cache_mode = force_generic_plan")

            # A forked pool process opens its own connections.
            os.register_at_fork(after_in_child=partial(forget_connections, weakref.ref(fast)))
            self._fast = fast
        return self._fast

    def _lock_saga(self, conn: Connection, saga_id: str) -> None:
        # In READ COMMITTED every later statement of the transaction takes a fresh snapshot.
        conn.execute(select(saga.c.id).where(saga.c.id == saga_id).with_for_update())

    def _create_schema(self, conn: Connection) -> None:
        """The tables, then the functions that are missing or differ (a worker whose role may
        only read and write rows starts on a database `sagaq db upgrade` brought up to date).
        One process at a time: several workers may start at once."""
        conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({SCHEMA_LOCK})")
        super()._create_schema(conn)
        found = conn.execute(
            text(
                "SELECT proname, prosrc FROM pg_proc WHERE proname = ANY(:names) "
                "AND pronamespace = current_schema()::regnamespace"
            ),
            {"names": [f.name for f in FUNCTIONS]},
        )
        installed = {name: source for name, source in found}
        for function in FUNCTIONS:
            if installed.get(function.name) != function.source:
                conn.exec_driver_sql(function.ddl)

    @cached_property
    def _listener(self) -> FinishListener:
        return FinishListener(libpq_url(self.url))

    @contextmanager
    def finish_signal(self, saga_id: str) -> Iterator[threading.Event | None]:
        with self._listener.signal(saga_id) as event:
            yield event

    def _finished(self, conn: Connection, saga_id: str) -> None:
        conn.execute(select(func.pg_notify(CHANNEL, saga_id)))

    def dispose(self) -> None:
        if self._fast is not None:
            self._fast.dispose()
        super().dispose()

    @contextmanager
    def _raw(self) -> Iterator[psycopg.Connection[Any]]:
        """A pooled psycopg connection, checked out of the pool itself (without SQLAlchemy's
        Connection around it: the hot path sends its own statements)."""
        try:
            pooled = self._pool().pool.connect()
        except OperationalError as exc:
            raise self._unavailable(exc) from exc
        except psycopg.OperationalError as exc:
            raise self._unavailable_raw(exc) from exc
        raw = pooled.driver_connection
        assert isinstance(raw, psycopg.Connection)
        try:
            yield raw
        except psycopg.OperationalError as exc:
            pooled.invalidate()  # closes it and takes it out of the pool
            raise self._unavailable_raw(exc) from exc
        except BaseException:
            _give_back(pooled, raw)
            raise
        _give_back(pooled, raw)

    def _unavailable_raw(self, exc: psycopg.OperationalError) -> StoreUnavailableError:
        return StoreUnavailableError(
            f"saga store {self.safe_url} is unavailable: {first_line(exc)}"
        )

    # -- the hot path -------------------------------------------------------------------------

    def create_saga(
        self,
        saga_id: str,
        name: str,
        input: dict[str, Any],
        steps: Sequence[str],
        idempotency_key: str | None = None,
        deadline_at: float | None = None,
        headers: dict[str, str] | None = None,
        parent_id: str | None = None,
        *,
        undoable: Sequence[str] = (),
        parent_step: str | None = None,
    ) -> tuple[str, bool]:
        params = {
            "sid": saga_id,
            "name": name,
            "input": Jsonb(input),
            "key": idempotency_key,
            "deadline": deadline_at,
            "headers": Jsonb(headers) if headers is not None else None,
            "parent": parent_id,
            "parent_step": parent_step,
            "steps": list(steps),
            "undoable": list(undoable),
            "now": self.clock(),
        }
        with self._raw() as conn:
            row = conn.execute(CREATE, params, prepare=True).fetchone()
        if row is not None:
            return str(row[0]), True
        assert idempotency_key is not None, "only a reused key conflicts"
        found = self._find_by_key(name, idempotency_key)
        if found is None:  # the other start was rolled back meanwhile: try again
            return self.create_saga(
                saga_id,
                name,
                input,
                steps,
                idempotency_key,
                deadline_at,
                headers,
                parent_id,
                undoable=undoable,
                parent_step=parent_step,
            )
        return found, False

    def claim_step(
        self,
        saga_id: str,
        step: str,
        *,
        deps: Sequence[str],
        wanted: Sequence[str],
        token: str,
        lease: float,
        past_pivot: bool = False,
        is_pivot: bool = False,
        worker: str | None = None,
    ) -> StepClaim:
        if is_pivot:  # serialized with cancel and deadlines: the portable path locks the saga
            return super().claim_step(
                saga_id,
                step,
                deps=deps,
                wanted=wanted,
                token=token,
                lease=lease,
                past_pivot=past_pivot,
                is_pivot=is_pivot,
                worker=worker,
            )
        now = self.clock()
        params = {
            "sid": saga_id,
            "step": step,
            "token": token,
            "task_id": task_of(token),
            "now": now,
            "expired": now - lease,
            "past_pivot": past_pivot,
            "deps": list(deps),
            "wanted": sorted({*wanted, *deps}),
            "worker": worker or self.worker,
        }
        with self._raw() as conn:
            rows = [_ClaimRow._make(r) for r in conn.execute(CLAIM, params, prepare=True)]
        if not rows:
            with self._begin() as c:
                return self._refused_claim(c, saga_id, step, deps, now, lease, past_pivot)
        return run_claim(rows, deps, rows[0].attempts, resumed=bool(rows[0].resumed))

    def complete_step(
        self,
        saga_id: str,
        step: str,
        attempt: int,
        result: Any,
        data: dict[str, Any] | None = None,
        *,
        status: StepStatus = T.COMPLETED,
        duration_ms: float | None = None,
        task_id: str | None = None,
    ) -> tuple[bool, bool]:
        params = {
            "sid": saga_id,
            "step": step,
            "attempt": attempt,
            "status": str(status),
            "result": Jsonb(result),
            "data": Jsonb(data) if data is not None else None,
            "now": self.clock(),
            "duration": duration_ms,
            "worker": self.worker,
            "task_id": task_id,
        }
        with self._raw() as conn:
            row = conn.execute(COMPLETE, params, prepare=True).fetchone()
        assert row is not None
        return row[0] == 1, row[1] == 1

    # -- the compensation path ----------------------------------------------------------------

    def claim_compensation(
        self,
        saga_id: str,
        step: str,
        *,
        dependents: Sequence[str],
        wanted: Sequence[str],
        lease: float,
        stop_running: bool = False,
        token: str = "",
        worker: str | None = None,
    ) -> StepClaim:
        """The common case (the step may stand, nothing depending on it is unsettled) in one
        round trip: a function that takes the saga's lock first (pg_statements._locked).
        Anything else (wait, write-off, nothing to undo) takes the portable path."""
        now = self.clock()
        params = {
            "sid": saga_id,
            "step": step,
            "token": token,
            "task_id": task_of(token),
            "now": now,
            "expired": now - lease,
            "dependents": list(dependents),
            "wanted": sorted({*wanted, step}),
            "worker": worker or self.worker,
        }
        with self._raw() as conn:
            rows = [_UndoRow._make(r) for r in conn.execute(CLAIM_UNDO, params, prepare=True)]
        if not rows:
            return super().claim_compensation(
                saga_id,
                step,
                dependents=dependents,
                wanted=wanted,
                lease=lease,
                stop_running=stop_running,
                token=token,
                worker=worker,
            )
        return run_claim(rows, (), rows[0].attempts, rows[0].undo_result)

    def complete_compensation(
        self, saga_id: str, step: str, attempt: int, *, duration_ms: float | None = None
    ) -> tuple[bool, bool]:
        params = {
            "sid": saga_id,
            "step": step,
            "attempt": attempt,
            "now": self.clock(),
            "duration": duration_ms,
            "worker": self.worker,
        }
        with self._raw() as conn:
            row = conn.execute(COMPLETE_UNDO, params, prepare=True).fetchone()
        assert row is not None
        return row[0] == 1, row[1] == 1

    def begin_compensation(
        self,
        saga_id: str,
        *,
        cause: str,
        failed_step: str | None = None,
        reason: str | None = None,
        allowed: Sequence[SagaStatus] = tuple(SAGA_ACTIVE),
        pivot: str | None = None,
        actor: str | None = None,
        only_if_failed: bool = False,
    ) -> Begun:
        """The portable transaction in two round trips: the saga's move, the skips and the
        read of the steps are pipelined before knowing whether the move won (a caller that lost
        rolls back); the cause and the history row follow with the commit."""
        now = self.clock()
        params: dict[str, Any] = {
            "sid": saga_id,
            "cause": cause,
            "now": now,
            "allowed": [str(s) for s in saga_move(allowed, S.COMPENSATING)],
            "pivot": pivot,
            "only_if_failed": only_if_failed,
            "failed_step": failed_step,
        }
        refused: Begun | None = None
        with self._raw() as conn, conn.pipeline(), conn.transaction():
            won = conn.execute(BEGIN_UNDO, params, prepare=True)
            conn.execute(SKIP_PENDING, params, prepare=True)
            steps = conn.execute(STEP_ROWS, params, prepare=True)
            status = conn.execute(SAGA_STATUS, params, prepare=True)
            if won.fetchone() is None:
                found = status.fetchone()
                refused = Begun(None, SagaStatus(found[0]) if found else None)
                raise psycopg.Rollback()
            rows = [_row(steps.description, r) for r in steps.fetchall()]
            decided = decide_compensation(rows, cause, failed_step, reason)
            params |= {
                "failed_step": decided.failed_step,
                "error": decided.error,
                "actor": actor,
                "reason": reason,
                "operator": actor is not None or cause == "cancel",
            }
            conn.execute(RECORD_CAUSE, params, prepare=True)
            conn.execute(LOG_BEGIN, params, prepare=True)
        if refused is not None:
            return refused
        finished = not decided.todo and self.finish_compensation(saga_id)
        return Begun(decided.todo, S.COMPENSATING, finished)

    def fail_step(
        self,
        saga_id: str,
        step: str,
        attempt: int,
        error: str,
        *,
        applied: bool = False,
        result: Any = None,
        forward: bool = False,
        task_id: str | None = None,
    ) -> bool:
        params = {
            "sid": saga_id,
            "step": step,
            "attempt": attempt,
            "error": error,
            "applied": applied,
            "result": Jsonb(result),
            "forward": forward,
            "message": forward_failure(saga_id, step, error),
            "now": self.clock(),
            "worker": self.worker,
            "task_id": task_id,
        }
        with self._raw() as conn:
            row = conn.execute(FAIL, params, prepare=True).fetchone()
        assert row is not None
        if row[0] != 1:
            return False
        if row[2] == S.COMPENSATING:  # a late sibling: the saga may be settled now
            self.finish_compensation(saga_id)
        return True

    # -- reading --------------------------------------------------------------------------------

    def get(self, saga_id: str) -> SagaRecord | None:
        """One round trip (two pipelined reads; each sees a committed state)."""
        params = {"sid": saga_id}
        with self._raw() as conn, conn.pipeline():
            head = conn.execute(GET_SAGA, params, prepare=True)
            steps = conn.execute(GET_STEPS, params, prepare=True)
        found = head.fetchone()
        if found is None:
            return None
        return saga_record(
            _mapped(head.description, found),
            [_mapped(steps.description, r) for r in steps.fetchall()],
        )


class _ClaimRow(NamedTuple):
    """A row of CLAIM (pg_statements), column for column."""

    attempts: int
    resumed: bool
    input: Any
    headers: Any
    name: str | None
    status: str | None
    result: Any
    data: Any


class _UndoRow(NamedTuple):
    """A row of CLAIM_UNDO, column for column."""

    attempts: int
    undo_result: Any
    input: Any
    headers: Any
    name: str | None
    status: str | None
    result: Any
    data: Any


def _give_back(pooled: PoolProxiedConnection, raw: psycopg.Connection[Any]) -> None:
    """Back to the pool, unless a transaction is still open on it (then it is closed)."""
    if raw.info.transaction_status == psycopg.pq.TransactionStatus.IDLE:
        pooled.close()
    else:
        pooled.invalidate()


def _row(description: Any, values: Sequence[Any]) -> Any:
    """A result row with attribute access (what run_claim reads)."""
    return SimpleNamespace(**{c.name: v for c, v in zip(description, values, strict=True)})


def _mapped(description: Any, values: Sequence[Any]) -> Any:
    """A row as saga_record reads it: attributes plus `_mapping`."""
    row = _row(description, values)
    row._mapping = vars(row).copy()
    return row
