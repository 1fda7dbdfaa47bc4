"""PostgreSQL's fast path: the statements every saga runs (start, claim, completion) are one
statement each - the history row and the saga's finish ride in the same statement as
data-modifying CTEs - sent as prepared statements on psycopg connections in autocommit, without
SQLAlchemy's per-call machinery. Claims are not durable writes (synchronous_commit off): a claim
lost in a database crash only means the redelivered task claims again, and a later durable
commit (the completion) flushes the WAL that holds it anyway.

Every condition here is the same as in the portable path (store.py), which SQLite runs and the
deterministic simulation checks; tests/integration/test_store.py runs both."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from functools import cached_property
from types import SimpleNamespace
from typing import Any

import psycopg
from psycopg.types.json import Jsonb
from sqlalchemy import Connection, Engine, event, func, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from sagaq.errors import StoreUnavailableError
from sagaq.status import (
    SAGA_ACTIVE,
    STEP_BLOCKS_COMPENSATED,
    STEP_DONE,
    SagaStatus,
    StepStatus,
    saga_move,
)
from sagaq.store.base import task_of
from sagaq.store.compensation import Begun, decide_compensation
from sagaq.store.connect import first_line, make_engine
from sagaq.store.notify import CHANNEL, FinishListener
from sagaq.store.records import SagaRecord, StepClaim, run_claim, saga_record
from sagaq.store.store import SagaStore, forward_failure

S, T = SagaStatus, StepStatus


def _in(values: Any) -> str:
    return "(" + ", ".join(f"'{v}'" for v in sorted(values)) + ")"


ACTIVE, DONE = _in(SAGA_ACTIVE), _in(STEP_DONE)

CREATE = f"""
WITH created AS (
    INSERT INTO saga (id, name, status, input, idempotency_key, deadline_at, headers, parent_id,
                      parent_step, steps_left, created_at, updated_at)
    VALUES (%(sid)s, %(name)s, '{S.RUNNING}', %(input)s, %(key)s, %(deadline)s, %(headers)s,
            %(parent)s, %(parent_step)s, cardinality(%(steps)s::text[]), %(now)s, %(now)s)
    ON CONFLICT (name, idempotency_key) DO NOTHING
    RETURNING id
), steps AS (
    INSERT INTO saga_step (saga_id, name, position, status, attempts, compensation_attempts,
                           applied, undoable)
    SELECT c.id, s.name, s.position - 1, '{T.PENDING}', 0, 0, false,
           s.name = ANY(%(undoable)s::text[])
    FROM created c, unnest(%(steps)s::text[]) WITH ORDINALITY AS s(name, position)
), logged AS (
    INSERT INTO saga_event (saga_id, at, kind, status)
    SELECT id, %(now)s, 'saga', '{S.RUNNING}' FROM created
)
SELECT id FROM created
"""

CLAIM = f"""
WITH old AS (
    SELECT status = '{T.RUNNING}' AND resume_token = %(token)s AS resumed
    FROM saga_step WHERE saga_id = %(sid)s AND name = %(step)s
    FOR UPDATE
), claimed AS (
    UPDATE saga_step SET
        status = '{T.RUNNING}',
        attempts = attempts + CASE WHEN (SELECT resumed FROM old) THEN 0 ELSE 1 END,
        task_id = %(task_id)s,
        resume_token = NULL,
        heartbeat_at = %(now)s,
        started_at = COALESCE(started_at, %(now)s)
    WHERE saga_id = %(sid)s AND name = %(step)s
      AND (status = '{T.PENDING}'
           OR (status = '{T.RUNNING}'
               AND (heartbeat_at <= %(expired)s OR resume_token = %(token)s)))
      AND EXISTS (SELECT 1 FROM saga WHERE id = %(sid)s AND status IN {ACTIVE}
                  AND (%(past_pivot)s OR deadline_at IS NULL OR deadline_at > %(now)s))
      AND NOT EXISTS (SELECT 1 FROM saga_step d
                      WHERE d.saga_id = %(sid)s AND d.name = ANY(%(deps)s::text[])
                        AND d.status NOT IN {DONE})
    RETURNING attempts
), logged AS (
    INSERT INTO saga_event (saga_id, at, kind, step, status, attempt, worker, task_id)
    SELECT %(sid)s, %(now)s, 'step', %(step)s, '{T.RUNNING}', attempts, %(worker)s, %(task_id)s
    FROM claimed WHERE NOT (SELECT resumed FROM old)
)
SELECT c.attempts, (SELECT resumed FROM old) AS resumed, s.input, s.headers,
       st.name, st.status, st.result, st.data
FROM claimed c
JOIN saga s ON s.id = %(sid)s
LEFT JOIN saga_step st ON st.saga_id = s.id AND st.name = ANY(%(wanted)s::text[])
ORDER BY st.position
"""

COMPLETE = f"""
WITH done AS (
    UPDATE saga_step SET status = %(status)s, result = %(result)s, data = %(data)s,
                         finished_at = %(now)s
    WHERE saga_id = %(sid)s AND name = %(step)s AND status = '{T.RUNNING}'
      AND attempts = %(attempt)s
    RETURNING saga_id
), logged AS (
    INSERT INTO saga_event (saga_id, at, kind, step, status, attempt, duration_ms, worker,
                            task_id)
    SELECT saga_id, %(now)s, 'step', %(step)s, %(status)s, %(attempt)s, %(duration)s,
           %(worker)s, %(task_id)s
    FROM done
), counted AS (
    UPDATE saga SET
        steps_left = steps_left - 1,
        status = CASE WHEN steps_left = 1 AND status IN {ACTIVE}
                      THEN '{S.COMPLETED}' ELSE status END,
        finished_at = CASE WHEN steps_left = 1 AND status IN {ACTIVE}
                           THEN %(now)s ELSE finished_at END,
        updated_at = CASE WHEN steps_left = 1 AND status IN {ACTIVE}
                          THEN %(now)s ELSE updated_at END
    WHERE id = %(sid)s AND EXISTS (SELECT 1 FROM done)
    RETURNING status, steps_left, created_at
), finished AS (
    INSERT INTO saga_event (saga_id, at, kind, status, duration_ms)
    SELECT %(sid)s, %(now)s, 'saga', '{S.COMPLETED}',
           round(((%(now)s - created_at) * 1000)::numeric, 3)
    FROM counted WHERE steps_left = 0 AND status = '{S.COMPLETED}'
)
SELECT (SELECT count(*) FROM done),
       (SELECT count(pg_notify('{CHANNEL}', %(sid)s)) FROM counted
        WHERE steps_left = 0 AND status = '{S.COMPLETED}')
"""


_UNSETTLED = f"""(d.status IN {_in(STEP_BLOCKS_COMPENSATED)}
          OR (d.undoable AND (d.status = '{T.COMPLETED}'
                              OR (d.status = '{T.FAILED}' AND d.applied))))"""

# Sent after LOCK in the same transaction (pipelined: one round trip), so that its snapshot
# sees whatever the previous holder of the saga's lock committed.
LOCK = "SELECT status FROM saga WHERE id = %(sid)s FOR UPDATE"

CLAIM_UNDO = f"""
WITH claimed AS (
    UPDATE saga_step SET
        status = '{T.COMPENSATING}',
        compensation_attempts = compensation_attempts + 1,
        compensation_started_at = COALESCE(compensation_started_at, %(now)s),
        heartbeat_at = %(now)s, task_id = %(task_id)s, resume_token = NULL
    WHERE saga_id = %(sid)s AND name = %(step)s AND undoable
      AND (status = '{T.COMPLETED}' OR (status = '{T.FAILED}' AND applied)
           OR (status = '{T.COMPENSATING}'
               AND (heartbeat_at <= %(expired)s OR resume_token = %(token)s)))
      AND EXISTS (SELECT 1 FROM saga WHERE id = %(sid)s AND status = '{S.COMPENSATING}')
      AND NOT EXISTS (SELECT 1 FROM saga_step d
                      WHERE d.saga_id = %(sid)s AND d.name = ANY(%(dependents)s::text[])
                        AND {_UNSETTLED})
    RETURNING compensation_attempts, result
), logged AS (
    INSERT INTO saga_event (saga_id, at, kind, step, status, attempt, worker, task_id)
    SELECT %(sid)s, %(now)s, 'compensation', %(step)s, '{T.COMPENSATING}',
           compensation_attempts, %(worker)s, %(task_id)s
    FROM claimed
)
SELECT c.compensation_attempts AS attempts, c.result AS undo_result, s.input, s.headers,
       st.name, st.status, st.result, st.data
FROM claimed c
JOIN saga s ON s.id = %(sid)s
LEFT JOIN saga_step st ON st.saga_id = s.id AND st.name = ANY(%(wanted)s::text[])
ORDER BY st.position
"""

COMPLETE_UNDO = f"""
WITH done AS (
    UPDATE saga_step SET status = '{T.COMPENSATED}', compensated_at = %(now)s
    WHERE saga_id = %(sid)s AND name = %(step)s AND status = '{T.COMPENSATING}'
      AND compensation_attempts = %(attempt)s
    RETURNING saga_id
), logged AS (
    INSERT INTO saga_event (saga_id, at, kind, step, status, attempt, duration_ms, worker)
    SELECT saga_id, %(now)s, 'compensation', %(step)s, '{T.COMPENSATED}', %(attempt)s,
           %(duration)s, %(worker)s
    FROM done
), finished AS (
    UPDATE saga SET status = '{S.COMPENSATED}', updated_at = %(now)s, finished_at = %(now)s
    WHERE id = %(sid)s AND status = '{S.COMPENSATING}' AND EXISTS (SELECT 1 FROM done)
      AND NOT EXISTS (SELECT 1 FROM saga_step d
                      WHERE d.saga_id = %(sid)s AND d.name <> %(step)s AND {_UNSETTLED})
    RETURNING created_at
), logged_finish AS (
    INSERT INTO saga_event (saga_id, at, kind, status, duration_ms)
    SELECT %(sid)s, %(now)s, 'saga', '{S.COMPENSATED}',
           round(((%(now)s - created_at) * 1000)::numeric, 3)
    FROM finished
)
SELECT (SELECT count(*) FROM done),
       (SELECT count(pg_notify('{CHANNEL}', %(sid)s)) FROM finished)
"""


# begin_compensation: the same transaction as the portable one (compensation.py).
BEGIN_UNDO = f"""
UPDATE saga SET status = '{S.COMPENSATING}', cause = %(cause)s, updated_at = %(now)s,
                finished_at = NULL
WHERE id = %(sid)s AND status = ANY(%(allowed)s::text[])
  AND NOT EXISTS (SELECT 1 FROM saga_step
                  WHERE saga_id = %(sid)s AND name = %(pivot)s
                    AND status IN ('{T.RUNNING}', '{T.COMPLETED}'))
RETURNING id
"""
SAGA_STATUS = "SELECT status FROM saga WHERE id = %(sid)s"
SKIP_PENDING = f"""
UPDATE saga_step SET status = '{T.SKIPPED}' WHERE saga_id = %(sid)s AND status = '{T.PENDING}'
"""
STEP_ROWS = """
SELECT name, status, error, undoable, applied FROM saga_step WHERE saga_id = %(sid)s
ORDER BY finished_at NULLS FIRST, position
"""
RECORD_CAUSE = """
UPDATE saga SET failed_step = %(failed_step)s, error = %(error)s WHERE id = %(sid)s
"""
LOG_BEGIN = f"""
INSERT INTO saga_event (saga_id, at, kind, status, actor, reason, error)
SELECT %(sid)s, %(now)s, 'operator', 'CANCEL', %(actor)s, %(reason)s, NULL WHERE %(operator)s
UNION ALL
SELECT %(sid)s, %(now)s, 'saga', '{S.COMPENSATING}', NULL, %(cause)s, %(error)s
"""


FAIL = f"""
WITH done AS (
    UPDATE saga_step SET status = '{T.FAILED}', error = %(error)s, applied = %(applied)s,
                         result = %(result)s, finished_at = %(now)s
    WHERE saga_id = %(sid)s AND name = %(step)s AND status = '{T.RUNNING}'
      AND attempts = %(attempt)s
    RETURNING saga_id
), logged AS (
    INSERT INTO saga_event (saga_id, at, kind, step, status, attempt, error, worker, task_id)
    SELECT saga_id, %(now)s, 'step', %(step)s, '{T.FAILED}', %(attempt)s, %(error)s,
           %(worker)s, %(task_id)s
    FROM done
), gave_up AS (
    UPDATE saga SET status = '{S.FAILED}', failed_step = %(step)s, error = %(message)s,
                    updated_at = %(now)s, finished_at = %(now)s
    WHERE %(forward)s AND id = %(sid)s AND status IN {ACTIVE} AND EXISTS (SELECT 1 FROM done)
    RETURNING id
), logged_saga AS (
    INSERT INTO saga_event (saga_id, at, kind, status, error)
    SELECT id, %(now)s, 'saga', '{S.FAILED}', %(message)s FROM gave_up
)
SELECT (SELECT count(*) FROM done),
       (SELECT count(pg_notify('{CHANNEL}', %(sid)s)) FROM gave_up),
       (SELECT status FROM saga WHERE id = %(sid)s)
"""
GET_SAGA = "SELECT * FROM saga WHERE id = %(sid)s"
GET_STEPS = "SELECT * FROM saga_step WHERE saga_id = %(sid)s ORDER BY position"


class PostgresStore(SagaStore):
    """SagaStore on PostgreSQL (`SagaStore(url)` picks it for a postgresql:// URL)."""

    _fast: Engine | None = None
    _async: Engine | None = None

    def _pools(self) -> tuple[Engine, Engine]:
        """Autocommit pools: one for durable single statements, one for claims that need not
        be durable (synchronous_commit off)."""
        if self._fast is None or self._async is None:
            self.engine  # creates the tables on first use  # noqa: B018
            fast = make_engine(self.url, autocommit=True)
            lazy = make_engine(self.url, autocommit=True)

            @event.listens_for(lazy, "connect")
            def _no_flush(dbapi_conn: Any, record: Any) -> None:
                dbapi_conn.execute("SET synchronous_commit = off")

            self._fast, self._async = fast, lazy
        return self._fast, self._async

    @cached_property
    def _listener(self) -> FinishListener:
        url = make_url(self.url).set(drivername="postgresql")
        return FinishListener(url.render_as_string(hide_password=False))

    @contextmanager
    def finish_signal(self, saga_id: str) -> Iterator[threading.Event | None]:
        with self._listener.signal(saga_id) as event:
            yield event

    def _finished(self, conn: Connection, saga_id: str) -> None:
        conn.execute(select(func.pg_notify(CHANNEL, saga_id)))

    def dispose(self) -> None:
        for pool in (self._fast, self._async):
            if pool is not None:
                pool.dispose()
        super().dispose()

    @contextmanager
    def _raw(self, durable: bool = True) -> Iterator[psycopg.Connection[Any]]:
        fast, lazy = self._pools()
        try:
            with (fast if durable else lazy).connect() as conn:
                raw = conn.connection.driver_connection
                assert isinstance(raw, psycopg.Connection)
                try:
                    yield raw
                except psycopg.OperationalError:
                    conn.invalidate()
                    raise
        except OperationalError as exc:
            raise self._unavailable(exc) from exc
        except psycopg.OperationalError as exc:
            raise self._unavailable_raw(exc) from exc

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
        with self._raw(durable=False) as conn:
            cur = conn.execute(CLAIM, params, prepare=True)
            rows = [_row(cur.description, r) for r in cur.fetchall()]
        if not rows:
            with self._begin() as c:
                return self._refused_claim(c, saga_id, step, deps, now, lease, past_pivot)
        claim = run_claim(rows, deps, rows[0].attempts)
        return replace(claim, resumed=bool(rows[0].resumed))

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
        round trip; anything else (wait, write-off, nothing to undo) takes the portable path."""
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
        with self._raw() as conn, conn.pipeline(), conn.transaction():
            conn.execute(LOCK, params, prepare=True)
            cur = conn.execute(CLAIM_UNDO, params, prepare=True)
        rows = [_row(cur.description, r) for r in cur.fetchall()]
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
        with self._raw() as conn, conn.pipeline(), conn.transaction():
            conn.execute(LOCK, params, prepare=True)
            cur = conn.execute(COMPLETE_UNDO, params, prepare=True)
        row = cur.fetchone()
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
    ) -> Begun:
        """The portable transaction in three round trips, without SQLAlchemy's machinery."""
        now = self.clock()
        params: dict[str, Any] = {
            "sid": saga_id,
            "cause": cause,
            "now": now,
            "allowed": [str(s) for s in saga_move(allowed, S.COMPENSATING)],
            "pivot": pivot,
        }
        with self._raw() as conn, conn.transaction():
            won = conn.execute(BEGIN_UNDO, params, prepare=True).fetchone()
            if won is None:
                status = conn.execute(SAGA_STATUS, params, prepare=True).fetchone()
                return Begun(None, SagaStatus(status[0]) if status else None)
            with conn.pipeline():
                conn.execute(SKIP_PENDING, params, prepare=True)
                cur = conn.execute(STEP_ROWS, params, prepare=True)
            rows = [_row(cur.description, r) for r in cur.fetchall()]
            decided = decide_compensation(rows, cause, failed_step, reason)
            params |= {
                "failed_step": decided.failed_step,
                "error": decided.error,
                "actor": actor,
                "reason": reason,
                "operator": actor is not None or cause == "cancel",
            }
            with conn.pipeline():
                conn.execute(RECORD_CAUSE, params, prepare=True)
                conn.execute(LOG_BEGIN, params, prepare=True)
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


def _row(description: Any, values: Sequence[Any]) -> Any:
    """A result row with attribute access (what run_claim reads)."""
    return SimpleNamespace(**{c.name: v for c, v in zip(description, values, strict=True)})


def _mapped(description: Any, values: Sequence[Any]) -> Any:
    """A row as saga_record reads it: attributes plus `_mapping`."""
    row = _row(description, values)
    row._mapping = vars(row).copy()
    return row
