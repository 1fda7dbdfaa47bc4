"""The compensation half of SagaStore: from the first failure to COMPENSATED or FAILED."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from sqlalchemy import (
    Connection,
    exists,
    func,
    select,
    update,
)

from sagaq.status import SagaStatus, StepStatus
from sagaq.store import statements as sql
from sagaq.store.base import ACTIVE, LOST_STEP_ERROR, StoreBase, _step_key
from sagaq.store.records import (
    Claim,
    StepClaim,
    run_claim,
)
from sagaq.store.schema import saga, saga_step


class CompensationTransitions(StoreBase):
    """From COMPENSATING to COMPENSATED (or FAILED): every move one conditional UPDATE."""

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
            return run_claim(rows, deps, row.compensation_attempts, row.result)

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
