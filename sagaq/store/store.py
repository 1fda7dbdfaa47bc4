"""SagaStore: every state transition is one conditional UPDATE, so concurrent and redelivered
tasks cannot corrupt state. The same code serves SQLite and PostgreSQL; `SagaStore(url)` picks."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from sqlalchemy import (
    Connection,
    delete,
    exists,
    insert,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError

from sagaq.status import SagaStatus, StepStatus
from sagaq.store import statements as sql
from sagaq.store.base import ACTIVE, _step_key
from sagaq.store.compensation import CompensationTransitions
from sagaq.store.records import (
    Claim,
    SagaRecord,
    StepClaim,
    run_claim,
    saga_record,
)
from sagaq.store.schema import saga, saga_step


class SagaStore(CompensationTransitions):
    """SQL state of sagas and steps: starting, forward steps, resuming, reading. Creates its
    tables on first use. Compensation transitions are in compensation.py."""

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
                return run_claim(rows, deps, rows[0].attempts)
        with self._begin() as conn:
            attempts = conn.execute(sql.CLAIM, params).scalar() if self.is_sqlite else None
            if attempts is None:
                return self._refused_step_claim(conn, saga_id, step, now, outcome_unknown)
            rows = conn.execute(sql.INPUTS, params).all()
            return run_claim(rows, deps, attempts)

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
        return saga_record(head, steps)

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
            return [saga_record(row, []) for row in conn.execute(query)]

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
                records.append(saga_record(head, steps))
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
