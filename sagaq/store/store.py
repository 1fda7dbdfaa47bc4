"""SagaStore: every state transition is one conditional UPDATE, so concurrent and redelivered
tasks cannot corrupt state. The same code serves SQLite and PostgreSQL; `SagaStore(url)` picks."""

from __future__ import annotations

import os
import time
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from enum import Enum
from functools import partial
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
    and_,
    create_engine,
    delete,
    event,
    exists,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.pool import ConnectionPoolEntry

from sagaq.errors import StoreUnavailableError
from sagaq.status import SagaStatus, StepStatus
from sagaq.store import statements as sql
from sagaq.store.schema import metadata, saga, saga_step

# A saga is "active" until compensation starts; PENDING means its canvas may not be published yet.
ACTIVE = sql.ACTIVE
LOST_STEP_ERROR = "the step's task failed without reporting why (worker lost or hard time limit)"


@dataclass(frozen=True)
class StepRecord:
    name: str
    status: StepStatus
    attempts: int
    result: Any
    error: str | None
    started_at: float | None
    finished_at: float | None
    compensation_attempts: int
    compensation_error: str | None
    compensation_started_at: float | None
    compensated_at: float | None


@dataclass(frozen=True)
class SagaRecord:
    id: str
    name: str
    status: SagaStatus
    input: dict[str, Any]
    idempotency_key: str | None
    failed_step: str | None
    error: str | None
    created_at: float
    updated_at: float
    finished_at: float | None
    deadline_at: float | None
    headers: dict[str, str]
    parent_id: str | None
    steps: tuple[StepRecord, ...]

    def step(self, name: str) -> StepRecord:
        return next(s for s in self.steps if s.name == name)


class Claim(Enum):
    RUN = "run"  # go ahead
    DONE = "done"  # already done earlier: do not run again
    WAIT = "wait"  # (compensation) the step is still running: try again shortly
    SKIP = "skip"  # nothing to do (saga moved on, step skipped or never ran)
    HALT = "halt"  # (compensation) the saga FAILED: stop here
    EXPIRED = "expired"  # the saga is past its deadline: compensate instead


@dataclass(frozen=True)
class StepClaim:
    outcome: Claim
    attempts: int = 0
    input: dict[str, Any] | None = None
    results: dict[str, Any] | None = None
    data: dict[str, Any] | None = None
    headers: dict[str, str] | None = None
    result: Any = None  # the step's stored result (DONE, and compensation RUN)
    started_at: float | None = None


class SagaStore:
    """SQL state of sagas and steps. Creates its tables on first use."""

    def __init__(self, url: str, *, create_tables: bool = True) -> None:
        self.url = url
        self.engine = _make_engine(url)
        # Celery's prefork pool forks after this process used the pool: a child must open its
        # own connections, or siblings share one socket and read each other's results.
        os.register_at_fork(after_in_child=partial(_forget_connections, weakref.ref(self.engine)))
        self.is_sqlite = self.engine.dialect.name == "sqlite"
        self._autocommit = self.engine.execution_options(isolation_level="AUTOCOMMIT")
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
        self.engine.dispose()

    @contextmanager
    def _begin(self) -> Iterator[Connection]:
        try:
            with self.engine.begin() as conn:
                yield conn
        except OperationalError as exc:
            raise StoreUnavailableError(
                f"saga store {self.safe_url} is unavailable: {_first_line(exc.orig or exc)}"
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
                f"saga store {self.safe_url} is unavailable: {_first_line(exc.orig or exc)}"
            ) from exc

    # -- starting -------------------------------------------------------------------------

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
    ) -> tuple[str, bool]:
        """Insert the saga and its PENDING steps in one transaction.
        Returns (id, created); a known idempotency key returns the existing saga's id."""
        if idempotency_key is not None and (found := self._find_by_key(name, idempotency_key)):
            return found, False
        now = time.time()
        try:
            with self._begin() as conn:
                conn.execute(
                    insert(saga).values(
                        id=saga_id,
                        name=name,
                        status=SagaStatus.PENDING,
                        input=input,
                        idempotency_key=idempotency_key,
                        deadline_at=deadline_at,
                        headers=headers,
                        parent_id=parent_id,
                        created_at=now,
                        updated_at=now,
                    )
                )
                conn.execute(
                    insert(saga_step),
                    [
                        {
                            "saga_id": saga_id,
                            "name": step,
                            "position": i,
                            "status": StepStatus.PENDING,
                            "attempts": 0,
                            "compensation_attempts": 0,
                        }
                        for i, step in enumerate(steps)
                    ],
                )
        except IntegrityError:
            # Another start with the same key won the race.
            if idempotency_key is not None and (found := self._find_by_key(name, idempotency_key)):
                return found, False
            raise
        return saga_id, True

    def _find_by_key(self, name: str, key: str) -> str | None:
        with self._begin() as conn:
            found: str | None = conn.execute(
                select(saga.c.id).where(saga.c.name == name, saga.c.idempotency_key == key)
            ).scalar()
        return found

    def mark_published(self, saga_id: str) -> None:
        self._set_saga_status(saga_id, SagaStatus.RUNNING, (SagaStatus.PENDING,))

    def delete_saga(self, saga_id: str) -> None:
        """Remove a saga whose canvas could not be published (nothing of it ran)."""
        with self._begin() as conn:
            conn.execute(delete(saga_step).where(saga_step.c.saga_id == saga_id))
            conn.execute(delete(saga).where(saga.c.id == saga_id))

    # -- forward steps --------------------------------------------------------------------

    def claim_step(
        self,
        saga_id: str,
        step: str,
        deps: Sequence[str],
        ancestors: Sequence[str] = (),
        *,
        outcome_unknown: bool = True,
    ) -> StepClaim:
        """PENDING->RUNNING (or RUNNING->RUNNING on redelivery), attempts+1, while the saga is
        active. Returns what the step runs with: the saga input and headers, the results of
        its dependencies, and the data its ancestors wrote."""
        now = time.time()
        params = {"sid": saga_id, "step": step, "now": now, "wanted": list({*deps, *ancestors})}
        if not self.is_sqlite:
            with self._single_statement() as conn:
                rows = conn.execute(sql.CLAIM_WITH_INPUTS, params).all()
            if rows:
                return _run_claim(rows, deps, rows[0].attempts)
        with self._begin() as conn:
            attempts = conn.execute(sql.CLAIM, params).scalar() if self.is_sqlite else None
            if attempts is None:
                return self._refused_step_claim(conn, saga_id, step, now, outcome_unknown)
            rows = conn.execute(sql.INPUTS, params).all()
            return _run_claim(rows, deps, attempts)

    def _refused_step_claim(
        self, conn: Connection, saga_id: str, step: str, now: float, outcome_unknown: bool
    ) -> StepClaim:
        row = conn.execute(
            select(
                saga_step.c.status,
                saga_step.c.result,
                saga.c.status.label("saga_status"),
                saga.c.deadline_at,
            )
            .join(saga, saga.c.id == saga_step.c.saga_id)
            .where(_step_key(saga_id, step))
        ).first()
        if row is None:
            return StepClaim(Claim.SKIP)
        if row.status == StepStatus.COMPLETED:
            return StepClaim(Claim.DONE, result=row.result)
        if row.saga_status in ACTIVE and row.deadline_at is not None and row.deadline_at <= now:
            return StepClaim(Claim.EXPIRED)
        if row.status == StepStatus.RUNNING:
            # A retry or redelivery arriving after compensation began: this attempt will not
            # run, so the step is over (see abandon_step).
            self._abandon(conn, saga_id, step, outcome_unknown, now)
        return StepClaim(Claim.SKIP)

    def abandon_step(self, saga_id: str, step: str, *, outcome_unknown: bool) -> None:
        """Give up on a RUNNING step the saga no longer waits for."""
        with self._begin() as conn:
            self._abandon(conn, saga_id, step, outcome_unknown, time.time())

    def _abandon(
        self, conn: Connection, saga_id: str, step: str, outcome_unknown: bool, now: float
    ) -> None:
        """A step whose last attempt failed cleanly is FAILED. One whose attempt died midway
        (worker lost) may have had its effect: it is recorded COMPLETED with no result, so it is
        compensated like the others (compensations must tolerate an effect that never
        happened). Should the attempt still finish after all, it finds the row taken."""
        if outcome_unknown:
            values = {
                "status": StepStatus.COMPLETED,
                "error": "outcome unknown (its worker was lost): compensated in case it applied",
            }
        else:
            values = {
                "status": StepStatus.FAILED,
                "error": "not retried: the saga stopped while this step was between attempts",
            }
        conn.execute(
            update(saga_step)
            .where(_step_key(saga_id, step), saga_step.c.status == StepStatus.RUNNING)
            .values(finished_at=now, **values)
        )

    def complete_step(
        self,
        saga_id: str,
        step: str,
        result: Any,
        data: dict[str, Any] | None = None,
        *,
        finish: bool = False,
        status: StepStatus = StepStatus.COMPLETED,
    ) -> tuple[bool, bool]:
        """RUNNING->COMPLETED (or SKIPPED). With `finish` (the saga's last step) the saga is
        marked COMPLETED in the same transaction. Returns (step done, saga done); the step is
        not done when its row was no longer RUNNING (the saga gave up on it)."""
        params = {
            "sid": saga_id,
            "step": step,
            "now": time.time(),
            "new_status": status,
            "new_result": result,
            "new_data": data,
        }
        if not self.is_sqlite:
            query = sql.COMPLETE_AND_FINISH if finish else sql.COMPLETE_ONLY
            with self._single_statement() as conn:
                step_count, saga_count = conn.execute(query, params).one()
            return step_count == 1, saga_count == 1
        with self._begin() as conn:
            if conn.execute(sql.COMPLETE, params).rowcount != 1:
                return False, False
            return True, finish and conn.execute(sql.FINISH, params).rowcount == 1

    def fail_step(self, saga_id: str, step: str, error: str) -> bool:
        return self._update_step(
            saga_id,
            step,
            (StepStatus.RUNNING,),
            status=StepStatus.FAILED,
            error=error,
            finished_at=time.time(),
        )

    def finish_saga(self, saga_id: str) -> bool:
        """Active->COMPLETED, only when every step is COMPLETED or SKIPPED."""
        with self._begin() as conn:
            return self._finish_saga(conn, saga_id, time.time())

    def _finish_saga(self, conn: Connection, saga_id: str, now: float) -> bool:
        unfinished = exists().where(
            saga_step.c.saga_id == saga_id,
            saga_step.c.status.not_in((StepStatus.COMPLETED, StepStatus.SKIPPED)),
        )
        done = conn.execute(
            update(saga)
            .where(saga.c.id == saga_id, saga.c.status.in_(ACTIVE), ~unfinished)
            .values(status=SagaStatus.COMPLETED, updated_at=now, finished_at=now)
        )
        return done.rowcount == 1

    # -- compensation ---------------------------------------------------------------------

    def begin_compensation(
        self,
        saga_id: str,
        *,
        failed_step: str | None = None,
        reason: str | None = None,
        stop_running: bool = False,
        allowed: Sequence[SagaStatus] = ACTIVE,
    ) -> dict[str, StepStatus] | None:
        """Active->COMPENSATING in one conditional UPDATE: only the first caller gets the plan
        (the steps COMPLETED or still RUNNING); later callers get None. Steps that never
        started become SKIPPED in the same transaction, so none of them can start any more.

        `reason` (cancel, deadline) becomes the saga's error; otherwise the failed step's error
        does. With `stop_running`, running steps are written off as FAILED so compensation does
        not wait for them; one that completes anyway undoes itself."""
        now = time.time()
        with self._begin() as conn:
            won = conn.execute(
                update(saga)
                .where(saga.c.id == saga_id, saga.c.status.in_(allowed))
                .values(status=SagaStatus.COMPENSATING, updated_at=now, finished_at=None)
            )
            if won.rowcount != 1:
                return None
            steps = saga_step.c.saga_id == saga_id
            conn.execute(
                update(saga_step)
                .where(steps, saga_step.c.status == StepStatus.PENDING)
                .values(status=StepStatus.SKIPPED)
            )
            if failed_step is not None:
                # The task failed without our wrapper recording why (worker lost, time limit).
                conn.execute(
                    update(saga_step)
                    .where(
                        _step_key(saga_id, failed_step), saga_step.c.status == StepStatus.RUNNING
                    )
                    .values(status=StepStatus.FAILED, error=LOST_STEP_ERROR, finished_at=now)
                )
            if stop_running:
                conn.execute(
                    update(saga_step)
                    .where(steps, saga_step.c.status == StepStatus.RUNNING)
                    .values(
                        status=StepStatus.FAILED,
                        finished_at=now,
                        error="stopped: a parallel step failed (fail-fast)",
                    )
                )
            rows = conn.execute(
                select(saga_step.c.name, saga_step.c.status, saga_step.c.error)
                .where(steps)
                .order_by(saga_step.c.position)
            ).all()
            failed = [r for r in rows if r.status == StepStatus.FAILED]
            # Prefer the step whose errback this is; a chord may also call its body's errbacks.
            culprit = next((r for r in failed if r.name == failed_step), None)
            culprit = culprit or (failed[0] if failed and reason is None else None)
            conn.execute(
                update(saga)
                .where(saga.c.id == saga_id)
                .values(
                    failed_step=culprit.name if culprit else None,
                    error=reason or (culprit.error if culprit else None),
                )
            )
        return {
            r.name: StepStatus(r.status)
            for r in rows
            if r.status in (StepStatus.COMPLETED, StepStatus.RUNNING)
        }

    def fail_forward(self, saga_id: str, step: str, error: str) -> bool:
        """A step after the pivot failed for good: the saga is FAILED, nothing is undone."""
        now = time.time()
        with self._begin() as conn:
            done = conn.execute(
                update(saga)
                .where(saga.c.id == saga_id, saga.c.status.in_(ACTIVE))
                .values(
                    status=SagaStatus.FAILED,
                    failed_step=step,
                    error=f"step {step!r} failed after the pivot step, so the saga cannot be "
                    f"compensated; fix the cause and run `sagaq retry {saga_id}`: {error}",
                    updated_at=now,
                    finished_at=now,
                )
            )
        return done.rowcount == 1

    def resume_compensation(self, saga_id: str) -> list[str] | None:
        """FAILED (a compensation gave up) -> COMPENSATING again, its retry budget renewed.
        Returns the steps still to undo, or None if the saga is not in that state."""
        return self._resume(
            saga_id,
            SagaStatus.COMPENSATING,
            {StepStatus.COMPENSATION_FAILED: StepStatus.COMPENSATING},
            require=StepStatus.COMPENSATION_FAILED,
            remaining=(StepStatus.COMPLETED, StepStatus.COMPENSATING, StepStatus.RUNNING),
            reset={"compensation_attempts": 0, "compensation_error": None},
        )

    def resume_forward(self, saga_id: str) -> list[str] | None:
        """FAILED after the pivot -> RUNNING again; failed and skipped steps back to PENDING.
        Returns the steps still to run, or None if the saga is not in that state."""
        return self._resume(
            saga_id,
            SagaStatus.RUNNING,
            {StepStatus.FAILED: StepStatus.PENDING, StepStatus.SKIPPED: StepStatus.PENDING},
            require=StepStatus.FAILED,
            remaining=(StepStatus.PENDING, StepStatus.RUNNING),
            reset={"attempts": 0, "error": None},
        )

    def _resume(
        self,
        saga_id: str,
        status: SagaStatus,
        moves: dict[StepStatus, StepStatus],
        *,
        require: StepStatus,
        remaining: Sequence[StepStatus],
        reset: dict[str, Any],
    ) -> list[str] | None:
        now = time.time()
        steps = saga_step.c.saga_id == saga_id
        with self._begin() as conn:
            won = conn.execute(
                update(saga)
                .where(
                    saga.c.id == saga_id,
                    saga.c.status == SagaStatus.FAILED,
                    exists().where(steps, saga_step.c.status == require),
                )
                .values(
                    status=status, error=None, failed_step=None, updated_at=now, finished_at=None
                )
            )
            if won.rowcount != 1:
                return None
            for old, new in moves.items():
                conn.execute(
                    update(saga_step)
                    .where(steps, saga_step.c.status == old)
                    .values(status=new, **(reset if old == require else {}))
                )
            names = conn.execute(
                select(saga_step.c.name).where(steps, saga_step.c.status.in_(remaining))
            )
            return list(names.scalars())

    def claim_compensation(
        self, saga_id: str, step: str, deps: Sequence[str], ancestors: Sequence[str] = ()
    ) -> StepClaim:
        """COMPLETED->COMPENSATING (or again on retry/redelivery) while the saga is COMPENSATING."""
        now = time.time()
        with self._begin() as conn:
            row = conn.execute(
                update(saga_step)
                .where(
                    _step_key(saga_id, step),
                    saga_step.c.status.in_((StepStatus.COMPLETED, StepStatus.COMPENSATING)),
                    exists().where(saga.c.id == saga_id, saga.c.status == SagaStatus.COMPENSATING),
                )
                .values(
                    status=StepStatus.COMPENSATING,
                    compensation_attempts=saga_step.c.compensation_attempts + 1,
                    compensation_started_at=func.coalesce(saga_step.c.compensation_started_at, now),
                )
                .returning(saga_step.c.compensation_attempts, saga_step.c.result)
            ).first()
            if row is None:
                return self._refused_compensation_claim(conn, saga_id, step)
            # The compensation sees its ancestors' data and what its own step wrote.
            wanted = list({*deps, *ancestors, step})
            rows = conn.execute(sql.INPUTS, {"sid": saga_id, "wanted": wanted}).all()
            return _run_claim(rows, deps, row.compensation_attempts, row.result)

    def _refused_compensation_claim(self, conn: Connection, saga_id: str, step: str) -> StepClaim:
        row = conn.execute(
            select(saga_step.c.status, saga_step.c.started_at, saga.c.status.label("saga_status"))
            .join(saga, saga.c.id == saga_step.c.saga_id)
            .where(_step_key(saga_id, step))
        ).first()
        if row is None:
            return StepClaim(Claim.SKIP)
        if row.saga_status == SagaStatus.FAILED:
            return StepClaim(Claim.HALT)
        if row.status == StepStatus.COMPENSATED:
            return StepClaim(Claim.DONE)
        if row.status == StepStatus.RUNNING:
            return StepClaim(Claim.WAIT, started_at=row.started_at)
        if row.saga_status == SagaStatus.COMPENSATING and row.status in (
            StepStatus.COMPLETED,
            StepStatus.COMPENSATING,
        ):
            # The step finished between our UPDATE and this read (READ COMMITTED): try again.
            return StepClaim(Claim.WAIT, started_at=time.time())
        return StepClaim(Claim.SKIP)

    def complete_compensation(
        self, saga_id: str, step: str, *, finish: bool = False
    ) -> tuple[bool, bool]:
        """COMPENSATING->COMPENSATED; with `finish` (the last compensation) the saga is marked
        COMPENSATED in the same transaction. Returns (step undone, saga done)."""
        now = time.time()
        with self._begin() as conn:
            done = conn.execute(
                update(saga_step)
                .where(_step_key(saga_id, step), saga_step.c.status == StepStatus.COMPENSATING)
                .values(status=StepStatus.COMPENSATED, compensated_at=now)
            )
            if done.rowcount != 1:
                return False, False
            return True, finish and self._finish_compensation(conn, saga_id, now)

    def fail_compensation(self, saga_id: str, step: str, error: str) -> None:
        """The step could not be undone: the saga is FAILED and needs an operator."""
        now = time.time()
        with self._begin() as conn:
            conn.execute(
                update(saga_step)
                .where(_step_key(saga_id, step), saga_step.c.status == StepStatus.COMPENSATING)
                .values(status=StepStatus.COMPENSATION_FAILED, compensation_error=error)
            )
            conn.execute(
                update(saga)
                .where(saga.c.id == saga_id, saga.c.status == SagaStatus.COMPENSATING)
                .values(
                    status=SagaStatus.FAILED,
                    error=f"compensation of step {step!r} failed: {error}",
                    updated_at=now,
                    finished_at=now,
                )
            )

    def compensate_late_step(self, saga_id: str, step: str, result: Any) -> bool:
        """A step finished after the saga wrote it off as FAILED: it undoes itself. False when
        the row is not FAILED (e.g. a duplicate run of a step that did complete)."""
        return self._update_step(
            saga_id,
            step,
            (StepStatus.FAILED,),
            status=StepStatus.COMPENSATING,
            result=result,
            compensation_attempts=1,
            compensation_started_at=time.time(),
        )

    def finish_compensation(self, saga_id: str) -> bool:
        """COMPENSATING->COMPENSATED, unless some compensation is unfinished or failed."""
        with self._begin() as conn:
            return self._finish_compensation(conn, saga_id, time.time())

    def _finish_compensation(self, conn: Connection, saga_id: str, now: float) -> bool:
        unfinished = exists().where(
            saga_step.c.saga_id == saga_id,
            saga_step.c.status.in_(
                (StepStatus.RUNNING, StepStatus.COMPENSATING, StepStatus.COMPENSATION_FAILED)
            ),
        )
        done = conn.execute(
            update(saga)
            .where(saga.c.id == saga_id, saga.c.status == SagaStatus.COMPENSATING, ~unfinished)
            .values(status=SagaStatus.COMPENSATED, updated_at=now, finished_at=now)
        )
        return done.rowcount == 1

    # -- reading --------------------------------------------------------------------------

    def get(self, saga_id: str) -> SagaRecord | None:
        with self._begin() as conn:
            head = conn.execute(select(saga).where(saga.c.id == saga_id)).first()
            if head is None:
                return None
            steps = conn.execute(
                select(saga_step)
                .where(saga_step.c.saga_id == saga_id)
                .order_by(saga_step.c.position)
            ).all()
        return _saga_record(head, steps)

    def list_sagas(
        self,
        *,
        status: SagaStatus | None = None,
        name: str | None = None,
        since: float | None = None,
        limit: int = 50,
    ) -> list[SagaRecord]:
        """Newest first, without step rows (use get() for those)."""
        query = select(saga).order_by(saga.c.created_at.desc()).limit(limit)
        if status is not None:
            query = query.where(saga.c.status == status)
        if name is not None:
            query = query.where(saga.c.name == name)
        if since is not None:
            query = query.where(saga.c.created_at >= since)
        with self._begin() as conn:
            return [_saga_record(row, []) for row in conn.execute(query)]

    def unfinished(self, *, created_before: float, limit: int = 500) -> list[SagaRecord]:
        """Sagas not yet terminal and older than `created_before`, oldest first (for the
        sweeper; the status+created_at index keeps this flat however many sagas finished)."""
        with self._begin() as conn:
            heads = conn.execute(
                select(saga)
                .where(
                    saga.c.status.in_((*ACTIVE, SagaStatus.COMPENSATING)),
                    saga.c.created_at < created_before,
                )
                .order_by(saga.c.created_at)
                .limit(limit)
            ).all()
            records = []
            for head in heads:
                steps = conn.execute(
                    select(saga_step)
                    .where(saga_step.c.saga_id == head.id)
                    .order_by(saga_step.c.position)
                ).all()
                records.append(_saga_record(head, steps))
        return records

    def touch(self, saga_id: str, seen_updated_at: float) -> bool:
        """Claim a saga for a recovery action: only one sweeper wins per observed version."""
        with self._begin() as conn:
            done = conn.execute(
                update(saga)
                .where(saga.c.id == saga_id, saga.c.updated_at == seen_updated_at)
                .values(updated_at=time.time())
            )
        return done.rowcount == 1

    # -- helpers --------------------------------------------------------------------------

    def _set_saga_status(
        self, saga_id: str, status: SagaStatus, allowed: Sequence[SagaStatus]
    ) -> bool:
        with self._begin() as conn:
            done = conn.execute(
                update(saga)
                .where(saga.c.id == saga_id, saga.c.status.in_(allowed))
                .values(status=status, updated_at=time.time())
            )
        return done.rowcount == 1

    def _update_step(
        self, saga_id: str, step: str, allowed: Sequence[StepStatus], **values: Any
    ) -> bool:
        with self._begin() as conn:
            done = conn.execute(
                update(saga_step)
                .where(_step_key(saga_id, step), saga_step.c.status.in_(allowed))
                .values(**values)
            )
        return done.rowcount == 1


def _run_claim(
    rows: Sequence[Any], deps: Sequence[str], attempts: int, result: Any = None
) -> StepClaim:
    results: dict[str, Any] = {}
    data: dict[str, Any] = {}
    for row in rows:
        if row.name is None or row.status == StepStatus.SKIPPED:
            continue
        if row.name in deps:
            results[row.name] = row.result
        data.update(row.data or {})
    return StepClaim(
        Claim.RUN,
        attempts=attempts,
        input=rows[0].input,
        headers=rows[0].headers or {},
        results=results,
        data=data,
        result=result,
    )


def _step_key(saga_id: str, step: str) -> Any:
    return and_(saga_step.c.saga_id == saga_id, saga_step.c.name == step)


def _saga_record(head: Any, steps: Sequence[Any]) -> SagaRecord:
    return SagaRecord(
        id=head.id,
        name=head.name,
        status=SagaStatus(head.status),
        input=head.input,
        idempotency_key=head.idempotency_key,
        failed_step=head.failed_step,
        error=head.error,
        created_at=head.created_at,
        updated_at=head.updated_at,
        finished_at=head.finished_at,
        deadline_at=head.deadline_at,
        headers=head.headers or {},
        parent_id=head.parent_id,
        steps=tuple(
            StepRecord(
                name=s.name,
                status=StepStatus(s.status),
                attempts=s.attempts,
                result=s.result,
                error=s.error,
                started_at=s.started_at,
                finished_at=s.finished_at,
                compensation_attempts=s.compensation_attempts,
                compensation_error=s.compensation_error,
                compensation_started_at=s.compensation_started_at,
                compensated_at=s.compensated_at,
            )
            for s in steps
        ),
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def _forget_connections(engine: weakref.ref[Engine]) -> None:
    """In a forked child: drop the parent's pooled connections without closing them."""
    if (alive := engine()) is not None:
        alive.dispose(close=False)


def _make_engine(url: str) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "postgresql":
        if parsed.drivername == "postgresql":
            parsed = parsed.set(drivername="postgresql+psycopg")
        return create_engine(parsed, pool_size=10, max_overflow=20, pool_recycle=1800)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database in (None, "", ":memory:"):
            raise StoreUnavailableError(
                "an in-memory SQLite store is not shared between worker threads; "
                "use a file, e.g. sqlite:///sagaq.db"
            )
        engine = create_engine(parsed, connect_args={"timeout": 30, "check_same_thread": False})
        _serialize_sqlite_writes(engine)
        return engine
    raise StoreUnavailableError(
        f"unsupported store URL {parsed.render_as_string(hide_password=True)!r}: "
        "use sqlite:///file.db or postgresql://..."
    )


def _serialize_sqlite_writes(engine: Engine) -> None:
    """SQLite: WAL, and BEGIN IMMEDIATE so a transaction that reads then writes never fails
    with 'database is locked' on upgrade; writers queue on the busy timeout instead."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, record: ConnectionPoolEntry) -> None:
        dbapi_conn.isolation_level = None  # let us issue BEGIN ourselves
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")
